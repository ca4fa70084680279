"""Scale benchmark (issue 8): exact kNN graphs at large N and D, side by side with the peers.

Sections, all in one run:
  * ``knn``: ``dg.knn_edges`` (cosine, k=3) against faiss-cpu ``IndexFlatIP`` (exact), pynndescent
    (approximate, with its recall@k) and the GEMM itself (all N² scores in cache-sized tiles, no
    top-k: the physical bound; dg computes each score once, about half of them), over a series of N at fixed D and of D at fixed N (wall time, best of
    round-robin repeats), with wall-time scaling exponents.
  * ``scaling``: exponents of time against N and against D (least-squares slope of log t) from
    single-thread CPU time, which other jobs on a shared machine barely disturb.
  * ``precision``: bf16/fp16 score tiles with exact fp32 re-scoring: how often neighbours change
    against the fp32 search, for several candidate counts, on synthetic and on real features.
  * ``projection``: Johnson–Lindenstrauss projection of a trained CNN's layers on digits: Q per
    layer before and after projection (5 projection seeds), and kNN overlap; plus one very wide
    synthetic layer, where projecting first is much faster.

Run:  python benchmarks/bench_scale.py            (N ≤ 10,000; a few minutes on 2 cores)
      python benchmarks/bench_scale.py --full     (N up to 50,000, D up to 4,096; long)
      python benchmarks/bench_scale.py --quick    (a smoke run)
Writes benchmarks/results/scale.json (atomically, after every row; sections of earlier runs are
kept; ``--resume`` skips rows that are already there) and prints markdown tables with ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import importlib

from _timing import timeit as _timeit

import dyngraph as dg
from dyngraph._io import atomic_write_json

K = importlib.import_module("dyngraph.graphs._knn")
P = importlib.import_module("dyngraph.graphs._projection")
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------- helpers
def timeit(fn, repeats: int = 3, warmup: int = 1) -> float:
    return _timeit(fn, repeats, warmup)


def data(n: int, d: int, classes: int = 10, seed: int = 0) -> torch.Tensor:
    """Gaussian classes (the core benchmark's data), generated in row blocks."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    x = torch.empty(n, d)
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        y = torch.arange(s, e) % classes
        x[s:e] = torch.randn(e - s, d, generator=g) + 0.5 * centres[y]
    return x


def tile_gemm(xn: torch.Tensor) -> None:
    """The full ``x @ xᵀ`` (all N² scores) in the tiles of dg's row × column path, and nothing
    else: the physical bound that issue 8 names. dg's symmetric self-search computes each score
    once, about half of these, so dg/GEMM can fall below 1."""
    n = xn.shape[0]
    cols = K.default_col_chunk_size(n)
    rows = K._even_blocks(n, K.default_chunk_size(n, min(cols, n), K.DEFAULT_TILE_ELEMENTS))
    for c0 in range(0, n, cols):
        kb = xn[c0:c0 + cols]
        for r0 in range(0, n, rows):
            s = xn[r0:r0 + rows] @ kb.T
            del s


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist()))
    return hits / exact.size


def layer_q(x: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Q of one layer's k-NN graph (exact matmul search, reference graph otherwise)."""
    spec = dg.GraphSpec(k=k, backend="matmul")
    profile = dg.depth_profile({"layer": x}, ["modularity"], y=y, graph=spec, progress=False)
    return profile["modularity"].values[0].item()


def slope(xs, ys) -> float:
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0]) if len(xs) >= 2 else float("nan")


def fmt(t):
    if t is None:
        return "—"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}×"


class Store:
    """Results JSON, rewritten atomically after every row; ``resume`` reuses finished rows."""

    def __init__(self, path: Path, resume: bool, env: dict):
        self.path = Path(path)
        self.resume = resume
        self.data = {"env": env}
        if self.path.exists():  # keep the other sections of an earlier run
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                pass
            self.data["env"] = env

    def get(self, section: str, key: dict):
        if not self.resume:
            return None
        for row in self.data.get(section, []):
            if all(row.get(k) == v for k, v in key.items()):
                return row
        return None

    def put(self, section: str, row: dict) -> dict:
        rows = self.data.setdefault(section, [])
        rows[:] = [r for r in rows if not all(r.get(k) == row[k] for k in row.get("_key", []))]
        rows.append(row)
        atomic_write_json(self.path, self.data)
        return row


