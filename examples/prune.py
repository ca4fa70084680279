"""Redundant-layer pruning guided by the modularity curve, on MNIST-1D, step by step.

1. Train a deliberately over-deep residual 1-D CNN (12 blocks, 25 convs) on MNIST-1D.
2. Compute its modularity curve (a DepthProfile) over the stem and every residual block, on
   training samples.
3. Find the redundant blocks with the reference rule (remove block l when Q_l - Q_(l-1) < 0.03,
   never the stem, the classifier or a shape-changing block, at least one block per stage).
4. Cut them out, fine-tune, and compare with removing as many blocks at random (3 seeds) and
   with removing the least redundant ones (highest ΔQ).

Run:  python examples/prune.py [--out runs/example_prune] [--quick]
Everything is cached in --out: a rerun skips the training and every finished fine-tuning.
On a busy shared machine, one torch thread is faster than two (set below).
"""
import argparse
import json
import statistics
from pathlib import Path

import torch

import dyngraph as dg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/example_prune")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--finetune-epochs", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.finetune_epochs = 1, 1
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. data and an over-deep network, trained once (resumable checkpoint per epoch)
    train, test = dg.zoo.example_loaders("mnist1d", batch_size=128, seed=0)
    torch.manual_seed(0)
    model = dg.zoo.SignalResNet(blocks=(4, 4, 4))
    dg.zoo.train_classifier(model, train, epochs=args.epochs, seed=0, checkpoint=out / "train.pt")
    x1 = test.dataset.tensors[0][:1]
    print(f"baseline: test acc {dg.prune.evaluate(model, test):.4f}, "
          f"{dg.prune.count_params(model):,} params, "
          f"{dg.prune.count_flops(model, x1):,} FLOPs/sample")

    # 2. the modularity curve: stem + every residual block, 5 graphs of 50 samples per class
    layers = dg.default_layers(model)
    feats = dg.extract_features(model, train, layers=layers, per_class=100, seed=0)
    curve = dg.depth_profile(feats, "modularity", graph=dg.GraphSpec(k=3), per_class=50,
                             repeats=5, seed=0)["modularity"]
    for name, q, s in zip(curve.layers, curve.values.tolist(), curve.errors.tolist()):
        print(f"  Q({name:11s}) = {q:.4f} ± {s:.4f}")
    dg.plot(curve, out / "curve.png")

    # 3. the redundant blocks, each with its reason
    red = dg.prune.redundant_layers(curve, rule="delta", threshold=0.03, model=model,
                                    example_input=x1)
    print(red.table())
    n = len(red)
    if n == 0:
        print("no redundant block at this threshold")
        return

    # 4. prune, fine-tune, compare with baselines removing as many blocks
    choices = {"modularity": red,
               "least_redundant": dg.prune.least_redundant_layers(curve, n, model=model,
                                                                  example_input=x1)}
    for seed in (0, 1, 2):
        choices[f"random{seed}"] = dg.prune.random_layers(curve, n, seed=seed, model=model,
                                                          example_input=x1)
    results = {}
    for name, choice in choices.items():
        pruned = dg.prune.prune_layers(model, choice, example_input=x1)
        acc_cut = dg.prune.evaluate(pruned, test)
        train.generator.manual_seed(0)  # every choice is fine-tuned on the same batch order
        dg.prune.finetune(pruned, train, None, args.finetune_epochs, optimizer="sgd", lr=0.01,
                          checkpoint=out / f"finetune_{name}.pt", seed=0)
        rep = dg.prune.prune_report(model, pruned, x1, test_loader=test, latency=False)
        results[name] = {"removed": choice.layers, "acc_pruned": acc_cut,
                         "acc_finetuned": rep["acc_after"],
                         "params_reduction": rep["params_reduction"],
                         "flops_reduction": rep["flops_reduction"]}
        print(f"{name:16s} removed {choice.layers}: acc {acc_cut:.4f} straight after pruning, "
              f"{rep['acc_after']:.4f} after fine-tuning; params -{rep['params_reduction']:.1%}, "
              f"FLOPs -{rep['flops_reduction']:.1%}")
    rand = [results[f"random{s}"]["acc_finetuned"] for s in (0, 1, 2)]
    print(f"random removal: {statistics.fmean(rand):.4f} ± {statistics.stdev(rand):.4f} "
          f"(3 seeds); modularity {results['modularity']['acc_finetuned']:.4f}; "
          f"least redundant {results['least_redundant']['acc_finetuned']:.4f}")
    (out / "example_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
