"""The modularity curve of a trained network against the same architecture left untrained.

    python examples/modularity_curve.py --example digits  --arch cnn --out runs/curve_digits
    python examples/modularity_curve.py --example mnist1d --arch cnn --out runs/curve_mnist1d

Trains the reference model on the bundled data (CPU, about a minute), extracts every layer's
representations of the held-out test set, builds k=3 cosine kNN snapshots and reports Q per layer
as mean ± std over 5 class-balanced resamplings (50 per class), for both networks. Writes
``curves.json`` and ``curves.png`` (both curves on one plot) and TensorBoard logs.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import dyngraph as dg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--example", default="digits", choices=list(dg.zoo.EXAMPLES))
    p.add_argument("--arch", default="cnn", choices=["cnn", "mlp"])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/curve")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    torch.manual_seed(args.seed)

    train, test = dg.zoo.example_loaders(args.example, seed=args.seed)
    model = dg.zoo.build_model(args.arch, args.example)
    untrained = copy.deepcopy(model)
    t0 = time.perf_counter()
    dg.zoo.train_classifier(model, train, epochs=args.epochs, seed=args.seed,
                               progress=not args.quiet)
    train_s = time.perf_counter() - t0
    report = {"example": args.example, "arch": args.arch, "train_seconds": round(train_s, 1)}
    curves = []
    from torch.utils.tensorboard import SummaryWriter
    for label, net in (("trained", model), ("untrained", untrained)):
        acc = dg.zoo.evaluate(net, test)
        feats = dg.extract_features(net, test, layers=dg.default_layers(net), seed=args.seed,
                                    progress=not args.quiet)
        curve = dg.profiles._pipeline.modularity_curve(feats, k=args.k, per_class=args.per_class,
                                    repeats=args.repeats, seed=args.seed, progress=False)
        curve.meta["label"] = label
        curves.append(curve)
        with SummaryWriter(str(out / "tensorboard" / label)) as w:
            curve.to_tensorboard(w)
        report[label] = {"test_acc": round(acc, 4), "layers": curve.layers,
                         "modularity": [round(v, 4) for v in curve.values.tolist()],
                         "std": [round(v, 4) for v in curve.std.tolist()]}
        print(f"{label:>9}  acc={acc:.3f}  Q: " +
              "  ".join(f"{v:.3f}±{s:.3f}" for v, s in zip(curve.values.tolist(),
                                                            curve.std.tolist())))
    dg.outputs._plot.plot_curves(curves, path=out / "curves.png", labels=["trained", "untrained"],
                   title=f"{args.example} / {args.arch}: modularity over depth "
                         f"(k={args.k}, {args.per_class}/class, {args.repeats} repeats)")
    dg._io.atomic_write_json(out / "curves.json", report)
    print(json.dumps({k: v for k, v in report.items() if k in ("example", "arch",
                                                                 "train_seconds")}))


if __name__ == "__main__":
    main()