# ---------------------------------------------------------------------------- kNN vs peers
def bench_knn(n: int, d: int, k: int, reps: int, nnd: bool) -> dict:
    """Times the methods round-robin (GEMM, dg, faiss, GEMM, dg, faiss, ...) after one warm-up
    round, so that a burst of load from other processes hits all of them alike; reports the best
    and the median of the repeats."""
    import faiss
    faiss.omp_set_num_threads(torch.get_num_threads())
    x = data(n, d)
    xn = torch.nn.functional.normalize(x, dim=1)
    xs = x.numpy()
    row = {"N": n, "D": d, "k": k, "reps": reps, "load_avg": round(os.getloadavg()[0], 2),
           "_key": ["N", "D", "k"]}
    out = {}

    def run_dg():
        out["dg"] = dg.knn_edges(x, k, backend="matmul")

    def run_faiss():
        xf = np.ascontiguousarray(xs.copy())
        faiss.normalize_L2(xf)
        index = faiss.IndexFlatIP(d)
        index.add(xf)
        out["faiss"] = index.search(xf, k + 1)[1]

    methods = {"gemm": lambda: tile_gemm(xn), "dg": run_dg, "faiss": run_faiss}
    times = {name: [] for name in methods}
    for rep in range(reps + 1):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            if rep:  # round 0 is the warm-up
                times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        row[name] = min(ts)
        row[name + "_median"] = statistics.median(ts)
    exact = out["dg"][0][0].reshape(n, k).numpy()
    fi = np.stack([r[r != i][:k] for i, r in enumerate(out["faiss"])])  # drop self
    row["faiss_recall"] = recall(fi, exact)
    if nnd:
        import pynndescent
        # numba compiles on first use: a small run of the same width first, not timed
        _ = pynndescent.NNDescent(xs[:500], metric="cosine", random_state=0).neighbor_graph
        t0 = time.perf_counter()
        index = pynndescent.NNDescent(xs, metric="cosine", random_state=0,
                                      n_jobs=torch.get_num_threads())
        graph = index.neighbor_graph[0]
        row["pynndescent"] = time.perf_counter() - t0
        ni = np.stack([r[r != i][:k] for i, r in enumerate(graph)])
        row["pynndescent_recall"] = recall(ni, exact)
    return row


