"""Memory benchmark (issue 8): peak RSS of the per-layer step stays under a stated bound as N grows.

Each configuration runs in a fresh subprocess that reports its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and its time. Two paths:

* ``memory``: features ``[N, D]`` float32 in memory → ``dg.knn_edges`` (k=3, cosine, tiled) →
  ``dg.graphs.symmetrize`` → ``dg.modularity``. Stated bound::

      peak ≤ base + 2·N·D·4            (the features and their L2-normalised copy)
                  + 3·T·4               (one score tile T = 2**23 scores, and top-k temporaries)
                  + 200·N·k + 256 MiB   (the graph, its symmetrisation, allocator slack)

  where ``base`` is the interpreter with torch and dyngraph imported. No term grows like N².
* ``spill``: the features are streamed to a float16 file (as ``extract_features(spill_dir=...)``
  does), projected to ``m`` dimensions with ``dg.graphs.random_projection`` read block by block from
  disk, then the same step. Stated bound::

      peak ≤ base + 2·B·4 + D·m·4 + 2·N·m·4 + 3·T·4 + 200·N·k + 256 MiB

  with ``B = 2**24`` values per projection row block: nothing grows with N·D.
* ``ooc``: the features are streamed to a float32 file and searched exactly, out of core
  (``dg.knn_edges`` on the spilled layer: two blocks of rows read at a time, no projection).
  Stated bound::

      peak ≤ base + 4·R·D·4 + 3·T·4 + 200·N·k + 256 MiB

  with ``R = 2,896`` rows per block (``√T``): two blocks and their prepared copies. Nothing grows
  with N·D either, and the graph is the exact one.

A dense similarity matrix, for comparison, would need ``N²·4`` bytes (10 GB at N = 50,000).

Run:  python benchmarks/bench_memory.py                       (N ∈ {5k, 10k, 20k}, D = 1024)
      python benchmarks/bench_memory.py --full                (adds N = 50,000 at D = 4,096)
      python benchmarks/bench_memory.py --n 50000 --d 4096    (one size)
Writes benchmarks/results/memory.json (atomically, after every row; ``--resume`` keeps rows).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2 ** 20
TILE = 1 << 23  # dyngraph.graphs._knn.DEFAULT_TILE_ELEMENTS
PROJ_BLOCK = 1 << 24


def _rss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> None:
    """Runs one configuration and prints one JSON line."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dyngraph as dg
    n, d, k, m = args.n, args.d, args.k, args.m
    torch.set_num_threads(args.threads)
    # Warm up kernels and the allocator on a tiny problem so that base includes them.
    w = torch.randn(256, 64)
    ei, wt = dg.knn_edges(w, 3, backend="matmul")
    ei, wt = dg.graphs.symmetrize(ei, wt, 256)
    dg.modularity(ei, torch.arange(256) % 4, wt)
    base = _rss_mib()
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, d, generator=g)
    y = torch.arange(n) % 10
    out = {"N": n, "D": d, "k": k, "mode": args.mode, "base_mib": base}
    t_start = time.perf_counter()
    if args.mode == "memory":
        x = torch.empty(n, d)
        for s in range(0, n, 4096):
            e = min(n, s + 4096)
            x[s:e] = torch.randn(e - s, d, generator=g) + 0.5 * centres[y[s:e]]
        out["after_data_mib"] = _rss_mib()
        t0 = time.perf_counter()
        ei, w = dg.knn_edges(x, k, backend="matmul")
    else:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            # the out-of-core path searches a float32 spill exactly; the JL path projects fp16
            sp = dg.capture.SpilledArray(Path(tmp) / "layer.bin", d,
                              "float32" if args.mode == "ooc" else "float16")
            for s in range(0, n, 1024):
                e = min(n, s + 1024)
                sp.append(torch.randn(e - s, d, generator=g) + 0.5 * centres[y[s:e]])
            sp.close()
            out["after_data_mib"] = _rss_mib()
            out["file_mib"] = os.path.getsize(sp.path) / MIB
            t0 = time.perf_counter()
            if args.mode == "ooc":
                ei, w = dg.knn_edges(sp, k)
            else:
                z = dg.graphs.random_projection(sp, m, seed=0)
                out["project_seconds"] = time.perf_counter() - t0
        if args.mode != "ooc":
            ei, w = dg.knn_edges(z, k, backend="matmul")
            out["m"] = m
    t_knn = time.perf_counter() - t0
    ei, w = dg.graphs.symmetrize(ei, w, n)
    q = dg.modularity(ei, y, w)
    out.update({"seconds": time.perf_counter() - t0, "knn_seconds": t_knn, "Q": q,
                "total_seconds": time.perf_counter() - t_start, "peak_mib": _rss_mib()})
    print("RESULT " + json.dumps(out), flush=True)


