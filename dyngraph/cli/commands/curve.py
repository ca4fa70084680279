"""``dyngraph curve``: the modularity profile of a model on a dataset, with TensorBoard and PNG."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict

import torch

from .._common import (
    add_common,
    add_hf_args,
    add_layers_arg,
    cli_layers,
    get_loaders,
    get_model,
    hf_model_and_text,
    print_json,
)


def register(sub) -> None:
    p = sub.add_parser("curve", help="modularity curve over depth (labels as communities)",
                       description="Extract each layer's representations, build kNN snapshots "
                                   "and write the modularity curve (curve.json, curve.csv, "
                                   "curve.png, TensorBoard events).")
    add_common(p)
    add_hf_args(p.add_argument_group("transformers and text"))
    g = p.add_argument_group("graph")
    g.add_argument("--k", type=int, default=3, help="neighbours per sample (reference: 3)")
    g.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    g.add_argument("--symmetrize", default="mean", choices=["mean", "max", "add", "mutual"])
    g.add_argument("--per-class", type=int, default=50, help="samples per class in each repeat")
    g.add_argument("--repeats", type=int, default=5, help="resamplings for mean ± std")
    g.add_argument("--null", type=int, default=100, metavar="P",
                   help="label permutations per repeat for the chance level of Q and the z-score "
                        "of every layer (0: skip)")
    add_layers_arg(g)
    g.add_argument("--spill-dir", default=None,
                   help="append each layer's features to files here while extracting (memory "
                        "bounded by a batch, not by samples × features)")
    g.add_argument("--point", default="pre", choices=["pre", "post"],
                   help="hook points: layer outputs (pre-activation) or after the activation")
    g.add_argument("--pool", default=None, choices=["avg", "max", "mean", "cls", "last", "tokens"],
                   help="conv maps: flatten them (the reference, default), or 'avg'/'max' pool "
                        "them; token sequences (--hf): 'mean' over the real tokens (the default "
                        "with --hf), the first ('cls') or last real token, or every real token "
                        "as a sample ('tokens', --per-class tokens per class)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader, Subset
    from torch.utils.tensorboard import SummaryWriter

    from ..._validate import check_positive_int
    from ...capture import balanced_indices, extract_features
    from ...capture._extract import dataset_labels
    from ...graphs import GraphSpec
    from ...outputs import log, plot
    from ...profiles import depth_profile
    # Check the cheap arguments before any training starts.
    for name in ("k", "per_class", "repeats", "epochs"):
        check_positive_int(getattr(args, name), name)
    if args.null < 0:
        raise ValueError(f"--null must be >= 0, got {args.null}")
    spec = GraphSpec(k=args.k, metric=args.metric, symmetrize=args.symmetrize)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.hf:
        model, test, info = hf_model_and_text(args)
        args.pool = args.pool or "mean"
    else:
        if args.text or args.languages:
            raise ValueError("--text is read with --hf MODEL_DIR")
        if args.pool in ("mean", "cls", "last", "tokens"):
            raise ValueError(f"--pool {args.pool} pools token sequences: use it with --hf")
        train, test, num_classes = get_loaders(args)
        model, info = get_model(args, train, test, num_classes)
    layers = cli_layers(model, args.layers, args.point)
    extract = dict(layers=layers, seed=args.seed, pool=args.pool, device=args.device,
                   spill_dir=args.spill_dir, progress=not args.quiet)
    profile = dict(graph=spec, seed=args.seed, null_permutations=args.null,
                   progress=not args.quiet)
    labels = dataset_labels(getattr(test, "dataset", None))
    if labels is not None and args.pool != "tokens":
        # sample first: only the rows that some repeat uses run the model
        draws = [balanced_indices(labels, args.per_class, None, args.seed + r)
                 for r in range(args.repeats)]
        used = torch.unique(torch.cat(draws))
        loader = DataLoader(Subset(test.dataset, used.tolist()), batch_size=test.batch_size or 64,
                            shuffle=False, num_workers=test.num_workers,
                            collate_fn=test.collate_fn)
        feats = extract_features(model, loader, **extract)
        prof = depth_profile(feats, ["modularity"], samples=[torch.searchsorted(used, d)
                                                             for d in draws], **profile)
        prof.meta["extracted"] = {"rows": int(used.numel()), "of": int(labels.numel())}
    else:
        feats = extract_features(model, test, **extract)
        prof = depth_profile(feats, ["modularity"], per_class=args.per_class,
                             repeats=args.repeats, **profile)
    feats.close()  # the spill folder extract_features made inside --spill-dir, and only it
    label = "untrained" if args.untrained else "trained"
    data = getattr(getattr(test, "dataset", None), "dyngraph_data", None)
    prof.meta.update({"label": label, "model": info, "point": args.point, "data": data,
                      "per_class": args.per_class,
                      "threads": torch.get_num_threads(),
                      "seconds": round(time.perf_counter() - t0, 2)})
    prof.to_json(out / "curve.json")
    prof.to_csv(out / "curve.csv")
    title = (f"{label}: modularity, k={spec.k} {spec.metric}, {args.per_class}/class, "
             f"{args.repeats} repeats" + (f", null of {args.null} permutations" if args.null
                                          else ""))
    plot(prof, out / "curve.png", metrics=["modularity"], labels=[label], title=title,
         ylim_from_zero=True)
    with SummaryWriter(str(out / "tensorboard")) as writer:
        log(writer, prof, prefix="dyngraph")
    q = prof["modularity"]
    summary: Dict[str, Any] = {
        "layers": prof.layers, "modularity": [round(v, 4) for v in q.values.tolist()],
        "std": [round(v, 4) for v in q.errors.tolist()]}
    if args.null:
        summary["null_mean"] = [round(v, 4) for v in prof["modularity:null_mean"].values.tolist()]
        summary["zscore"] = [round(v, 1) for v in prof["modularity:z"].values.tolist()]
    summary.update({"test_acc": info.get("test_acc"), "out": str(out)})
    print_json(summary)
    return 0
