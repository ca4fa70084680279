"""Intrinsic dimension over depth: a trained CNN against the same CNN untrained (bundled digits).

Recanatesi, Farrell et al. (arXiv 1906.00443) and Ansuini et al. (NeurIPS 2019) report that the
intrinsic dimension (ID) of a trained network's representations first rises (expansion) and then
falls (compression) over depth — a "hunchback" — while an untrained network's stays flat. This
script measures it on bundled data and prints whatever comes out.

Steps: train ``dg.zoo.DigitsCNN`` on scikit-learn's digits (cached in ``--out``), take the
same architecture with its initial weights, extract the input, every post-ReLU conv output and the
logits on the 540 test images, and compute per layer with ``dg.measures.id_curve`` (mean ± std
over 5 subsamples of 90%): TwoNN, MLE (k = 20), participation ratio, PCA dimension (90%) and the
mean local PR. Then the ID phases, modularity (labels as communities, ``dg.depth_profile``), NC1
on all samples, a block analysis at the ID peak, TensorBoard logs and figures (``dg.plot``,
``dg.log``).

Run:  python examples/intrinsic_dimension.py [--out runs/intrinsic_dimension] [--quiet]
      python examples/intrinsic_dimension.py --quick   (2 epochs, 2 subsamples: a smoke run)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dyngraph as dg
from dyngraph._io import atomic_write_json

ESTIMATORS = ("twonn", "mle_id", "participation_ratio", "pca_dim", "local_participation_ratio")


def get_model(trained: bool, train, test, epochs: int, seed: int, out: Path, progress: bool):
    torch.manual_seed(seed)
    model = dg.zoo.DigitsCNN()
    if trained:
        dg.zoo.train_cached(model, train, out / f"model_digits_cnn_seed{seed}_ep{epochs}.pt",
                            epochs, seed=seed, progress=progress)
    return model, dg.prune.evaluate(model, test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/intrinsic_dimension")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 epochs and 2 subsamples")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.repeats = 2, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    train, test = dg.zoo.example_loaders("digits", seed=args.seed)
    from torch.utils.tensorboard import SummaryWriter

    report = {}
    id_by_model = {}
    for label in ("trained", "untrained"):
        t0 = time.perf_counter()
        model, acc = get_model(label == "trained", train, test, args.epochs, args.seed, out,
                               progress)
        layers = (["features.0:input"] + dg.default_layers(model, point="post")
                  + ["classifier.1"])
        feats = dg.extract_features(model, test, layers=layers, progress=progress)
        t1 = time.perf_counter()
        ids = dg.measures.id_curve(feats, ESTIMATORS, repeats=args.repeats, fraction=0.9,
                                   seed=args.seed, progress=progress)
        t_id = time.perf_counter() - t1
        mod = dg.depth_profile(feats, "modularity", per_class=45, repeats=args.repeats,
                               seed=args.seed, progress=False)
        nc1 = dg.depth_profile(feats, "nc1", progress=False)  # all samples, once
        phases = {e: dg.measures.id_phases(ids, e) for e in ESTIMATORS}
        ph = phases["twonn"]
        peak = feats[ph.peak_layer].flatten(1)
        blocks = dg.measures.block_analysis(peak, "twonn", n_blocks=(1, 2, 4, 8), seed=args.seed)
        with SummaryWriter(str(out / "tensorboard" / label)) as w:
            dg.log(w, ph, profiles=[mod, nc1])  # ID next to modularity and NC1, one prefix
            dg.log(w, ids, prefix="id_estimators", figure=False)
            dg.log(w, blocks, prefix="block_analysis")
        dg.plot(ph, path=out / f"profiles_{label}.png",
                profiles=[mod, nc1, ids["participation_ratio"]],
                title=f"{label} DigitsCNN (test acc {acc:.3f}): TwoNN {ph.shape}")
        dg.plot(blocks, path=out / f"blocks_{label}.png")
        ids.meta["label"] = label
        ids.to_json(out / f"{label}_id.json")
        id_by_model[label] = ids
        dims = ids.meta["dims"]
        report[label] = {
            "test_acc": acc, "layers": feats.names, "dims": dims,
            "id": {e: [round(v, 2) for v in ids[e].values.tolist()] for e in ESTIMATORS},
            "id_std": {e: [round(v, 2) for v in ids[e].errors.tolist()] for e in ESTIMATORS},
            "phases": {e: {"shape": p.shape, "peak": p.peak_layer, "rise": round(p.rise, 2),
                           "fall": round(p.fall, 2)} for e, p in phases.items()},
            "modularity": [round(v, 3) for v in mod["modularity"].values.tolist()],
            "nc1": [round(v, 3) for v in nc1["nc1"].values.tolist()],
            "block_analysis_at_peak": blocks.to_dict(),
            "seconds_id_curves": round(t_id, 2),
            "seconds_total": round(time.perf_counter() - t0, 2),
        }
        print(f"\n== {label}: test accuracy {acc:.3f}; ID curves in {t_id:.1f}s ==")
        print(f"{'layer':>18} {'D':>5} " + " ".join(f"{e[:12]:>12}" for e in ESTIMATORS)
              + f" {'modularity':>10} {'nc1':>8}")
        for i, name in enumerate(feats.names):
            cells = " ".join(f"{ids[e].values[i]:6.2f}±{ids[e].errors[i]:4.2f}"
                             for e in ESTIMATORS)
            print(f"{name:>18} {dims[i]:>5} {cells} "
                  f"{mod['modularity'].values[i]:10.3f} {nc1['nc1'].values[i]:8.3f}")
        for e in ESTIMATORS:
            print(f"  {e:>25}: {phases[e].summary()}")
        print(f"  block analysis (TwoNN at the peak {ph.peak_layer!r}): "
              + ", ".join(f"N={s}: {m:.2f}±{sd:.2f}" for s, m, sd in
                          zip(blocks.block_size, blocks.mean, blocks.std)))
    for e in ("twonn", "participation_ratio"):
        dg.plot([id_by_model["trained"][e], id_by_model["untrained"][e]],
                labels=["trained", "untrained"], path=out / f"id_{e}_trained_vs_untrained.png",
                title=f"intrinsic dimension ({e}) over depth, DigitsCNN on digits")
    atomic_write_json(out / "report.json", report)
    print(f"\nwrote {out}/report.json, figures and TensorBoard logs under {out}")
    print(json.dumps({k: {"test_acc": v["test_acc"], "twonn_shape": v["phases"]["twonn"]["shape"],
                          "twonn_peak": v["phases"]["twonn"]["peak"]}
                      for k, v in report.items()}))


if __name__ == "__main__":
    main()
