"""Representation similarity, side by side with peers on the same features.

1. **Layer × layer minibatch CKA between two models** (Nguyen et al. 2021): dyngraph's
   ``dg.compare.stream_cka`` (float64, one Gram per layer per batch, all layer pairs as one matrix product)
   against ``torch-cka`` 0.21 (PyPI; float32, recomputes the Gram and an ``N³`` product for every
   pair). Same models, same loader, same layers. A third setting shifts every activation of the
   hooked layers by a constant (CKA is translation invariant, so the values must not change):
   torch-cka's float32 unbiased HSIC then returns NaN; dyngraph's values are unchanged.
2. **Exact linear CKA of one pair** on all N samples: ``dg.measures.linear_cka`` against the
   Kornblith-style numpy computation from Gram matrices (float64).
3. **Mutual kNN** (Huh et al. 2024): ``dg.measures.mutual_knn`` on dyngraph's own exact kNN against
   scikit-learn's ``NearestNeighbors`` (brute force, cosine) + numpy set intersection.

Run: ``python benchmarks/bench_similarity.py [--repeats 3] [--threads 1]``
Writes ``benchmarks/results/similarity.json`` (atomically) and prints markdown tables.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg
from dyngraph._io import atomic_write_json


def timed(fn, repeats, *args, **kw):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(*args, **kw)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


# ------------------------------------------------------------------------------ 1. minibatch CKA
class Shift(nn.Module):
    """Adds a constant to its input (used to shift hooked activations)."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x + self.c


def mlp(seed: int, d_in: int, shift: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    # Shift modules sit after the non-linearity and before linear maps only, so every hooked
    # output of the shifted network is the unshifted one plus a constant vector.
    layers = [nn.Linear(d_in, 256), nn.ReLU(), Shift(shift), nn.Linear(256, 256), Shift(shift),
              nn.Linear(256, 10)]
    return nn.Sequential(*layers).eval()


def ours_cka(m1, m2, l1, l2, loader) -> torch.Tensor:
    return dg.compare.stream_cka({"a": m1, "b": m2}, loader, layers={"a": l1, "b": l2},
                                 within=False, progress=False)[("a", "b")]["cka_minibatch"]


def peer_cka(m1, m2, l1, l2, loader):
    import torch_cka
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = torch_cka.CKA(m1, m2, model1_name="a", model2_name="b", model1_layers=l1,
                          model2_layers=l2)
        try:
            c.compare(loader)
            return c.export()["CKA"].double(), None
        except AssertionError as exc:          # torch-cka asserts on its own NaNs
            return torch.as_tensor(c.hsic_matrix).double(), str(exc)


def np_minibatch_reference(m1, m2, l1, l2, loader) -> torch.Tensor:
    """Independent float64 numpy reference: Song et al.'s unbiased HSIC on each batch's raw
    (uncentred) Gram matrices, averaged over batches, then normalised (Nguyen et al. 2021)."""
    fa = dg.extract_features(m1, loader, layers=l1, progress=False)
    fb = dg.extract_features(m2, loader, layers=l2, progress=False)

    def hsic(k, l):
        n = k.shape[0]
        k, l = k.copy(), l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ k @ l @ one) / (n * (n - 3))

    bs = loader.batch_size
    n = fa.n_samples
    cross = np.zeros((len(l1), len(l2)))
    sa, sb = np.zeros(len(l1)), np.zeros(len(l2))
    for s in range(0, n, bs):
        if min(bs, n - s) < 4:
            continue
        ka = [fa[l][s:s + bs].double().numpy() for l in fa]
        kb = [fb[l][s:s + bs].double().numpy() for l in fb]
        ka, kb = [x @ x.T for x in ka], [y @ y.T for y in kb]
        for i, k in enumerate(ka):
            sa[i] += hsic(k, k)
            for j, l in enumerate(kb):
                cross[i, j] += hsic(k, l)
        for j, l in enumerate(kb):
            sb[j] += hsic(l, l)
    return torch.from_numpy(cross / np.sqrt(np.outer(sa, sb)))


