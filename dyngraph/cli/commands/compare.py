"""``dyngraph compare``: layer × layer similarity between two or more models.

Models are model files (``--models a.pt b.pt``) and/or reference architectures trained on the
bundled data (``--archs cnn mlp``, one per ``--seeds`` value, checkpoints cached in ``--out`` so a
rerun does not retrain; ``--include-untrained`` adds each architecture with its random initial
weights). Writes ``report.json`` (matrices, p-values, summary, checks, settings), ``table.csv``
(tidy), heatmaps under ``figures/`` and TensorBoard events under ``tensorboard/``.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .._common import add_data_args, add_layers_arg, cli_layers, get_loaders, get_model, print_json


def register(sub: Any) -> None:
    from ...compare._compare import COMPARE_MEASURES, DEFAULT_MEASURES
    p = sub.add_parser("compare", help="layer × layer similarity between two or more models",
                       description=__doc__.splitlines()[0] + " Writes report.json, table.csv, "
                       "figures/*.png and TensorBoard events.")
    src = p.add_argument_group("models and data")
    src.add_argument("--example", default="digits", choices=["digits"],
                     help="bundled dataset (ships with scikit-learn; no download)")
    src.add_argument("--data", default=None,
                     help="an ImageFolder tree of your own (replaces --example; use --models)")
    add_data_args(src)
    src.add_argument("--models", nargs="+", default=[], metavar="FILE",
                     help="model files: state_dicts of --model-def (read with weights_only=True), "
                          "or whole pickled nn.Modules with --trust-pickle")
    src.add_argument("--model-def", default=None, metavar="FILE.py:Name|module:Name",
                     help="the class of the --models files' state_dicts")
    src.add_argument("--model-args", default="{}", metavar="JSON",
                     help="keyword arguments of --model-def, as a JSON object")
    src.add_argument("--trust-pickle", action="store_true",
                     help="allow --models to be whole pickled nn.Modules: unpickling runs code "
                          "from the files, so only use it for files you trust")
    src.add_argument("--archs", nargs="+", default=[], choices=["cnn", "mlp"],
                     help="reference architectures trained on --example (one per seed)")
    src.add_argument("--seeds", nargs="+", type=int, default=None,
                     help="training seeds for --archs (default: --seed); two seeds of one "
                          "architecture test seed-to-seed agreement")
    src.add_argument("--include-untrained", action="store_true",
                     help="also compare each --archs architecture with random initial weights")
    src.add_argument("--epochs", type=int, default=40, help="training epochs for --archs")
    g = p.add_argument_group("measures")
    g.add_argument("--measures", nargs="+", default=list(DEFAULT_MEASURES),
                   choices=list(COMPARE_MEASURES))
    g.add_argument("--k", type=int, default=10, help="neighbours for the kNN measures")
    g.add_argument("--modularity-k", type=int, default=3,
                   help="snapshot k for the modularity distance (reference: 3)")
    g.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    g.add_argument("--per-class", type=int, default=None,
                   help="samples per class (default: the whole test split)")
    g.add_argument("--permutations", type=int, default=0,
                   help="permutation-null p-values per cell (0: none)")
    add_layers_arg(g)
    g.add_argument("--point", default="pre", choices=["pre", "post"],
                   help="hook points: layer outputs or after the activation")
    g.add_argument("--pool", default=None, choices=["avg", "max"],
                   help="pool feature maps instead of flattening them")
    g.add_argument("--no-within", action="store_true",
                   help="skip each model against itself")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="data split and sampling seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run the models (cpu, cuda, cuda:1, ...)")
    p.add_argument("--force", action="store_true", help="recompute even if report.json matches")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _config(args) -> Dict[str, Any]:
    keys = ("example", "data", "image_size", "models", "archs", "seeds", "include_untrained",
            "epochs", "measures", "k", "modularity_k", "metric", "per_class", "permutations",
            "point", "pool", "no_within", "seed", "layers", "model_def", "model_args",
            "eval_data", "normalize")
    cfg = {k: getattr(args, k) for k in keys}
    cfg["models"] = [(m, Path(m).stat().st_mtime if Path(m).exists() else None)
                     for m in args.models]
    return cfg


def _load_models(args, train, test, num_classes) -> Tuple[Dict[str, torch.nn.Module],
                                                          Dict[str, Dict[str, Any]]]:
    models, infos = {}, {}
    for path in args.models:
        ns = copy.copy(args)
        ns.model, ns.untrained, ns.model_flag = path, False, "--models"
        model, info = get_model(ns, train, test, num_classes)
        name = Path(path).stem
        while name in models:
            name += "_"
        models[name], infos[name] = model, {**info, "kind": "file"}
    seeds = args.seeds if args.seeds is not None else [args.seed]
    runs = [(s, False) for s in seeds] + ([(seeds[0], True)] if args.include_untrained else [])
    for arch in args.archs:
        for s, untrained in runs:
            ns = copy.copy(args)
            ns.model, ns.model_def, ns.arch, ns.seed, ns.untrained = None, None, arch, s, untrained
            model, info = get_model(ns, train, test, num_classes)
            name = f"{arch}-untrained" if untrained else f"{arch}-seed{s}"
            models[name], infos[name] = model, {**info, "kind": "reference", "arch": arch,
                                                "seed": s, "trained": not untrained}
    return models, infos


def checks(result: Any, infos: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Sanity checks of a comparison of reference models: seed-to-seed agreement of matching
    layers, and trained vs untrained separation, for every measure."""
    out: Dict[str, Any] = {"same_architecture_seeds": [], "trained_vs_untrained": []}
    ref = {n: i for n, i in infos.items() if i.get("kind") == "reference"}
    for measure in result.measures:
        higher = result.higher_is_similar(measure)
        for a, b in combinations(result.names, 2):
            ia, ib = ref.get(a), ref.get(b)
            if not (ia and ib and ia["arch"] == ib["arch"] and ia["trained"] and ib["trained"]):
                continue
            c = result.matrix(a, b).diagonal_contrast(measure)
            out["same_architecture_seeds"].append({
                "measure": measure, "pair": [a, b], **c,
                "diagonal_more_similar": _more_similar(c["diagonal_mean"],
                                                       c["off_diagonal_mean"], higher)})
        for arch in sorted({i["arch"] for i in ref.values()}):
            trained = [n for n, i in ref.items() if i["arch"] == arch and i["trained"]]
            untrained = [n for n, i in ref.items() if i["arch"] == arch and not i["trained"]]
            if len(trained) < 2 or not untrained:
                continue
            tt = [float(result.matrix(a, b)[measure].diagonal().mean())
                  for a, b in combinations(trained, 2)]
            tu = [float(result.matrix(a, u)[measure].diagonal().mean())
                  for a in trained for u in untrained]
            s_tt, s_tu = sum(tt) / len(tt), sum(tu) / len(tu)
            out["trained_vs_untrained"].append({
                "measure": measure, "architecture": arch,
                "trained_vs_trained_diagonal": s_tt, "trained_vs_untrained_diagonal": s_tu,
                "told_apart": _more_similar(s_tt, s_tu, higher)})
    return out


