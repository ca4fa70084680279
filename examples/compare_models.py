"""Compare networks layer by layer on the bundled data, and follow their communities over depth.

Part A, digits (8×8 images): two seeds of the reference CNN, an MLP (a second architecture) and an
untrained CNN. Part B, MNIST-1D (harder; a random network does not separate its classes): two
seeds of an MLP and the untrained MLP. Checkpoints are cached in ``--out`` (reruns do not
retrain). For each part:

1. ``dg.compare.compare_models`` — every measure between every pair of models, on the whole
   test split (one ``dg.LayerMatrix`` per pair, heatmaps with ``dg.plot``);
2. checks: do two seeds of one architecture agree more on corresponding layers than on other
   layers (diagonal vs off-diagonal), and is a trained network told apart from an untrained one
   (seed-to-seed similarity of matched layers vs trained-to-untrained)?
3. permutation p-values on the last layer;
4. ``dg.measures.community_evolution`` of a trained and the untrained network (Leiden communities found
   without labels, NMI/ARI against the labels, kNN purity, transitions, class separation).

Run: ``python examples/compare_models.py [--epochs 30] [--out runs/compare_models]``
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dyngraph as dg

MEASURES = ["cka", "cka_unbiased", "knn_overlap", "mutual_knn", "graph", "modularity_distance"]


def trained(name: str, build, seed: int, epochs: int, train, test, out: Path):
    torch.manual_seed(seed)
    model = build()
    dg.zoo.train_cached(model, train, out / f"model_{name}_seed{seed}_ep{epochs}.pt", epochs,
                           seed=seed, progress=False)
    return model.eval(), dg.prune.evaluate(model, test)


def report(res, a: str, b: str, untrained: str, other=None) -> dict:
    """Prints the seed/untrained table of one comparison; returns the checks."""
    print(f"\n| measure | {a}~{b}: diagonal | off-diagonal | {a}~{untrained}: diagonal "
          f"| per layer {a}~{b} | per layer {a}~{untrained} |" + (f" {a}~{other}: mean best "
                                                                    f"match |" if other else ""))
    print("|---|---|---|---|---|---|" + ("---|" if other else ""))
    checks = {}
    for m in res.measures:
        seeds = res.matrix(a, b)[m]
        c = res.matrix(a, b).diagonal_contrast(m)
        um = res.matrix(a, untrained)[m]
        u = res.matrix(a, untrained).diagonal_contrast(m)["diagonal_mean"]
        higher = res.higher_is_similar(m)
        checks[m] = {
            "diagonal_more_similar": (c["diagonal_mean"] > c["off_diagonal_mean"]) == higher,
            "trained_told_from_untrained": (c["diagonal_mean"] > u) == higher}
        row = (f"| {m} | {c['diagonal_mean']:.3f} | {c['off_diagonal_mean']:.3f} | {u:.3f} | "
               f"{' '.join(f'{v:.2f}' for v in seeds.diagonal().tolist())} | "
               f"{' '.join(f'{v:.2f}' for v in um.diagonal().tolist())} |")
        if other:
            cross = res.matrix(a, other)[m]
            best = (cross.max(1).values if higher else cross.min(1).values).mean()
            row += f" {float(best):.3f} |"
        print(row)
    print("checks:", json.dumps(checks))
    return checks


def figures(res, out: Path) -> None:
    """One grid of every pair of models per measure, and the seed-to-seed heatmaps."""
    for m in res.measures:
        dg.plot(res, out / f"grid_{m}.png", metric=m)
        for a, b in res.matrices:
            if a != b and a.split("-")[0] == b.split("-")[0]:
                dg.plot(res, out / f"{m}__{a}__vs__{b}.png", metric=m, pair=(a, b))


def permutations(fa, fb, fu, names, args) -> None:
    last = fa.names[-1]
    print(f"permutation tests on the last layer ({last}), P={args.permutations}:")
    for m in ("cka", "mutual_knn", "graph"):
        r1 = dg.measures.permutation_test(m, fa[last], fb[last], permutations=args.permutations, k=args.k)
        r2 = dg.measures.permutation_test(m, fa[last], fu[last], permutations=args.permutations, k=args.k)
        print(f"  {m:10s} {names[0]} = {r1.value:.3f} (p = {r1.p_value:.3f}, null mean "
              f"{float(r1.null.mean()):.3f}) | {names[1]} = {r2.value:.3f} (p = {r2.p_value:.3f})")


def communities(name: str, feats, out: Path) -> None:
    seq = dg.DynamicGraph.from_features(feats, k=3, progress=False)
    ev = dg.measures.community_evolution(seq, progress=False)
    ev.to_json(out / f"communities_{name}.json")
    for kind in ("flow", "transitions", "mixing", "profile"):
        dg.plot(ev, out / f"figures_{name}" / f"{kind}.png", kind=kind)
    p = ev.profile
    fmt = lambda metric: " ".join(f"{v:.3f}" for v in p[metric].values.tolist())
    print(f"  {name}: layers {ev.layers}")
    print(f"    label Q      {fmt('modularity')}")
    print(f"    kNN purity   {fmt('graph_purity')}")
    print(f"    #communities {[int(v) for v in p['n_communities'].values.tolist()]}")
    print(f"    NMI          {fmt('nmi')}")
    print(f"    ARI          {fmt('ari')}")
    print(f"    stability    {' '.join(f'{v:.3f}' for v in ev.stability.tolist())}  "
          f"(NMI between consecutive layers)")
    off = ev.separation[~torch.eye(ev.separation.shape[0], dtype=torch.bool)]
    done = off[off >= 0]
    print(f"    class pairs separated for good: {done.numel() // 2} of {off.numel() // 2}"
          + (f"; separation layer per pair (median) {float(done.double().median()):.0f}"
             if done.numel() else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--out", default="runs/compare_models")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.perf_counter()

    # ------------------------------------------------------------ A: digits, CNN seeds + MLP
    print("== A. digits: two CNN seeds, an MLP, an untrained CNN ==")
    train, test = dg.zoo.example_loaders("digits", seed=0)
    models, acc = {}, {}
    for arch, seed in (("cnn", 0), ("cnn", 1), ("mlp", 0)):
        models[f"{arch}-seed{seed}"], acc[f"{arch}-seed{seed}"] = trained(
            f"digits_{arch}", lambda a=arch: dg.zoo.build_model(a), seed, args.epochs, train,
            test, out)
    torch.manual_seed(0)
    models["cnn-untrained"] = dg.zoo.build_model("cnn").eval()
    acc["cnn-untrained"] = dg.prune.evaluate(models["cnn-untrained"], test)
    print("test accuracy:", {n: round(a, 4) for n, a in acc.items()})
    t = time.perf_counter()
    res = dg.compare.compare_models(models, test, measures=MEASURES, k=args.k, progress=False,
                                    info={n: {"test_acc": a} for n, a in acc.items()})
    secs = res.meta["seconds"]
    print(f"compare: {len(models)} models, N={res.meta['n_samples']}, {len(MEASURES)} measures, "
          f"{time.perf_counter() - t:.1f}s (prepare "
          f"{sum(v for k, v in secs.items() if k.startswith('prepare')):.1f}s, pairwise "
          f"{secs['pairwise']:.1f}s)")
    report(res, "cnn-seed0", "cnn-seed1", "cnn-untrained", other="mlp-seed0")
    f0, f1, fu = (dg.extract_features(models[n], test, progress=False)
                  for n in ("cnn-seed0", "cnn-seed1", "cnn-untrained"))
    permutations(f0, f1, fu, ("seed0~seed1", "seed0~untrained"), args)
    res.to_json(out / "digits_report.json")
    res.to_csv(out / "digits_table.csv")
    figures(res, out / "digits_figures")
    print("community evolution (k = 3 snapshots; Leiden without labels):")
    communities("digits_cnn-seed0", f0, out)
    communities("digits_cnn-untrained", fu, out)

    # ------------------------------------------------------------ B: MNIST-1D, MLP seeds
    print("\n== B. MNIST-1D: two MLP seeds and the untrained MLP ==")
    train, test = dg.zoo.example_loaders("mnist1d", seed=0)
    build = lambda: dg.zoo.DigitsMLP(depth=4, width=256, in_features=40)
    models, acc = {}, {}
    for seed in (0, 1):
        models[f"mlp-seed{seed}"], acc[f"mlp-seed{seed}"] = trained(
            "mnist1d_mlp", build, seed, args.epochs, train, test, out)
    torch.manual_seed(0)
    models["mlp-untrained"] = build().eval()
    acc["mlp-untrained"] = dg.prune.evaluate(models["mlp-untrained"], test)
    print("test accuracy:", {n: round(a, 4) for n, a in acc.items()})
    res = dg.compare.compare_models(models, test, measures=MEASURES, k=args.k, progress=False,
                                    info={n: {"test_acc": a} for n, a in acc.items()})
    report(res, "mlp-seed0", "mlp-seed1", "mlp-untrained")
    g0, g1, gu = (dg.extract_features(models[n], test, progress=False)
                  for n in ("mlp-seed0", "mlp-seed1", "mlp-untrained"))
    permutations(g0, g1, gu, ("seed0~seed1", "seed0~untrained"), args)
    res.to_json(out / "mnist1d_report.json")
    figures(res, out / "mnist1d_figures")
    print("community evolution (k = 3 snapshots; Leiden without labels):")
    communities("mnist1d_mlp-seed0", g0, out)
    communities("mnist1d_mlp-untrained", gu, out)
    print(f"\nwrote {out} ({time.perf_counter() - t0:.1f}s total)")


if __name__ == "__main__":
    main()