def bound_mib(row: dict) -> float:
    n, d, k = row["N"], row["D"], row["k"]
    common = row["base_mib"] + (3 * TILE * 4 + 200 * n * k) / MIB + 256
    if row["mode"] == "memory":
        return common + 2 * n * d * 4 / MIB
    if row["mode"] == "ooc":
        return common + 4 * math.isqrt(TILE) * d * 4 / MIB
    m = row["m"]
    return common + (2 * PROJ_BLOCK * 4 + d * m * 4 + 2 * n * m * 4) / MIB


def run_one(n: int, d: int, mode: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--n", str(n), "--d", str(d),
           "--k", str(args.k), "--m", str(args.m), "--mode", mode, "--threads",
           str(args.threads), "--tmp", args.tmp]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"child failed for N={n}, D={d}, mode={mode}:\n{proc.stderr[-3000:]}")
    row = json.loads(line[-1][len("RESULT "):])
    row["bound_mib"] = bound_mib(row)
    row["within_bound"] = row["peak_mib"] <= row["bound_mib"]
    row["dense_similarity_mib"] = n * n * 4 / MIB
    row["features_mib"] = n * d * 4 / MIB
    row["load_avg"] = os.getloadavg()[0]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, nargs="*", default=None)
    p.add_argument("--d", type=int, default=None)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--m", type=int, default=256, help="projection dimension (spill path)")
    p.add_argument("--mode", default="memory,spill,ooc")
    p.add_argument("--full", action="store_true", help="add N=50,000 at D=4,096")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "memory.json"))
    args = p.parse_args(argv)
    if args.child:
        args.n = args.n[0]
        child(args)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dyngraph._io import atomic_write_json
    if args.n:
        configs = [(n, args.d or 4096) for n in args.n]
    else:
        d = args.d or 1024
        configs = [(5000, d), (10000, d), (20000, d)]
        if args.full:
            configs.append((50000, 4096))
    modes = args.mode.split(",")
    # Rows of other configurations in an earlier file are kept either way; --resume also keeps
    # (skips) the rows this run would redo.
    store = {"rows": []}
    if Path(args.out).exists():
        store = json.loads(Path(args.out).read_text())
    print("# dyngraph memory benchmark: peak RSS of features → kNN graph → Q\n")
    print(f"threads={args.threads}, k={args.k}, tile={TILE} scores ({TILE * 4 // MIB} MiB), "
          f"projection m={args.m}; base = RSS with torch and dyngraph imported\n")
    print("| N | D | path | time | peak RSS | peak − base | stated bound | peak/bound | "
          "features (fp32) | dense N² (fp32) | Q | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, d in configs:
        for mode in modes:
            row = next((r for r in store["rows"] if r["N"] == n and r["D"] == d and
                        r["mode"] == mode and r["k"] == args.k), None) if args.resume else None
            if row is None:
                row = run_one(n, d, mode, args)
                store["rows"] = [r for r in store["rows"] if not (
                    r["N"] == n and r["D"] == d and r["mode"] == mode and r["k"] == args.k)]
                store["rows"].append(row)
                atomic_write_json(args.out, store)
            label = {"memory": "in memory", "ooc": "spill fp32 → exact, out of core"}.get(
                mode) or f"spill fp16 → JL m={row['m']}"
            print(f"| {n} | {d} | {label} | {row['seconds']:.1f} s | {row['peak_mib']:.0f} MiB | "
                  f"{row['peak_mib'] - row['base_mib']:.0f} MiB | "
                  f"{row['bound_mib']:.0f} MiB | {row['peak_mib'] / row['bound_mib']:.2f} | "
                  f"{row['features_mib']:.0f} MiB | "
                  f"{row['dense_similarity_mib'] / 1024:.1f} GiB | {row['Q']:.4f} | "
                  f"{row['load_avg']:.1f} |", flush=True)
            if not row["within_bound"]:
                print(f"  !! peak {row['peak_mib']:.0f} MiB above the stated bound", flush=True)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
