"""Neuron-level modularity of a small MLP and a small CNN trained on the bundled digits.

For each network (and an untrained copy as a baseline) and each graph source (weights,
activations), this script

1. builds the neuron graph and partitions it spectrally (``dg.neurons.neuron_graph``,
   ``dg.neurons.spectral_partition``);
2. compares the partition's n-cut with weight-shuffled copies (``dg.neurons.clusterability``);
3. lesions every cluster ∩ layer group and compares the accuracy drop with random same-size
   groups (``dg.neurons.lesion_importance``), and scores its coherence (label entropy of the top
   inputs, pixel correlation, feature visualisation) against random groups
   (``dg.neurons.coherence``).

It prints one markdown row per (network, source) and writes each report under ``--out``
(``report.save``: JSON, CSV, the ``dg.plot`` figure and ``dg.log`` TensorBoard events). Finished
reports are reused on a rerun. A few minutes on one CPU core:

    python examples/neuron_modularity.py --out runs/neurons

A quick smoke run (seconds): ``--archs mlp --sources weights --epochs 1 --shuffles 2
--random-groups 19 --no-untrained``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dyngraph as dg


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def get_model(arch: str, train, test, epochs: int, seed: int, out: Path, trained: bool):
    torch.manual_seed(seed)
    model = dg.zoo.DigitsMLP(depth=4, width=64) if arch == "mlp" else dg.zoo.DigitsCNN()
    if not trained:
        return model, dg.prune.evaluate(model, test)
    dg.zoo.train_cached(model, train, out / f"model_{arch}_seed{seed}_ep{epochs}.pt", epochs,
                        seed=seed, progress=False)
    return model, dg.prune.evaluate(model, test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/neuron_modularity")
    p.add_argument("--archs", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--sources", nargs="+", default=["weights", "activations"],
                   choices=["weights", "activations"])
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--shuffles", type=int, default=50)
    p.add_argument("--random-groups", type=int, default=99)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-untrained", action="store_true", help="skip the untrained baselines")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = dg.zoo.example_loaders("digits", seed=args.seed)
    rows = []
    for arch in args.archs:
        for trained in ([True] if args.no_untrained else [True, False]):
            model, acc = get_model(arch, train, test, args.epochs, args.seed, out, trained)
            for source in args.sources:
                tag = f"{arch}_{'trained' if trained else 'untrained'}_{source}"
                done = out / tag / "summary.json"
                if done.exists():  # a finished report: reuse it
                    rows.append(json.loads(done.read_text()))
                    continue
                t0 = time.perf_counter()
                # At chance accuracy lesions cannot drop anything: untrained copies only get the
                # clusterability test.
                rep = dg.neurons.neuron_report(
                    model, test, n_clusters=args.clusters, source=source,
                    n_shuffles=args.shuffles, n_random=args.random_groups if trained else 0,
                    methods=("labels", "pixels", "feature_vis"), seed=args.seed,
                    checkpoint=out / f"{tag}_shuffles.json", progress=not args.quiet)
                rep.meta["test_acc"] = acc
                rep.save(out / tag)
                s = rep.summary()
                s.update({"tag": tag, "arch": arch, "trained": trained, "test_acc": acc,
                          "seconds": round(time.perf_counter() - t0, 1)})
                write_json(done, s)
                rows.append(s)
    head = ("| network | acc | source | nodes (removed) | n-cut | shuffled | p | z | groups | "
            "important | imp. for a class | coherent: labels | pixels | feat. vis | "
            "imp. & coh. | s |")
    print("Counts: Benjamini-Hochberg q <= 0.05 (raw p <= 0.05 in brackets).")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))

    for s in rows:
        net = f"{s['arch']} {'trained' if s['trained'] else 'untrained'}"
        n = s.get("n_groups", "-") if "n_important" in s else "-"
        both = s.get("n_important_and_coherent", "-")
        imp = f"{s['n_important']} ({s['n_important_nominal']})" if "n_important" in s else "-"
        imp_c = (f"{s['n_important_class']} ({s['n_important_class_nominal']})"
                 if "n_important" in s else "-")
        coh = [f"{s[f'n_coherent_{m}']} ({s[f'n_coherent_{m}_nominal']})"
               if f"n_coherent_{m}" in s else "-" for m in ("labels", "pixels", "feature_vis")]
        print(f"| {net} | {s['test_acc']:.3f} | {s['source']} | {s['n_nodes']} ({s['n_removed']}) "
              f"| {s['ncut']:.3f} | {s['ncut_shuffled_mean']:.3f} ± {s['ncut_shuffled_std']:.3f} "
              f"| {s['clusterability_p']:.3f} | {s['clusterability_z']:.2f} | {n} | {imp} "
              f"| {imp_c} | {coh[0]} | {coh[1]} | {coh[2]} | {both} | {s['seconds']} |")
    write_json(out / "summary.json", rows)


if __name__ == "__main__":
    main()