def bench_minibatch(repeats):
    try:
        import torch_cka  # noqa: F401
        have_peer = True
    except ImportError:
        have_peer = False
    rows = []
    digits = dg.zoo.digits_dataset("all")
    mn = dg.zoo.mnist1d_dataset("all")
    settings = []
    torch.manual_seed(0)
    c1, c2 = dg.zoo.DigitsCNN().eval(), dg.zoo.DigitsCNN().eval()
    lc = dg.default_layers(c1)
    settings.append(("digits, 2× DigitsCNN (6 conv layers), N=1797, B=256", c1, c2, lc, lc,
                     DataLoader(digits, batch_size=256)))
    m1, m2 = mlp(0, 40), mlp(1, 40)
    lm = ["0", "2", "4", "5"]
    settings.append(("MNIST-1D, 2× MLP (4 hooked layers), N=5000, B=500", m1, m2, lm, lm,
                     DataLoader(TensorDataset(mn.tensors[0].flatten(1), mn.tensors[1]),
                                batch_size=500)))
    s1, s2 = mlp(0, 40, shift=30.0), mlp(1, 40, shift=30.0)
    ls = lm
    settings.append(("MNIST-1D, same MLPs, activations shifted by +30 (CKA must not change)",
                     s1, s2, ls, ls, DataLoader(TensorDataset(mn.tensors[0].flatten(1),
                                                              mn.tensors[1]), batch_size=500)))
    reference = {}
    for name, a, b, la, lb, loader in settings:
        ours_t, ours = timed(ours_cka, repeats, a, b, la, lb, loader)
        ref64 = np_minibatch_reference(a, b, la, lb, loader)
        row = {"setting": name, "ours_seconds": ours_t, "ours_nan": int(torch.isnan(ours).sum()),
               "cells": ours.numel(),
               "ours_max_abs_err_vs_float64_numpy": float((ours - ref64).abs().max())}
        if "shifted" in name:
            ref = reference["MNIST-1D, 2× MLP (4 hooked layers), N=5000, B=500"]
            row["ours_max_change_vs_unshifted"] = float((ours - ref).abs().max())
        else:
            reference[name] = ours
        if have_peer:
            peer_t, (peer, err) = timed(peer_cka, repeats, a, b, la, lb, loader)
            finite = torch.isfinite(peer)
            row.update({"peer_seconds": peer_t, "speedup": peer_t / ours_t,
                        "peer_nan": int((~finite).sum()), "peer_error": err,
                        "max_abs_diff_where_peer_finite":
                            float((peer - ours).abs()[finite].max()) if finite.any() else None,
                        "peer_max_abs_err_vs_float64_numpy":
                            float((peer - ref64).abs()[finite].max()) if finite.any() else None})
        rows.append(row)
    return rows, have_peer