def _more_similar(a: float, b: float, higher: bool) -> bool:
    """Whether value ``a`` means more similar than ``b`` (``higher``: larger is more similar)."""
    return a > b if higher else a < b


def _write_figures(result: Any, out_dir: Path, per_pair: Optional[bool] = None) -> Dict[str, Path]:
    """Writes through ``dg.plot``: one grid per measure (``grid_<measure>.png``), one annotated
    heatmap per (measure, pair of different models) when there are at most 6 such pairs (or
    ``per_pair``), and each free per-model profile metric overlaid (``curve_<metric>.png``)."""
    from ...outputs import plot
    from ...outputs._figures_similarity import safe_name
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: Dict[str, Path] = {}
    between = [(a, b) for (a, b) in result.matrices if a != b]
    if per_pair is None:
        per_pair = len(between) <= 6
    for measure in result.measures:
        paths[f"grid_{measure}"] = out_dir / f"grid_{measure}.png"
        plot(result, paths[f"grid_{measure}"], metric=measure)
        for a, b in between if per_pair else []:
            key = f"{measure}__{safe_name(a)}__vs__{safe_name(b)}"
            paths[key] = out_dir / f"{key}.png"
            plot(result, paths[key], metric=measure, pair=(a, b))
    metrics = sorted({m for p in result.profiles.values() for m in p.metrics})
    for metric in metrics:
        have = [n for n in result.names if n in result.profiles
                and metric in result.profiles[n].metrics]
        paths[f"curve_{metric}"] = out_dir / f"curve_{metric}.png"
        plot([result.profiles[n] for n in have], paths[f"curve_{metric}"], metrics=[metric],
             labels=have, title=f"{metric} per model")
    return paths


