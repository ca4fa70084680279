"""Community detection on kNN snapshots: Leiden vs Louvain, side by side.

Times ``dg.measures.detect_communities`` (graph conversion included, as a user pays it) with every
backend on the same snapshots:

* ``leiden``          igraph's C Leiden (modularity objective) — dyngraph's default;
* ``leidenalg``       the leidenalg package (RBConfigurationVertexPartition);
* ``louvain_igraph``  igraph's ``community_multilevel``;
* ``louvain``         networkx ``louvain_communities`` (the reference peer; ratios are against it).

Snapshots: Gaussian class clusters at growing N (k = 10) and real data (digits pixels, MNIST-1D
signals; k = 3, the reference snapshot). Also reports the modularity each partition reaches and
its NMI against the labels, so speed is not bought with quality.

Run: ``python benchmarks/bench_community.py [--sizes 500 2000 5000] [--repeats 3]``
Writes ``benchmarks/results/community.json`` (atomically) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import dyngraph as dg
from dyngraph._io import atomic_write_json

PEER = "louvain"


def snapshots(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    for n in sizes:
        y = torch.arange(n) % 10
        centers = 2.0 * torch.randn(10, 32, generator=g)
        x = torch.randn(n, 32, generator=g) + centers[y]
        yield f"gaussian-10 (N={n}, k=10)", dg.graphs.build_snapshot(x, y, k=10)
    d = dg.zoo.digits_dataset("all", flat=True)
    yield "digits pixels (k=3)", dg.graphs.build_snapshot(d.tensors[0], d.tensors[1], k=3)
    m = dg.zoo.mnist1d_dataset("all")
    yield "MNIST-1D signals (k=3)", dg.graphs.build_snapshot(m.tensors[0].flatten(1),
                                                             m.tensors[1], k=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "community.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, snap in snapshots(args.sizes):
        n, e = snap.num_nodes, snap.edge_index.shape[1] // 2
        res = {}
        for method in dg.measures.METHODS:
            # warm-up
            dg.measures.detect_communities(snap.edge_index, snap.edge_weight, n, method=method)
            times, comm = [], None
            for r in range(args.repeats):
                t = time.perf_counter()
                comm = dg.measures.detect_communities(snap.edge_index, snap.edge_weight, n,
                                                      method=method, seed=r)
                times.append(time.perf_counter() - t)
            res[method] = {"seconds": statistics.median(times), "all_seconds": times,
                           "modularity": dg.modularity(snap.edge_index, comm, snap.edge_weight),
                           "nmi_vs_labels": dg.measures.normalized_mutual_info(comm, snap.y),
                           "n_communities": int(comm.max()) + 1}
        peer = res[PEER]["seconds"]
        for method, r in res.items():
            r.update({"graph": name, "nodes": n, "edges": e, "method": method,
                      "speedup_vs_networkx_louvain": peer / r["seconds"]})
            rows.append(r)
    print("| graph | N | undirected edges | method | median s | speed-up vs networkx Louvain "
          "| Q reached | NMI vs labels | communities |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['graph']} | {r['nodes']} | {r['edges']} | {r['method']} | "
              f"{r['seconds']:.4f} | {r['speedup_vs_networkx_louvain']:.1f}× | "
              f"{r['modularity']:.4f} | {r['nmi_vs_labels']:.3f} | {r['n_communities']} |")
    fastest = {}
    for r in rows:
        fastest.setdefault(r["graph"], []).append((r["seconds"], r["method"]))
    winners = {g: min(v)[1] for g, v in fastest.items()}
    print("\nfastest per graph:", winners)
    atomic_write_json(args.out, {
        "benchmark": "community detection on kNN snapshots", "peer": f"networkx {PEER}",
        "default_method": dg.measures.DEFAULT_METHOD, "fastest": winners,
        "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "note": "shared 2-core machine; timings are noisy", "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
