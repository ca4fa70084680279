"""The modularity profile of a trained network against the same architecture left untrained.

    python examples/modularity_curve.py --example digits  --arch cnn --out runs/curve_digits
    python examples/modularity_curve.py --example mnist1d --arch cnn --out runs/curve_mnist1d

Trains the reference model on the bundled data (CPU), extracts every layer's representations of
the held-out test set, and reports Q per layer (``dg.depth_profile`` with the ``'modularity'``
measure on k=3 cosine kNN graphs) as mean ± std over 5 class-balanced resamplings (50 per class),
for both networks. Writes ``curves.json`` and ``curves.png`` (both profiles on one plot, drawn by
``dg.plot``) and TensorBoard logs (``dg.log``). The README's ``docs/img/curve_digits.json`` and
``docs/img/curve_digits.png`` are these two files of the digits run.
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
    p.add_argument("--example", default="digits", choices=["digits", "mnist1d"])
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
    profiles = []
    from torch.utils.tensorboard import SummaryWriter
    for label, net in (("trained", model), ("untrained", untrained)):
        acc = dg.prune.evaluate(net, test)
        feats = dg.extract_features(net, test, layers=dg.default_layers(net), seed=args.seed,
                                    progress=not args.quiet)
        profile = dg.depth_profile(feats, ["modularity"], graph=dg.GraphSpec(k=args.k),
                                   per_class=args.per_class, repeats=args.repeats,
                                   seed=args.seed, progress=False)
        profile.meta["label"] = label
        profiles.append(profile)
        with SummaryWriter(str(out / "tensorboard" / label)) as w:
            dg.log(w, profile, prefix="modularity")
        q = profile["modularity"]
        report[label] = {"test_acc": round(acc, 4), "layers": profile.layers,
                         "modularity": [round(v, 4) for v in q.values.tolist()],
                         "std": [round(v, 4) for v in q.errors.tolist()]}
        print(f"{label:>9}  acc={acc:.3f}  Q: " +
              "  ".join(f"{v:.3f}±{s:.3f}" for v, s in zip(q.values.tolist(),
                                                            q.errors.tolist())))
    dg.plot(profiles, path=out / "curves.png", labels=["trained", "untrained"],
            title=f"{args.example} / {args.arch}: modularity over depth "
                  f"(k={args.k}, {args.per_class}/class, {args.repeats} repeats)")
    (out / "curves.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k in ("example", "arch",
                                                                 "train_seconds")}))


if __name__ == "__main__":
    main()
