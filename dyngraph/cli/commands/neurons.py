"""``dyngraph neurons``: neuron-level modularity of a model (spectral partition of its neurons, the
shuffle test, lesion importance and coherence of each cluster ∩ layer group), written by
``NeuronReport.save`` (JSON, CSV, markdown, ``dg.plot`` figure, ``dg.log`` TensorBoard events)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from .._common import add_common, add_layers_arg, cli_layers, get_loaders, get_model, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("neurons", help="spectral partition of a network's neurons, with "
                                       "clusterability, importance and coherence tests",
                       description="Build the neuron graph (weights or activation correlations), "
                                   "partition it spectrally, compare its n-cut with "
                                   "weight-shuffled copies, and test each cluster-layer group for "
                                   "importance (lesions) and coherence against random groups. "
                                   "Writes report.json, groups.csv, groups.md, partition.png and "
                                   "TensorBoard events.")
    add_common(p)
    g = p.add_argument_group("neurons")
    g.add_argument("--source", default="weights", choices=["weights", "activations"],
                   help="edges from |weights| or from squared Spearman correlations")
    g.add_argument("--clusters", type=int, default=8, help="clusters of the spectral partition")
    g.add_argument("--norm", default="l1", choices=["l1", "max_col_sum", "l2"],
                   help="reduction of a conv kernel to one edge weight")
    g.add_argument("--shuffles", type=int, default=20,
                   help="weight-shuffled copies for the clusterability test (0: skip)")
    g.add_argument("--shuffle", default="all", choices=["all", "nonzero"],
                   help="permute all weights of a layer, or only the non-zero ones")
    g.add_argument("--random-groups", type=int, default=99,
                   help="random same-size groups per group (>= 19; 0 skips the group tests)")
    g.add_argument("--coherence", nargs="*", default=["labels", "pixels"],
                   choices=["labels", "pixels", "feature_vis"], help="coherence methods")
    g.add_argument("--top-k", type=int, default=20, help="top-activating inputs per group")
    g.add_argument("--alpha", type=float, default=0.05, help="Benjamini-Hochberg level")
    g.add_argument("--include-output", action="store_true", help="add the logits as a layer")
    g.add_argument("--dead-from-data", action="store_true",
                   help="with --source weights, also remove neurons constant over the data")
    add_layers_arg(g, what="the Linear/Conv layers whose output neurons become nodes (default: "
                           "every one but the last)")
    g.add_argument("--point", default="post", choices=["pre", "post"],
                   help="with --source activations: neuron values after the activation module "
                        "or before it (the layer's or its BatchNorm's output)")
    p.set_defaults(func=run, _flag_aliases={
        "n_clusters": "--clusters", "n_shuffles": "--shuffles", "n_random": "--random-groups"})


def run(args: argparse.Namespace) -> int:
    from ...neurons import neuron_report
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test, num_classes = get_loaders(args)
    model, info = get_model(args, train, test, num_classes)
    gkw = {"norm": args.norm, "include_output": args.include_output, "point": args.point}
    if args.layers and args.layers != ["default"]:
        gkw["layers"] = cli_layers(model, args.layers, args.point)
    ckpt = out / (f"shuffles_{args.source}_k{args.clusters}_{args.shuffle}_seed{args.seed}.json")
    report = neuron_report(model, test, n_clusters=args.clusters, source=args.source,
                           n_shuffles=args.shuffles, n_random=args.random_groups,
                           methods=tuple(args.coherence), seed=args.seed, alpha=args.alpha,
                           graph_kwargs=gkw, dead_from_data=args.dead_from_data,
                           top_k=args.top_k, checkpoint=ckpt if args.shuffles else None,
                           device=args.device, progress=not args.quiet)
    report.meta.update({"model": info, "seconds_total": round(time.perf_counter() - t0, 2),
                        "threads": torch.get_num_threads()})
    paths = report.save(out)
    summary = report.summary()
    keep = ("source", "n_nodes", "n_removed", "n_clusters", "ncut", "ncut_shuffled_mean",
            "ncut_shuffled_std", "clusterability_p", "clusterability_z", "n_groups",
            "n_important", "n_important_class", "n_coherent", "n_important_and_coherent")
    print_json({**{k: summary[k] for k in keep if k in summary},
                "test_acc": info.get("test_acc"), "out": str(out), "files": paths})
    return 0
