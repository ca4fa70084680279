"""``dyngraph prune``: train (or load) a deliberately over-deep network, compute its modularity
curve, remove the redundant layers, fine-tune, and compare with baselines that remove as many
layers at random, the least redundant ones, or by adjacent-layer CKA. Resumable."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .._common import (
    add_common,
    add_hf_args,
    check_positive_int_flag,
    get_model,
    hf_folder,
    print_json,
)


def register(sub) -> None:
    from ...prune import RULES, TRANSFORMER_CRITERIA
    from ...prune._study import METHODS
    p = sub.add_parser(
        "prune", help="find redundant layers on the modularity curve, prune, fine-tune, compare",
        description="Trains (or loads) a network, computes its modularity curve over the stem "
                    "and every residual block (or every conv/linear layer), removes the layers "
                    "the rule calls redundant, fine-tunes, and compares accuracy, parameters, "
                    "FLOPs and CPU latency with random / least-redundant / CKA removal of as "
                    "many layers and with the unpruned model fine-tuned the same way. Writes "
                    "prune_report.json (finished rows are skipped on a rerun), prune_table.md, "
                    "curve.json and curves.png to --out.")
    add_common(p)
    for action in p._actions:  # the over-deep reference networks are among add_common's choices
        if action.dest == "arch":
            action.help = (f"reference architecture for --example, one of {action.choices} "
                           f"(default: resnet, 12 residual blocks); with --data: resnet = CIFAR "
                           f"ResNet56")
    p.set_defaults(arch="resnet", epochs=15)
    g = p.add_argument_group("detection")
    g.add_argument("--rule", default="delta", choices=list(RULES) + ["reference"],
                   help="delta: remove layer l when Q_l - Q_(l-1) < threshold (the reference); "
                        "plateau / degradation / plateau+degradation: see docs/pruning.md")
    g.add_argument("--threshold", type=float, default=None,
                   help="rule threshold (defaults: delta 0.03 as for ResNet56, plateau 0.01, "
                        "degradation 0.0)")
    g.add_argument("--n-remove", type=int, default=None,
                   help="remove exactly this many layers, the most redundant by the rule's score")
    g.add_argument("--allow-projection", action="store_true",
                   help="also remove shape-changing layers, replacing them by projections")
    g.add_argument("--layers", nargs="+", default=None,
                   help="candidate layers (default: dg.default_layers: stem + residual blocks, "
                        "or every conv / linear layer)")
    c = p.add_argument_group("curve")
    c.add_argument("--k", type=int, default=3, help="neighbours per sample (reference: 3)")
    c.add_argument("--per-class", type=int, default=50, help="samples per class in each graph")
    c.add_argument("--pool-per-class", type=int, default=100,
                   help="samples per class extracted once; each repeat draws --per-class of them")
    c.add_argument("--repeats", type=int, default=5, help="graphs per layer (mean ± std)")
    c.add_argument("--curve-split", default="train", choices=["train", "test"],
                   help="data for the curve (default train: the test set plays no part in the "
                        "choice of layers)")
    f = p.add_argument_group("fine-tuning and baselines")
    f.add_argument("--finetune-epochs", type=int, default=8)
    f.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    f.add_argument("--lr", type=float, default=None, help="default: 0.01 (SGD), 1e-3 (AdamW)")
    f.add_argument("--weight-decay", type=float, default=5e-4)
    f.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    f.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2])
    f.add_argument("--no-control", action="store_true",
                   help="skip fine-tuning the unpruned model as a control")
    f.add_argument("--batch-size", type=int, default=128, help="training batch size (--example)")
    f.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    h = p.add_argument_group(
        "transformers (--hf): depth pruning of a stack's blocks",
        "Every criterion at every budget in one report (transformer_prune.json / .md): blocks "
        "chosen by Block Influence, angular distance, adjacent CKA, modularity (needs labels), "
        "reverse order or at random (--random-seeds), removed with the config and KV-cache "
        "indices kept right, healed the same way, evaluated by perplexity (--task lm) or "
        "accuracy (--task classify) on held-out text, with parameters, FLOPs and latency.")
    add_hf_args(h)
    h.add_argument("--eval-text", default=None, metavar="FILE",
                   help="held-out texts for the evaluation (default: a seeded 10%% of --text, "
                        "kept out of the criteria and the healing)")
    h.add_argument("--task", default="lm", choices=["lm", "classify"],
                   help="lm: a causal LM, perplexity; classify: a sequence classifier, accuracy")
    h.add_argument("--criteria", nargs="+", default=list(TRANSFORMER_CRITERIA),
                   choices=list(TRANSFORMER_CRITERIA))
    h.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5],
                   help="fractions of the blocks to remove")
    h.add_argument("--heal", default="partial", choices=["partial", "all", "none"],
                   help="partial: fine-tune the last kept blocks and the head (Lu et al. 2026)")
    h.add_argument("--heal-steps", type=int, default=100)
    h.add_argument("--heal-lr", type=float, default=1e-4)
    h.add_argument("--heal-last-k", type=int, default=None,
                   help="kept blocks fine-tuned by --heal partial (default: 1)")
    h.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="dtype the --hf folder is loaded in (default: its own)")
    p.set_defaults(func=run)


def _texts(path: str, args: argparse.Namespace):
    """Texts (and labels when the file has them) of a --text / --eval-text file: .csv/.tsv/.jsonl
    via the text and label columns, or a .txt file of blank-line separated documents."""
    from ...zoo import text_file_dataset
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text file {path!r} does not exist")
    if p.suffix.lower() == ".txt":
        docs = [d.strip() for d in p.read_text(encoding="utf-8").split("\n\n") if d.strip()]
        if not docs:
            raise ValueError(f"text file {path!r} holds no text")
        return docs, None
    try:
        ds = text_file_dataset(p, args.text_column, args.label_column)
        return list(ds.texts), ds.labels.tolist()
    except ValueError as exc:
        if "label_column" not in str(exc):
            raise
        ds = text_file_dataset(p, args.text_column, args.text_column)  # no labels: LM texts
        return list(ds.texts), None


def run_hf(args: argparse.Namespace) -> int:
    """``dyngraph prune --hf MODEL_DIR --text FILE``: the transformer depth-pruning study."""
    from ...prune import transformer_prune_study
    if args.text is None:
        raise ValueError("--hf needs --text FILE: the calibration (and healing) texts")
    folder = hf_folder(args, Path(args.hf))
    check_positive_int_flag(args.heal_steps, "--heal-steps")
    check_positive_int_flag(args.max_length, "--max-length")
    if args.heal_last_k is not None:
        check_positive_int_flag(args.heal_last_k, "--heal-last-k")
    for f in args.fractions:
        if not 0 < f < 1:
            raise ValueError(f"--fractions must lie in (0, 1), got {f}")
    texts, labels = _texts(args.text, args)
    if args.eval_text:
        eval_texts, eval_labels = _texts(args.eval_text, args)
        split = {"eval": str(args.eval_text)}
    else:  # a seeded 10% held out: never read by the criteria nor by the healing
        g = torch.Generator().manual_seed(args.seed)
        order = torch.randperm(len(texts), generator=g).tolist()
        n_eval = max(1, len(texts) // 10)
        if len(texts) - n_eval < 2:
            raise ValueError(f"--text {args.text!r} has {len(texts)} texts: too few to hold out "
                             f"an evaluation share (pass --eval-text)")
        held, kept = sorted(order[:n_eval]), sorted(order[n_eval:])
        eval_texts = [texts[i] for i in held]
        eval_labels = None if labels is None else [labels[i] for i in held]
        texts = [texts[i] for i in kept]
        labels = None if labels is None else [labels[i] for i in kept]
        split = {"eval": f"seeded 10% of --text ({n_eval} texts)"}
    dtype = None if args.dtype is None else getattr(torch, args.dtype)
    report = transformer_prune_study(
        folder, None, texts, args.out, labels=labels, eval_texts=eval_texts,
        eval_labels=eval_labels, criteria=args.criteria, fractions=args.fractions,
        seeds=args.random_seeds, heal=args.heal, heal_last_k=args.heal_last_k,
        heal_steps=args.heal_steps, heal_lr=args.heal_lr, control=not args.no_control,
        task=args.task, max_length=args.max_length, batch_size=min(args.batch_size, 64),
        latency=not args.no_latency, device=args.device, dtype=dtype, seed=args.seed,
        progress=not args.quiet, log=None if args.quiet else print)
    print(report["table"])
    print_json({"out": str(args.out), "split": split, "summary": report.get("summary")})
    return 0


def _loaders(args, augment: bool = True):
    from ...zoo._data import example_loaders, image_folder_loaders
    if args.data:
        return image_folder_loaders(args.data, image_size=args.image_size,
                                    batch_size=args.batch_size, eval_root=args.eval_data,
                                    normalize=args.normalize, augment=augment)
    train, test = example_loaders(args.example, batch_size=args.batch_size, seed=args.seed)
    return train, test, 10


def _model(args, train, test, num_classes):
    """``--model`` or ``--example``: the shared loader/trainer; ``--data`` alone: a CIFAR
    ResNet56 trained here and cached in ``--out``."""
    from ...prune import evaluate
    from ...zoo._models import resnet56, train_cached
    if args.model or args.weights or args.model_def or not args.data:
        return get_model(args, train, test, num_classes)
    if args.arch != "resnet":
        raise ValueError(f"--data without --model trains a CIFAR ResNet56 (--arch resnet); "
                         f"--arch {args.arch!r} is only for the bundled examples")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = resnet56(num_classes=num_classes).to(device)
    ckpt = Path(args.out) / f"model_imagefolder_resnet56_seed{args.seed}_ep{args.epochs}.pt"
    info = {"data": args.data, "arch": "resnet56", "seed": args.seed, "epochs": args.epochs}
    info = train_cached(model, train, ckpt, args.epochs, seed=args.seed, progress=not args.quiet,
                        info=info, device=device, lr=3e-3,
                        checkpoint=Path(args.out) / "train_ckpt.pt")
    info["test_acc"] = evaluate(model, test)
    return model, info


def run(args: argparse.Namespace) -> int:
    from ...prune import prune_study
    if args.hf:
        return run_hf(args)
    if args.text:
        raise ValueError("--text is read with --hf MODEL_DIR")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test, num_classes = _loaders(args)
    model, info = _model(args, train, test, num_classes)
    info["train_seconds"] = round(time.perf_counter() - t0, 1)
    curve_loader = train if args.curve_split == "train" else test
    if args.data and args.curve_split == "train":  # the curve never sees augmented images
        curve_loader = _loaders(args, augment=False)[0]
    report = prune_study(
        model, train, test, out, layers=args.layers, curve_loader=curve_loader,
        per_class=args.per_class, pool_per_class=args.pool_per_class, repeats=args.repeats,
        k=args.k, rule=args.rule, threshold=args.threshold, n_remove=args.n_remove,
        allow_projection=args.allow_projection, methods=args.methods,
        random_seeds=args.random_seeds, control=not args.no_control,
        finetune_epochs=args.finetune_epochs, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, latency=not args.no_latency, device=args.device,
        seed=args.seed, model_info=info, progress=not args.quiet,
        log=None if args.quiet else print)
    sel = report["selections"]["modularity"]
    print("\nModularity selection:")
    for r in sel["remove"]:
        print(f"  remove {r['module']}: {r['reason']}")
    for layer, why in sel["kept"].items():
        print(f"  keep   {layer}: {why}")
    print("\n" + report["table"] + "\n")
    print_json({"summary": report["summary"], "seconds": round(time.perf_counter() - t0, 1),
                "report": str(out / "prune_report.json")})
    return 0