# ------------------------------------------------------------------------------ 2. exact CKA
def np_gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019) with Gram matrices: HSIC = tr(KHLH), float64."""
    n = x.shape[0]
    k, l = x @ x.T, y @ y.T
    h = np.eye(n) - 1.0 / n
    kc, lc = h @ k @ h, h @ l @ h
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def bench_exact(repeats):
    rows = []
    g = torch.Generator().manual_seed(0)
    for n, dx, dy in ((1000, 256, 1024), (2000, 1024, 512), (4000, 128, 256)):
        x = torch.randn(n, dx, generator=g)
        y = torch.tanh(x[:, : min(dx, dy)].repeat(1, dy // min(dx, dy) + 1)[:, :dy]) + \
            torch.randn(n, dy, generator=g)
        ours_t, ours = timed(dg.measures.linear_cka, repeats, x, y)
        xn, yn = x.double().numpy(), y.double().numpy()
        peer_t, peer = timed(np_gram_cka, repeats, xn, yn)
        rows.append({"n": n, "dx": dx, "dy": dy, "ours_seconds": ours_t, "peer_seconds": peer_t,
                     "speedup": peer_t / ours_t, "abs_diff": abs(ours - peer), "value": ours})
    return rows


# ------------------------------------------------------------------------------ 3. mutual kNN
def sk_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    from sklearn.neighbors import NearestNeighbors

    def nbrs(z):
        idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute",
                               n_jobs=1).fit(z).kneighbors(z, return_distance=False)
        # drop self (first column unless a duplicate tied with it)
        keep = idx != np.arange(z.shape[0])[:, None]
        return np.array([row[m][:k] for row, m in zip(idx, keep)])

    a, b = nbrs(x), nbrs(y)
    inter = [len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(a, b)]
    return float(np.mean(inter) / k)


def bench_mutual_knn(repeats, sizes):
    rows = []
    g = torch.Generator().manual_seed(1)
    for n in sizes:
        x = torch.randn(n, 128, generator=g)
        y = x @ torch.randn(128, 64, generator=g) + 2 * torch.randn(n, 64, generator=g)
        ours_t, ours = timed(dg.measures.mutual_knn, repeats, x, y, k=10)
        peer_t, peer = timed(sk_mutual_knn, repeats, x.numpy(), y.numpy(), 10)
        rows.append({"n": n, "d": (128, 64), "k": 10, "ours_seconds": ours_t,
                     "peer_seconds": peer_t, "speedup": peer_t / ours_t,
                     "abs_diff": abs(ours - peer), "value": ours})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (shared machine)")
    ap.add_argument("--knn-sizes", type=int, nargs="+", default=[1000, 4000, 10000])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "similarity.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    mb, have_peer = bench_minibatch(args.repeats)
    print("## 1. layer × layer minibatch CKA: dyngraph stream_cka vs torch-cka 0.21")
    if not have_peer:
        print("(torch-cka is not installed: pip install torch-cka; only dyngraph timed)")
    print("| setting | cells | dyngraph s | torch-cka s | speed-up | dyngraph max err vs float64 "
          "numpy | torch-cka max err (finite cells) | NaN dyngraph | NaN torch-cka |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in mb:
        perr = r.get("peer_max_abs_err_vs_float64_numpy")
        extra = (f" (change vs unshifted: {r['ours_max_change_vs_unshifted']:.1e})"
                 if "ours_max_change_vs_unshifted" in r else "")
        print(f"| {r['setting']} | {r['cells']} | {r['ours_seconds']:.3f} | "
              f"{r.get('peer_seconds', float('nan')):.3f} | "
              f"{r.get('speedup', float('nan')):.1f}× | "
              f"{r['ours_max_abs_err_vs_float64_numpy']:.1e}{extra} | "
              f"{'n/a' if perr is None else f'{perr:.1e}'} | {r['ours_nan']} | "
              f"{r.get('peer_nan', 'n/a')} |")

    ex = bench_exact(args.repeats)
    print("\n## 2. exact linear CKA of one pair: dg.measures.linear_cka vs numpy Gram (float64)")
    print("| N | Dx | Dy | dyngraph s | numpy s | speed-up | abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in ex:
        print(f"| {r['n']} | {r['dx']} | {r['dy']} | {r['ours_seconds']:.3f} | "
              f"{r['peer_seconds']:.3f} | {r['speedup']:.1f}× | {r['abs_diff']:.1e} |")

    mk = bench_mutual_knn(args.repeats, args.knn_sizes)
    print("\n## 3. mutual kNN (k=10): dg.measures.mutual_knn vs scikit-learn NearestNeighbors + numpy")
    print("| N | dyngraph s | scikit-learn s | speed-up | abs diff |")
    print("|---|---|---|---|---|")
    for r in mk:
        print(f"| {r['n']} | {r['ours_seconds']:.3f} | {r['peer_seconds']:.3f} | "
              f"{r['speedup']:.1f}× | {r['abs_diff']:.1e} |")

    atomic_write_json(args.out, {
        "benchmark": "representation similarity", "threads": args.threads,
        "repeats": args.repeats, "torch": torch.__version__,
        "python": platform.python_version(), "note": "shared 2-core machine; timings are noisy",
        "minibatch_cka_vs_torch_cka": mb, "exact_cka_vs_numpy": ex,
        "mutual_knn_vs_sklearn": mk})
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
