"""Intrinsic-dimension benchmark (issue 6): dyngraph against scikit-dimension, side by side.

On the same points in one run (each timed as the best of 3 calls, after a small warm-up of both
sides; the machine is shared, so the minimum is the least disturbed measurement):
  * ``dg.measures.twonn`` (float32 search, certified float64 distances; and the all-float64
    search) against ``skdim.id.TwoNN()`` — the target is ≥ 2× faster on CPU at N = 10,000,
    D = 512;
  * ``dg.measures.mle_id(k=20)`` against ``skdim.id.MLE().fit(X, n_neighbors=20)``;
  * ``dg.measures.participation_ratio`` against numpy's ``eigvalsh(np.cov(X))`` and
    ``dg.measures.pca_dim`` against ``sklearn.decomposition.PCA(0.9)``;
  * the whole ID profile of a model (DigitsCNN on the 540 digits test images, input + 6 conv
    layers + logits, TwoNN/MLE/PR/PCA, 5 subsamples of 90%): ``dg.measures.id_curve`` (the runner
    ``dg.depth_profile``) against the same numbers from skdim/numpy/sklearn, layer by layer, on
    the same subsamples.

Data: a uniform 20-dimensional ball (``skdim.datasets.hyperBall``) linearly embedded in D = 512.

Run:  python benchmarks/bench_dimension.py           (N = 10,000, D = 512)
      python benchmarks/bench_dimension.py --quick   (N = 2,000)
Writes benchmarks/results/dimension.json and prints a markdown table with ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dyngraph as dg
from dyngraph._io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"
warnings.filterwarnings("ignore")


REPEATS = 3


def once(fn, repeats: Optional[int] = None):
    """Best (minimum) wall-clock seconds over ``repeats`` calls, and the last value: the machine is
    shared, and the minimum is the least disturbed measurement of the same work."""
    ts = []
    for _ in range(repeats or REPEATS):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), out


def points(n: int, big_d: int, d: int = 20, seed: int = 0) -> np.ndarray:
    import skdim
    rng = np.random.default_rng(seed)
    z = skdim.datasets.hyperBall(n, d, random_state=seed)
    q, _ = np.linalg.qr(rng.standard_normal((big_d, d)))
    return np.ascontiguousarray(z @ q.T)


def row(name, ours_s, peer, peer_s, ours_v, peer_v):
    return {"what": name, "dyngraph_s": ours_s, "peer": peer, "peer_s": peer_s,
            "speedup": peer_s / ours_s if ours_s > 0 else float("nan"),
            "dyngraph_value": float(ours_v), "peer_value": float(peer_v),
            "abs_diff": abs(float(ours_v) - float(peer_v))}


def bench_estimators(n: int, big_d: int) -> list:
    import skdim
    from sklearn.decomposition import PCA
    x_np = points(n, big_d)
    x = torch.from_numpy(x_np)
    small = x_np[:300]  # warm-up: first-call costs (BLAS threads, kernels) on both sides
    dg.measures.twonn(torch.from_numpy(small)), skdim.id.TwoNN().fit(small)
    dg.measures.mle_id(torch.from_numpy(small)), skdim.id.MLE().fit(small, n_neighbors=20)
    rows = []
    _, (d_ours, _, stats) = once(lambda: dg.measures.neighbor_distances(x, 2, return_stats=True), 1)
    t_ours, v_ours = once(lambda: dg.measures.twonn(x))
    t_peer, v_peer = once(lambda: skdim.id.TwoNN().fit(x_np).dimension_)
    r = row(f"TwoNN N={n} D={big_d}", t_ours, "skdim.id.TwoNN", t_peer, v_ours, v_peer)
    r["refined_rows"] = stats["refined_rows"]
    rows.append(r)
    t64, v64 = once(lambda: dg.measures.twonn(x, search="float64"))
    rows.append(row(f"TwoNN N={n} D={big_d} (search='float64')", t64, "skdim.id.TwoNN", t_peer,
                    v64, v_peer))
    t_ours, v_ours = once(lambda: dg.measures.mle_id(x, k=20))
    t_peer, v_peer = once(lambda: skdim.id.MLE().fit(x_np, n_neighbors=20).dimension_)
    rows.append(row(f"MLE k=20 N={n} D={big_d}", t_ours, "skdim.id.MLE", t_peer, v_ours, v_peer))

    def np_pr():
        lam = np.linalg.eigvalsh(np.cov(x_np, rowvar=False))
        return lam.sum() ** 2 / (lam ** 2).sum()

    t_ours, v_ours = once(lambda: dg.measures.participation_ratio(x))
    t_peer, v_peer = once(np_pr)
    rows.append(row(f"participation ratio N={n} D={big_d}", t_ours, "numpy eigvalsh(cov)",
                    t_peer, v_ours, v_peer))
    t_ours, v_ours = once(lambda: dg.measures.pca_dim(x, 0.9))
    t_peer, v_peer = once(lambda: PCA(0.9, svd_solver="full").fit(x_np).n_components_)
    rows.append(row(f"PCA dim (90%) N={n} D={big_d}", t_ours, "sklearn PCA(0.9)", t_peer,
                    v_ours, v_peer))
    return rows


def bench_model_curve(repeats: int = 5) -> list:
    """The whole ID profile of a model: dyngraph against the same numbers from the peers."""
    import skdim
    from sklearn.decomposition import PCA
    torch.manual_seed(0)
    model = dg.zoo.DigitsCNN()
    _, test = dg.zoo.example_loaders("digits")
    layers = ["features.0:input"] + dg.default_layers(model, point="post") + ["classifier.1"]
    t_ext, feats = once(lambda: dg.extract_features(model, test, layers=layers, progress=False), 1)
    est = ("twonn", "mle_id", "participation_ratio", "pca_dim")
    # drop_ties=False: skdim keeps points with r1 = r2 (the digits pixels have a few exact ties),
    # so the like-for-like comparison uses its convention
    t_ours, prof = once(lambda: dg.measures.id_curve(feats, est, repeats=repeats, fraction=0.9,
                                         measure_options={"twonn": {"drop_ties": False}},
                                         progress=False), 2)
    n = feats.n_samples
    m = int(round(0.9 * n))

    def peers():
        out = {e: np.zeros((repeats, len(feats))) for e in est}
        for li, name in enumerate(feats.names):
            x = feats[name].flatten(1).double().numpy()
            for r in range(repeats):
                idx = torch.randperm(n, generator=torch.Generator().manual_seed(r))[:m]
                xs = x[idx.sort().values.numpy()]
                out["twonn"][r, li] = skdim.id.TwoNN().fit(xs).dimension_
                out["mle_id"][r, li] = skdim.id.MLE().fit(xs, n_neighbors=20).dimension_
                lam = np.linalg.eigvalsh(np.cov(xs, rowvar=False))
                out["participation_ratio"][r, li] = lam.sum() ** 2 / (lam ** 2).sum()
                out["pca_dim"][r, li] = PCA(0.9, svd_solver="full").fit(xs).n_components_
        return out

    t_peer, ref = once(peers, 2)
    diff = max(float(np.abs(prof.samples[:, :, j].numpy() - ref[e]).max())
               for j, e in enumerate(est))
    r = row(f"ID curve of DigitsCNN ({len(feats)} layers, N={m}, {repeats} subsamples, "
            f"TwoNN+MLE+PR+PCA)", t_ours, "skdim TwoNN/MLE + numpy PR + sklearn PCA", t_peer,
            float(prof["twonn"].values.max()), float(ref["twonn"].mean(0).max()))
    r["abs_diff"] = diff
    r["extract_s"] = t_ext
    r["twonn_curve"] = [round(v, 3) for v in prof["twonn"].values.tolist()]
    return [r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 2,000 instead of 10,000")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    n = args.n or (2000 if args.quick else 10000)
    rows = bench_estimators(n, args.dim) + bench_model_curve()
    print("\n| what | dyngraph (s) | peer | peer (s) | speed-up | dyngraph | peer | abs diff |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['what']} | {r['dyngraph_s']:.3f} | {r['peer']} | {r['peer_s']:.3f} | "
              f"{r['speedup']:.2f}× | {float(r['dyngraph_value']):.6f} | "
              f"{float(r['peer_value']):.6f} | {r['abs_diff']:.1e} |")
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "machine": platform.machine()}
    atomic_write_json(RESULTS / "dimension.json", {"env": env, "n": n, "dim": args.dim,
                                                   "rows": rows})
    print(f"\nwrote {RESULTS / 'dimension.json'}  (load average {env['load_avg']})")


if __name__ == "__main__":
    main()