def section_knn(args, store: Store) -> dict:
    k = args.k
    if args.quick:
        ns, d_fixed, ds, n_fixed = [1000, 2000], 128, [32, 128], 2000
    elif args.full:
        ns, d_fixed, ds, n_fixed = [5000, 10000, 20000, 50000], 256, [64, 256, 1024, 4096], 10000
    else:
        ns, d_fixed, ds, n_fixed = [2000, 5000, 10000], 256, [64, 256, 1024], 5000
    if args.nnd:  # numba compiles pynndescent on first use: keep that out of the timings
        import pynndescent
        _ = pynndescent.NNDescent(data(500, 16).numpy(), metric="cosine", random_state=0) \
            .neighbor_graph
    print(f"\n## kNN graph, cosine, k={k}: dg vs faiss IndexFlatIP (exact) vs pynndescent "
          f"(approximate) vs the GEMM\n")
    print("Best of the round-robin repeats (other processes share this machine; `load` is the "
          "1-minute load average when the row started). pynndescent: one run, n_neighbors=30 "
          "(its default), recall@k against the exact graph.\n")
    print("| N | D | GEMM (tiles) | dg.knn_edges | faiss exact | pynndescent | dg/GEMM | "
          "dg/faiss | pynndescent/dg | faiss recall | pynndescent recall | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    section = "knn_quick" if args.quick else "knn_full" if args.full else "knn"
    configs = [(n, d_fixed) for n in ns] + [(n_fixed, d) for d in ds if d != d_fixed]
    rows = []
    for n, d in configs:
        row = store.get(section, {"N": n, "D": d, "k": k})
        if row is None:
            reps = 3 if n * n * d <= 3e10 else 2
            row = store.put(section, bench_knn(n, d, k, reps, args.nnd and n <= args.nnd_max_n))
        rows.append(row)
        nnd_recall = row.get("pynndescent_recall")
        print(f"| {n} | {d} | {fmt(row['gemm'])} | {fmt(row['dg'])} | {fmt(row['faiss'])} | "
              f"{fmt(row.get('pynndescent'))} | {ratio(row['dg'], row['gemm'])} | "
              f"{ratio(row['dg'], row['faiss'])} | {ratio(row.get('pynndescent'), row['dg'])} | "
              f"{row['faiss_recall']:.4f} | "
              f"{'—' if nnd_recall is None else f'{nnd_recall:.4f}'} | {row['load_avg']} |",
              flush=True)
    by_n = [r for r in rows if r["D"] == d_fixed]
    by_d = [r for r in rows if r["N"] == n_fixed]
    exps = {}
    for name in ("dg", "faiss", "gemm"):
        exps[name] = {"N": slope([r["N"] for r in by_n], [r[name] for r in by_n]),
                      "D": slope([r["D"] for r in by_d], [r[name] for r in by_d])}
    print(f"\nScaling exponents (slope of log time): vs N at D={d_fixed}, vs D at N={n_fixed}\n")
    print("| method | time ∝ N^a | time ∝ D^b |")
    print("|---|---|---|")
    for name, e in exps.items():
        print(f"| {name} | {e['N']:.2f} | {e['D']:.2f} |")
    store.data[section + "_exponents"] = exps
    atomic_write_json(store.path, store.data)
    return exps


def section_scaling(args, store: Store) -> None:
    """Scaling exponents from single-thread CPU time (``time.process_time``), which other jobs on
    a shared machine barely disturb, unlike wall time."""
    import faiss
    k = args.k
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    if args.quick:
        ns, ds, d_fixed, n_fixed = [1000, 2000, 4000], [32, 128, 512], 128, 2000
    else:
        ns, ds, d_fixed, n_fixed = [2000, 4000, 8000, 16000], [64, 256, 1024, 4096], 256, 4000
    print(f"\n## Scaling exponents (one thread, CPU time, best of 2 after a warm-up; k={k})\n")
    print("| N | D | GEMM (tiles) | dg.knn_edges | faiss exact | dg/GEMM | dg/faiss | "
          "dg GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for n, d in [(n, d_fixed) for n in ns] + [(n_fixed, d) for d in ds if d != d_fixed]:
        x = data(n, d)
        xn = torch.nn.functional.normalize(x, dim=1)
        xs = x.numpy()

        def run_faiss(xs=xs, d=d):
            xf = xs.copy()
            faiss.normalize_L2(xf)
            index = faiss.IndexFlatIP(d)
            index.add(xf)
            index.search(xf, k + 1)
        methods = {"gemm": lambda xn=xn: tile_gemm(xn),
                   "dg": lambda x=x: dg.knn_edges(x, k, backend="matmul"), "faiss": run_faiss}
        times = {name: [] for name in methods}
        for rep in range(3):
            for name, fn in methods.items():
                t0 = time.process_time()
                fn()
                if rep:
                    times[name].append(time.process_time() - t0)
        row = {"N": n, "D": d, **{name: min(ts) for name, ts in times.items()}}
        rows.append(row)
        print(f"| {n} | {d} | {fmt(row['gemm'])} | {fmt(row['dg'])} | {fmt(row['faiss'])} | "
              f"{ratio(row['dg'], row['gemm'])} | {ratio(row['dg'], row['faiss'])} | "
              f"{2 * n * n * d / row['dg'] / 1e9:.0f} |", flush=True)
    torch.set_num_threads(threads)
    by_n = [r for r in rows if r["D"] == d_fixed]
    by_d = [r for r in rows if r["N"] == n_fixed]
    exps = {name: {"N": slope([r["N"] for r in by_n], [r[name] for r in by_n]),
                   "D": slope([r["D"] for r in by_d], [r[name] for r in by_d])}
            for name in ("dg", "faiss", "gemm")}
    print(f"\nTime ∝ N^a at D={d_fixed} (N={ns[0]}..{ns[-1]}), ∝ D^b at N={n_fixed} "
          f"(D={ds[0]}..{ds[-1]}); an exact search is O(N²·D), so a → 2 and b → 1 once the "
          f"GEMM dominates\n")
    print("| method | a (vs N) | b (vs D) |")
    print("|---|---|---|")
    for name, e in exps.items():
        print(f"| {name} | {e['N']:.2f} | {e['D']:.2f} |")
    store.data["scaling_cpu_time"] = {"rows": rows, "exponents": exps}
    atomic_write_json(store.path, store.data)


# ---------------------------------------------------------------------------- mixed precision
def neighbour_changes(x: torch.Tensor, k: int, precision: str, candidates: int,
                      ref_idx: torch.Tensor) -> dict:
    t0 = time.perf_counter()
    v, idx = dg.graphs.nearest_neighbors(x, k, backend="matmul", precision=precision, candidates=candidates)
    t = time.perf_counter() - t0
    diff_rows = (idx.sort(1).values != ref_idx.sort(1).values).any(1)
    ref_sets = ref_idx.sort(1).values
    lost = 0
    for a, b in zip(idx[diff_rows].tolist(), ref_sets[diff_rows].tolist()):
        lost += len(set(b) - set(a))
    return {"precision": precision, "candidates": candidates, "seconds": t,
            "rows_changed": float(diff_rows.float().mean()),
            "edges_changed": lost / ref_idx.numel(),
            "order_changed": float((idx != ref_idx).any(1).float().mean())}


def trained_cnn(args):
    """A wider DigitsCNN (conv maps of 2048..512 dims) trained on digits; test-split features."""
    torch.manual_seed(0)
    train, test = dg.zoo.example_loaders("digits", seed=0)
    model = dg.zoo.DigitsCNN(channels=(32, 32, 64, 64, 128, 128))
    t0 = time.perf_counter()
    dg.zoo.train_classifier(model, train, epochs=args.epochs, seed=0, progress=False)
    train_s = time.perf_counter() - t0
    acc = dg.zoo.evaluate(model, test)
    feats = dg.extract_features(model, test, progress=False)
    return feats, {"test_acc": acc, "train_seconds": train_s, "epochs": args.epochs,
                   "dims": feats.dims}


def section_precision(args, store: Store, feats) -> None:
    k = args.k
    n = 2000 if args.quick else 5000
    sets = {f"synthetic N={n} D=256": data(n, 256, seed=1)}
    for name in feats.names[:2] + feats.names[-1:]:
        sets[f"digits CNN {name} (D={feats.dims[name]})"] = feats[name]
    print(f"\n## Mixed precision: bf16/fp16 tiles, candidates re-scored in fp32 (k={k})\n")
    print("Share of nodes whose neighbour set differs from the fp32 search, and of kNN edges "
          "lost (CPU here has no bf16/fp16 units, so these tiles are slower than fp32 on it; "
          "on GPU they run on tensor cores).\n")
    print("| features | precision | candidates | nodes changed | edges changed | abs ΔQ | "
          "time | fp32 time |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    y_all = feats.y
    for label, x in sets.items():
        y = (torch.arange(x.shape[0]) % 10) if x.shape[0] != y_all.numel() else y_all
        t0 = time.perf_counter()
        ref_v, ref_i = dg.graphs.nearest_neighbors(x, k, backend="matmul")
        t_ref = time.perf_counter() - t0
        q_ref = layer_q(x, y, k)
        for precision in ("bf16", "fp16"):
            for cand in sorted({k, 2 * k, K.default_candidates(k), 4 * k}):
                r = neighbour_changes(x, k, precision, cand, ref_i)
                # Q with the half-precision graph: patch the search through precision=
                ei, w = dg.knn_edges(x, k, backend="matmul", precision=precision,
                                     candidates=cand)
                ei_s, w_s = dg.graphs.symmetrize(ei, w, x.shape[0])
                r["abs_dq"] = abs(dg.modularity(ei_s, y, w_s) - float(q_ref))
                r.update({"features": label, "fp32_seconds": t_ref})
                rows.append(r)
                print(f"| {label} | {precision} | {cand} | {100 * r['rows_changed']:.3f}% | "
                      f"{100 * r['edges_changed']:.3f}% | {r['abs_dq']:.1e} | "
                      f"{fmt(r['seconds'])} | {fmt(t_ref)} |", flush=True)
    store.data["precision"] = rows
    atomic_write_json(store.path, store.data)


# ---------------------------------------------------------------------------- projection
def section_projection(args, store: Store, feats, model_info) -> None:
    k = args.k
    seeds = range(3 if args.quick else 5)
    dims = [32, 64, 128, 256, 512]
    print(f"\n## Random projection (Gaussian JL) of a trained CNN's layers, digits test split "
          f"(N={feats.n_samples}, k={k})\n")
    print(f"Model: DigitsCNN(32,32,64,64,128,128), {model_info['epochs']} epochs, test accuracy "
          f"{model_info['test_acc']:.4f}. Q: labels as communities; projected Q is mean ± std "
          f"over {len(seeds)} projection seeds; overlap = share of kNN edges kept.\n")
    header = " | ".join(f"m={m}" for m in dims)
    print(f"| layer | D | Q (full D) | {header} |")
    print("|---|---|---|" + "---|" * len(dims))
    rows = []
    for name in feats.names:
        x = feats[name]
        d = x.shape[1]
        q0 = layer_q(x, feats.y, k)
        _, ref_i = dg.graphs.nearest_neighbors(x, k, backend="matmul")
        cells = []
        row = {"layer": name, "D": d, "q_full": q0, "projected": {}}
        for m in dims:
            if m >= d:
                cells.append("—")
                continue
            qs, overlaps = [], []
            for s in seeds:
                z = P.random_projection(x, m, seed=s)
                qs.append(layer_q(z, feats.y, k))
                _, zi = dg.graphs.nearest_neighbors(z, k, backend="matmul")
                overlaps.append(recall(zi.numpy(), ref_i.numpy()))
            qm, qsd = statistics.mean(qs), statistics.stdev(qs) if len(qs) > 1 else 0.0
            row["projected"][m] = {"q_mean": qm, "q_std": qsd, "dq": qm - q0,
                                   "overlap": statistics.mean(overlaps)}
            cells.append(f"{qm:.3f}±{qsd:.3f} (Δ{qm - q0:+.3f}, {statistics.mean(overlaps):.2f})")
        rows.append(row)
        print(f"| {name} | {d} | {q0:.3f} | " + " | ".join(cells) + " |", flush=True)

    # One very wide layer: projecting first (streamed) versus searching the full width.
    n, d, m = (1000, 8192, 256) if args.quick else (4000, 16384, 512)
    x = data(n, d, seed=3)
    y = torch.arange(n) % 10
    t0 = time.perf_counter()
    ref_v, ref_i = dg.graphs.nearest_neighbors(x, k, backend="matmul")
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    z = P.random_projection(x, m, seed=0)
    t_proj = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, zi = dg.graphs.nearest_neighbors(z, k, backend="matmul")
    t_knn = time.perf_counter() - t0
    q_full = layer_q(x, y, k)
    q_proj = layer_q(z, y, k)
    wide = {"N": n, "D": d, "m": m, "knn_full": t_full, "project": t_proj, "knn_projected": t_knn,
            "speedup": t_full / (t_proj + t_knn), "overlap": recall(zi.numpy(), ref_i.numpy()),
            "q_full": float(q_full), "q_projected": float(q_proj)}
    print(f"\nVery wide synthetic layer N={n}, D={d} → m={m}: kNN at full width "
          f"{fmt(t_full)}; projection {fmt(t_proj)} + kNN {fmt(t_knn)} "
          f"= {wide['speedup']:.1f}× faster; kNN overlap {wide['overlap']:.3f}; "
          f"Q {float(q_full):.4f} → {float(q_proj):.4f}")
    store.data["projection"] = {"model": model_info, "layers": rows, "wide": wide}
    atomic_write_json(store.path, store.data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a smoke run")
    size.add_argument("--full", action="store_true", help="N up to 50,000, D up to 4,096")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--sections", default="knn,scaling,precision,projection")
    p.add_argument("--no-nnd", dest="nnd", action="store_false", help="skip pynndescent")
    p.add_argument("--nnd-max-n", type=int, default=50000)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--resume", action="store_true", help="keep finished rows of --out")
    p.add_argument("--out", default=str(RESULTS / "scale.json"))
    args = p.parse_args(argv)
    import faiss
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "faiss": faiss.__version__, "load_avg_start": os.getloadavg()[0]}
    try:
        import pynndescent
        env["pynndescent"] = pynndescent.__version__
    except ImportError:
        args.nnd = False
    print(f"# dyngraph scale benchmark\n\n{env}")
    store = Store(Path(args.out), args.resume, env)
    sections = set(args.sections.split(","))
    if "knn" in sections:
        section_knn(args, store)
    if "scaling" in sections:
        section_scaling(args, store)
    if sections & {"precision", "projection"}:
        feats, info = trained_cnn(args)
        if "precision" in sections:
            section_precision(args, store, feats)
        if "projection" in sections:
            section_projection(args, store, feats, info)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