def run(args: argparse.Namespace) -> int:
    from torch.utils.tensorboard import SummaryWriter

    from ...compare import compare_models
    from ...outputs import log
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_models = len(args.models) + len(args.archs) * (len(args.seeds or [args.seed])
                                                     + int(args.include_untrained))
    if n_models < 2:
        raise ValueError(f"compare needs two or more models; got {len(args.models)} --models and "
                         f"--archs {args.archs} x {len(args.seeds or [args.seed])} seed(s)"
                         f"{' + untrained' if args.include_untrained else ''}")
    if args.data and args.archs:
        raise ValueError("--archs trains reference models on --example; with --data pass your "
                         "own --models")
    for m in args.models:
        if not Path(m).exists():
            raise FileNotFoundError(f"--models: {m!r} does not exist")
    cfg = _config(args)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    report = out / "report.json"
    if report.exists() and not args.force:
        try:
            old = json.loads(report.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("meta", {}).get("config_hash") == digest:
            print_json({"reused": str(report), "checks": old.get("checks"),
                        "summary": _short(old.get("summary", {}))})
            return 0
    t0 = time.perf_counter()
    train, test, num_classes = get_loaders(args)
    models, infos = _load_models(args, train, test, num_classes)
    layers = {n: cli_layers(m, args.layers, args.point) for n, m in models.items()}
    result = compare_models(models, test, measures=args.measures, layers=layers,
                            per_class=args.per_class, seed=args.seed, k=args.k,
                            modularity_k=args.modularity_k, metric=args.metric,
                            permutations=args.permutations, within=not args.no_within,
                            pool=args.pool, device=args.device, info=infos,
                            progress=not args.quiet)
    result.meta.update({"config": cfg, "config_hash": digest, "point": args.point,
                        "seconds_total": round(time.perf_counter() - t0, 2),
                        "threads": torch.get_num_threads()})
    chk = checks(result, infos)
    d = {**result.to_dict(), "checks": chk}
    from ..._io import atomic_write_json
    result.to_csv(out / "table.csv")
    figs = _write_figures(result, out / "figures")
    with SummaryWriter(str(out / "tensorboard")) as writer:
        log(writer, result, prefix="dyngraph/compare")
    d["figures"] = {k: str(v) for k, v in figs.items()}
    atomic_write_json(report, d)           # written last: its presence marks a finished run
    print_json({"models": {n: {"test_acc": i.get("test_acc"), "layers": len(layers[n])}
                           for n, i in infos.items()},
                "n_samples": result.meta["n_samples"], "checks": chk,
                "summary": _short(d["summary"]), "out": str(out)})
    return 0


def _short(summary: Dict[str, Any]) -> Dict[str, Any]:
    """The between-model rows of the summary, rounded."""
    out: Dict[str, Any] = {}
    for measure, pairs in summary.items():
        for pair, row in pairs.items():
            a, b = pair.split("|")
            if a == b:
                continue
            out.setdefault(measure, {})[pair] = {k: (round(v, 4) if isinstance(v, float) else v)
                                                 for k, v in row.items()}
    return out
