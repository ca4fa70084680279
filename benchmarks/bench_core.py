"""Core benchmark (issue 2): kNN graph, modularity, and the whole per-layer step, side by side.

Compares, on the same data in one run:
  * ``dg.knn_edges`` (matmul backend and 'auto') against ``torch_cluster.knn_graph`` and
    scikit-learn's ``NearestNeighbors(algorithm='brute')``, and against one ``x @ xᵀ`` GEMM (the
    physical bound);
  * ``dg.modularity`` against ``networkx.community.modularity`` on the same graph;
  * the per-layer step (features → snapshot → Q) against a faithful re-implementation of the
    reference pipeline (dense similarity, Python heap per row, networkx) and against the GEMM.

Run:  python benchmarks/bench_core.py            (N ∈ {500, 2000, 5000}, D ∈ {64, 512, 4096})
      python benchmarks/bench_core.py --quick    (a smaller grid)
Writes benchmarks/results/core.json and prints markdown tables with ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import timeit

import dyngraph as dg
from dyngraph import typing as dgt
from dyngraph._io import atomic_write_json
from dyngraph.testing import reference_modularity

RESULTS = Path(__file__).resolve().parent / "results"




def data(n: int, d: int, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=g)
    x = torch.randn(n, d, generator=g) + 0.5 * centres[y]
    return x, y


def bench_knn(n: int, d: int, k: int, max_slow: float) -> dict:
    x, _ = data(n, d)
    xn = torch.nn.functional.normalize(x, dim=1)
    reps = 5 if n * n * d <= 2e9 else 3
    row = {"N": n, "D": d, "k": k}
    row["gemm"] = timeit(lambda: xn @ xn.T, reps)
    row["dg_matmul"] = timeit(lambda: dg.knn_edges(x, k, backend="matmul"), reps)
    dg.knn_edges(x, k, backend="auto")  # the one-off measurement that 'auto' caches
    row["dg_auto"] = timeit(lambda: dg.knn_edges(x, k, backend="auto"), reps)
    if dgt.WITH_TORCH_CLUSTER:
        # torch-cluster's CPU KD-tree rejects cosine: same L2-normalised rows, Euclidean search.
        est = row["dg_matmul"] * 30 * (d / 64)  # measured 14-35x slower at D 64-512
        if est <= max_slow:
            row["torch_cluster"] = timeit(
                lambda: dgt.torch_cluster.knn_graph(xn, k, loop=False), 1, 0)
        else:
            row["torch_cluster"] = None
    return row


def bench_sklearn(row: dict) -> None:
    """scikit-learn runs in a phase of its own: its OpenBLAS threads keep spinning after a call and
    would stall the next torch measurement on a 2-core machine."""
    from sklearn.neighbors import NearestNeighbors
    x, _ = data(row["N"], row["D"])
    xs = x.numpy()

    def sk():
        NearestNeighbors(n_neighbors=row["k"] + 1, algorithm="brute", metric="cosine").fit(xs) \
            .kneighbors(xs)
    row["sklearn_brute"] = timeit(sk, 3 if row["N"] * row["N"] * row["D"] <= 2e9 else 2, 1)


def bench_modularity(n: int, k: int = 3) -> dict:
    import networkx as nx
    x, y = data(n, 64)
    snap = dg.graphs.build_snapshot(x, y, k=k)
    ei, w = snap.edge_index, snap.edge_weight
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_weighted_edges_from((a, b, c) for (a, b), c in zip(ei.t().tolist(), w.tolist()))
    parts = [set((y == c).nonzero().flatten().tolist()) for c in y.unique()]
    t_dg = timeit(lambda: dg.modularity(ei, y, w), 20)
    t_nx = timeit(lambda: nx.community.modularity(g, parts, weight="weight"), 5)
    q_dg = dg.modularity(ei, y, w)
    q_nx = nx.community.modularity(g, parts, weight="weight")
    return {"N": n, "edges": int(ei.shape[1]), "dg": t_dg, "networkx": t_nx,
            "abs_diff": abs(q_dg - q_nx)}


def bench_step(n: int, d: int, k: int = 3, reference: bool = False) -> dict:
    x, y = data(n, d)
    xn = torch.nn.functional.normalize(x, dim=1)

    def step():
        snap = dg.graphs.build_snapshot(x, y, k=k, backend="matmul")
        return dg.modularity(snap.edge_index, y, snap.edge_weight)
    row = {"N": n, "D": d, "gemm": timeit(lambda: xn @ xn.T, 5), "dg_step": timeit(step, 5)}
    row["q"] = step()
    return row


def bench_reference(row: dict, k: int = 3) -> None:
    """The reference pipeline, in a phase after every dyngraph step (its numpy GEMM's BLAS threads
    would otherwise stall the next measurement)."""
    x, y = data(row["N"], row["D"])
    t0 = time.perf_counter()
    q_ref = reference_modularity(x.numpy(), y.numpy(), k)
    row["reference"] = time.perf_counter() - t0
    row["abs_diff_q"] = abs(q_ref - row["q"])


def fmt(t):
    return "—" if t is None else (f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s")


def ratio(a, b):
    return "—" if a is None or b is None else f"{a / b:.2f}×"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--max-slow", type=float, default=120.0,
                   help="skip a peer whose estimated time exceeds this many seconds")
    p.add_argument("--out", default=str(RESULTS / "core.json"))
    args = p.parse_args(argv)
    ns = [500, 2000] if args.quick else [500, 2000, 5000]
    ds = [64, 512] if args.quick else [64, 512, 4096]
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "torch_cluster": dgt.WITH_TORCH_CLUSTER}
    print(f"# dyngraph core benchmark\n\n{env}\n")

    # Phase 1: torch-only timings (dyngraph, GEMM, torch-cluster).
    knn_rows = [bench_knn(n, d, args.k, args.max_slow) for n in ns for d in ds]
    knn_rows.append(bench_knn(ns[-1], 3, args.k, args.max_slow))  # KD-tree territory
    step_rows = [bench_step(n, d) for n in ns for d in ds]
    # Modularity also on larger graphs than the sizes: networkx's cost per edge grows
    # with the graph (dict look-ups fall out of cache), dg's fixed per-call cost stops mattering.
    mod_rows = [bench_modularity(n) for n in ns + ([] if args.quick else [20000, 50000])]
    # Phase 2: peers that use numpy's BLAS.
    for r in knn_rows:
        bench_sklearn(r)
    for r in step_rows:
        bench_reference(r)

    print("## kNN graph (k=%d, cosine)\n" % args.k)
    print("| N | D | GEMM x@xᵀ | dg matmul | dg auto | torch-cluster | sklearn brute | "
          "dg/GEMM | torch-cluster/dg | sklearn/dg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in knn_rows:
        print(f"| {r['N']} | {r['D']} | {fmt(r['gemm'])} | {fmt(r['dg_matmul'])} | "
              f"{fmt(r['dg_auto'])} | {fmt(r.get('torch_cluster'))} | {fmt(r['sklearn_brute'])} | "
              f"{ratio(r['dg_matmul'], r['gemm'])} | "
              f"{ratio(r.get('torch_cluster'), r['dg_matmul'])} | "
              f"{ratio(r['sklearn_brute'], r['dg_matmul'])} |")

    print("\n## modularity on a given kNN graph (k=3)\n")
    print("| N | edges | dg.modularity | networkx | speed-up | |ΔQ| |")
    print("|---|---|---|---|---|---|")
    for r in mod_rows:
        print(f"| {r['N']} | {r['edges']} | {fmt(r['dg'])} | {fmt(r['networkx'])} | "
              f"{r['networkx'] / r['dg']:.0f}× | {r['abs_diff']:.1e} |")

    print("\n## per-layer step: features → snapshot → Q (k=3)\n")
    print("| N | D | GEMM | dg step | reference pipeline | dg/GEMM | reference/dg | |ΔQ| |")
    print("|---|---|---|---|---|---|---|---|")
    for r in step_rows:
        print(f"| {r['N']} | {r['D']} | {fmt(r['gemm'])} | {fmt(r['dg_step'])} | "
              f"{fmt(r['reference'])} | {ratio(r['dg_step'], r['gemm'])} | "
              f"{ratio(r['reference'], r['dg_step'])} | {r['abs_diff_q']:.1e} |")
    atomic_write_json(args.out, {"env": env, "knn": knn_rows, "modularity": mod_rows,
                                 "step": step_rows})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
