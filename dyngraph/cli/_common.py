"""Arguments and steps shared by the subcommands."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Tuple

import torch
from torch import nn


def add_common(p: argparse.ArgumentParser) -> None:
    """--example/--model/--data/--out/--seed/--quiet."""
    src = p.add_argument_group("model and data")
    src.add_argument("--example", default="digits", choices=["digits", "mnist1d"],
                     help="bundled dataset, no download: digits (scikit-learn) or mnist1d "
                          "(generated locally by the mnist1d package)")
    from ..zoo._models import ARCHITECTURES
    archs = sorted({a for per_example in ARCHITECTURES.values() for a in per_example})
    src.add_argument("--arch", default="cnn", choices=archs,
                     help="reference architecture for --example (default: cnn)")
    src.add_argument("--model", default=None,
                     help="a model file of your own: a whole pickled nn.Module (torch.save(model)) "
                          "or a TorchScript file; replaces --arch")
    src.add_argument("--data", default=None,
                     help="an ImageFolder tree (root/<class>/<image>) of your own, e.g. CIFAR-10; "
                          "replaces --example")
    src.add_argument("--image-size", type=int, default=32, help="image size for --data")
    src.add_argument("--epochs", type=int, default=40,
                     help="training epochs when training is needed")
    src.add_argument("--untrained", action="store_true",
                     help="use the architecture with its random initial weights (the baseline)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of model initialisation, training, sampling and permutations")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to run the model and the graphs (cpu, cuda, cuda:1, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def get_loaders(args) -> Tuple[object, object, int]:
    from ..zoo._data import example_loaders, image_folder_loaders
    if args.data:
        return image_folder_loaders(args.data, image_size=args.image_size)
    train, test = example_loaders(args.example, seed=args.seed)
    return train, test, 10


def get_model(args, train_loader, test_loader, num_classes: int) -> Tuple[nn.Module, dict]:
    """The user's model file, or the reference architecture trained once and cached in --out."""
    from ..prune import evaluate
    from ..zoo._models import build_model, train_cached
    device = torch.device(args.device)
    if args.model:
        if not os.path.exists(args.model):
            raise FileNotFoundError(f"--model {args.model!r} does not exist")
        try:  # a pickled nn.Module (trusted file: the user's own model)
            model = torch.load(args.model, map_location=device, weights_only=False)
        except Exception:
            model = torch.jit.load(args.model, map_location=device)
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {args.model!r} holds {type(model).__name__}, not an "
                            f"nn.Module (save it with torch.save(model, path))")
        return model.to(device), {"source": args.model, "test_acc": evaluate(model, test_loader)}
    torch.manual_seed(args.seed)
    model = build_model(args.arch, args.example, num_classes=num_classes).to(device)
    info = {"example": args.example, "arch": args.arch, "trained": not args.untrained,
            "seed": args.seed}
    if args.untrained:
        info["test_acc"] = evaluate(model, test_loader)
        return model, info
    ckpt = Path(args.out) / f"model_{args.example}_{args.arch}_seed{args.seed}_ep{args.epochs}.pt"
    info = train_cached(model, train_loader, ckpt, args.epochs, seed=args.seed,
                        progress=not args.quiet, info=info, device=device)
    info["test_acc"] = evaluate(model, test_loader)
    return model, info


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))
