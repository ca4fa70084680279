"""Arguments and steps shared by the subcommands."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

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
    add_model_args(src)
    src.add_argument("--data", "--train-data", dest="data", default=None,
                     help="your images, replacing --example: a root holding train/ and val/ (or "
                          "test/) class folders, or the training ImageFolder (root/<class>/"
                          "<image>) itself, with the held-out one found beside it or given as "
                          "--eval-data")
    add_data_args(src)
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


def add_layers_arg(group: Any, what: str = "layers to hook") -> None:
    """--layers: names, a module type, or the default preset."""
    group.add_argument("--layers", nargs="+", default=None, metavar="LAYER",
                       help=f"{what}: module names (see dg.list_layers(model); 'name:input' for "
                            f"a module's input), a module type such as Conv2d or Linear, or "
                            f"'default' (the reference preset; with --point)")


def cli_layers(model: nn.Module, layers: Optional[List[str]], point: str) -> List[str]:
    """The layer names that --layers and --point choose in ``model``."""
    from ..capture._layers import default_layers, list_layers, resolve_layers
    if not layers or layers == ["default"]:
        return default_layers(model, point=point)
    if len(layers) == 1 and isinstance(getattr(nn, layers[0], None), type) and \
            issubclass(getattr(nn, layers[0]), nn.Module):
        found = list_layers(model, getattr(nn, layers[0]))
        if not found:
            raise ValueError(f"--layers {layers[0]}: the model has no {layers[0]} module")
        return found
    try:
        return list(resolve_layers(model, list(layers)))
    except ValueError as exc:
        raise ValueError(f"--layers: {exc}") from None


def add_hf_args(group: Any) -> None:
    """--hf / --text / --text-column / --label-column / --languages / --max-length: a Hugging
    Face model folder and labelled text, offline."""
    group.add_argument("--hf", default=None, metavar="MODEL_DIR",
                       help="a local Hugging Face model folder (config.json + weights), loaded "
                            "offline with AutoModel.from_pretrained and no remote code; "
                            "'minilm' is the bundled all-MiniLM-L6-v2. Replaces --example/--model")
    group.add_argument("--text", default=None, metavar="FILE|wordfreq",
                       help="labelled text for --hf: a .csv/.tsv/.jsonl file (see --text-column, "
                            "--label-column), or 'wordfreq' (words of --languages, the language "
                            "as the label)")
    group.add_argument("--text-column", default="text", help="the text column of --text FILE")
    group.add_argument("--label-column", default="label", help="the label column of --text FILE")
    group.add_argument("--languages", nargs="+", default=None, metavar="LANG",
                       help="languages of --text wordfreq (default: en de fr es it nl pt pl)")
    group.add_argument("--max-length", type=int, default=128,
                       help="texts are truncated to this many tokens")


def hf_model_and_text(args: Any) -> Tuple[nn.Module, Any, dict]:
    """The --hf model (or its seeded random-init twin with --untrained) and a loader of the --text
    data, tokenized with the model's own tokenizer and padded per batch."""
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("--hf needs transformers: pip install 'dyngraph[hf]'")
    from ..zoo import minilm_path, text_file_dataset, text_loader, wordfreq_words
    check_positive_int_flag(args.max_length, "--max-length")
    if args.text is None:
        raise ValueError("--hf needs --text FILE (or --text wordfreq): the labelled texts")
    if args.text == "wordfreq":
        from ..zoo import DEFAULT_LANGUAGES
        langs = args.languages or list(DEFAULT_LANGUAGES)
        data = wordfreq_words(langs, per_class=max(80, args.per_class), seed=args.seed)
        source = {"text": "wordfreq", "languages": langs}
    else:
        if args.languages:
            raise ValueError("--languages is for --text wordfreq")
        data = text_file_dataset(args.text, args.text_column, args.label_column)
        source = {"text": str(args.text), "classes": data.classes}
    folder = hf_folder(args, minilm_path() if args.hf == "minilm" else Path(args.hf))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:  # GPT-2-style tokenizers have none: pad with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    if args.untrained:
        torch.manual_seed(args.seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    else:
        model = AutoModel.from_pretrained(folder, trust_remote_code=False)
    model = model.to(torch.device(args.device)).eval()
    loader = text_loader(data, tokenizer, batch_size=32, max_length=args.max_length)
    info = {"hf": str(folder), "class": type(model).__name__, "trained": not args.untrained,
            "seed": args.seed, "test_acc": None, **source}
    return model, loader, info


def hf_folder(args: Any, folder: Path) -> Path:
    """``folder``, the --hf model folder, once it is known to hold a config.json."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--hf {args.hf!r}: no config.json in {str(folder)!r} (pass a "
                                f"local Hugging Face model folder)")
    return folder


def check_positive_int_flag(value: Any, flag: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    return value


def add_data_args(group: Any) -> None:
    """--image-size / --eval-data / --normalize for --data."""
    group.add_argument("--image-size", type=int, default=32, help="image size for --data")
    group.add_argument("--eval-data", default=None,
                       help="the held-out ImageFolder for --data (default: found from the "
                            "layout: root/train + root/val|test, or train/ beside val|test/)")
    group.add_argument("--normalize", default="cifar10",
                       help="input normalisation for --data: cifar10, imagenet, none, or "
                            "'m1,...,mC,s1,...,sC'")


def get_loaders(args: Any) -> Tuple[Any, Any, int]:
    from ..zoo._data import example_loaders, image_folder_loaders, parse_normalize
    parse_normalize(args.normalize)  # a cheap check before anything runs
    if getattr(args, "eval_data", None) and not args.data:
        raise ValueError("--eval-data needs --data (the training images)")
    if args.data:
        return image_folder_loaders(args.data, image_size=args.image_size,
                                    eval_root=args.eval_data, normalize=args.normalize)
    train, test = example_loaders(args.example, seed=args.seed)
    return train, test, 10


def add_model_args(group: Any) -> None:
    """--model / --model-def / --model-args / --trust-pickle: the user's own model."""
    group.add_argument("--weights", default=None, metavar="FILE",
                       help="your model's weights: a state_dict file (torch.save(model."
                            "state_dict())), read with weights_only=True, for --model-def or "
                            "--arch")
    group.add_argument("--model", default=None, metavar="FILE",
                       help="a state_dict file like --weights, or a whole pickled nn.Module "
                            "(torch.save(model)), which is read only with --trust-pickle")
    group.add_argument("--model-def", default=None, metavar="FILE.py:Name|module:Name",
                       help="the model's class (or a function returning the model), from a "
                            "Python file or an importable module; replaces --arch")
    group.add_argument("--model-args", default="{}", metavar="JSON",
                       help="keyword arguments of --model-def, as a JSON object")
    group.add_argument("--trust-pickle", action="store_true",
                       help="allow --model to be a whole pickled nn.Module: unpickling runs "
                            "code from the file, so only use it for files you trust")


def _model_class(spec: str) -> Callable[..., nn.Module]:
    """``'path/to/file.py:Name'`` or ``'package.module:Name'`` → the named attribute."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"--model-def must be FILE.py:Name or module:Name, got {spec!r}")
    if where.endswith(".py"):
        if not os.path.isfile(where):
            raise FileNotFoundError(f"--model-def: no file {where!r}")
        spec_ = importlib.util.spec_from_file_location("dyngraph_user_model", where)
        if spec_ is None or spec_.loader is None:
            raise ValueError(f"--model-def: cannot import {where!r}")
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)  # its `if __name__ == "__main__":` block does not run
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ValueError(f"--model-def: cannot import module {where!r} ({exc})") from None
    if not hasattr(module, name):
        raise ValueError(f"--model-def: {where!r} defines no {name!r}")
    return getattr(module, name)


def _state_dict(obj: Any) -> Optional[Dict[str, Any]]:
    """The state_dict inside a weights file: the dict itself, or under 'model'/'state_dict'."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _torch_file(path: str) -> bool:
    """A torch.save file starts as a zip archive (the default since torch 1.6) or a pickle
    (protocol 2+ starts with 0x80; the legacy format too)."""
    if os.path.isdir(path):
        return False
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_user_model(args: Any, num_classes: int, device: torch.device) -> Tuple[nn.Module, dict]:
    """The user's model from --model-def (+ --model-args) and/or --model, safely: weights are
    read with ``weights_only=True``; a pickled module only with --trust-pickle."""
    path, flag = getattr(args, "model", None), getattr(args, "model_flag", "--model")
    if getattr(args, "weights", None):
        if path:
            raise ValueError("--weights and --model name the same thing: pass one of them")
        path, flag = args.weights, "--weights"
    model: Optional[nn.Module] = None
    if getattr(args, "model_def", None):
        try:
            kwargs = json.loads(getattr(args, "model_args", "{}") or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"--model-args must be a JSON object, got "
                             f"{args.model_args!r} ({exc})") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--model-args must be a JSON object, got {args.model_args!r}")
        torch.manual_seed(getattr(args, "seed", 0))  # a model without --model weights is seeded
        cls = _model_class(args.model_def)
        try:
            model = cls(**kwargs)
        except TypeError as exc:
            if "argument" not in str(exc):  # a TypeError from inside the user's __init__
                raise
            raise ValueError(f"--model-args {json.dumps(kwargs)!r} do not fit --model-def "
                             f"{args.model_def!r}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model-def {args.model_def!r} returned {type(model).__name__}, "
                            f"not an nn.Module")
    if path is None:
        if model is None:
            raise ValueError("--model-args needs --model-def")
        return model.to(device), {"source": args.model_def, "weights": None}
    if not os.path.exists(path):
        raise FileNotFoundError(f"{flag} {path!r} does not exist")
    if not _torch_file(path):
        raise ValueError(f"{flag} {path!r} is not a file written by torch.save (neither a zip "
                         f"archive nor a pickle)")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except RuntimeError as exc:
        if "jit" in str(exc).lower() or "torchscript" in str(exc).lower():
            raise ValueError(f"{flag} {path!r} is a TorchScript file: forward hooks cannot be "
                             f"registered on TorchScript modules; pass the Python model "
                             f"(--model-def FILE.py:Name and its state_dict as --weights)"
                             ) from None
        raise ValueError(f"{flag} {path!r} could not be read ({exc})") from None
    except Exception as exc:  # an object that weights_only refuses: a pickled module
        if flag == "--weights" or not getattr(args, "trust_pickle", False):
            raise ValueError(f"{flag} {path!r} holds a pickled Python object (torch.save(model)): "
                             f"loading it runs code from the file. Save model.state_dict() and "
                             f"pass it as --weights with --model-def (or --arch), or pass it as "
                             f"--model with --trust-pickle if you trust the file") from None
        obj = _unpickle_trusted(path, device, getattr(args, "model_def", None), exc)
    if isinstance(obj, nn.Module):
        return obj.to(device), {"source": path, "trusted_pickle": True}
    state = _state_dict(obj)
    if state is None:
        raise ValueError(f"{flag} {path!r} holds {type(obj).__name__}, neither a state_dict "
                         f"nor a model")
    if model is None:
        return None, {"state_dict": state, "source": path,  # type: ignore[return-value]
                      "flag": flag}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{flag} {path!r} does not fit --model-def {args.model_def!r}: "
                         f"{exc}") from None
    return model.to(device), {"source": path, "model_def": args.model_def}


def _unpickle_trusted(path: str, device: torch.device, model_def: Optional[str],
                      first: Exception) -> Any:
    warnings.warn(f"--trust-pickle: unpickling {path!r} runs code from the file", stacklevel=2)
    if model_def:  # a class defined in the training script's __main__ resolves to --model-def
        cls = _model_class(model_def)
        setattr(sys.modules["__main__"], cls.__name__, cls)
    try:
        return torch.load(path, map_location=device, weights_only=False)  # --trust-pickle only
    except AttributeError as exc:
        raise ValueError(f"--model {path!r}: its class is not importable here ({exc}); a "
                         f"model saved from a script's __main__ needs --model-def "
                         f"script.py:Name") from None


def _check_output_size(model: nn.Module, loader: Any, num_classes: int,
                       device: torch.device) -> None:
    """The model must have one output per class of the data (else accuracy is silently wrong)."""
    from ..capture._taps import logits_of, split_batch, to_device
    from ..prune._surgery import eval_forward
    x, _ = split_batch(next(iter(loader)))
    width = logits_of(eval_forward(model, to_device(x, device))).shape[1]
    if width != num_classes:
        raise ValueError(f"--model gives {width} outputs but the data has {num_classes} "
                         f"classes")


def get_model(args, train_loader, test_loader, num_classes: int) -> Tuple[nn.Module, dict]:
    """The user's model (--model-def/--model), or the reference architecture trained once and
    cached in --out."""
    from ..prune import evaluate
    from ..zoo._models import build_model, train_cached
    device = torch.device(args.device)
    if any(getattr(args, a, None) for a in ("model", "weights", "model_def")):
        model, info = load_user_model(args, num_classes, device)
        if model is None:  # a state_dict for a reference architecture
            state, flag = info.pop("state_dict"), info.pop("flag")
            arch = getattr(args, "arch", None) or "cnn"
            model = build_model(arch, args.example, num_classes=num_classes)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()
                raise ValueError(f"{flag} {info['source']!r} is a state_dict that does not fit "
                                 f"the reference architecture {arch!r} "
                                 f"({first[1].strip() if len(first) > 1 else first[0]}); "
                                 f"pass --model-def FILE.py:Class for its class") from None
            model = model.to(device)
            info["arch"] = arch
        _check_output_size(model, test_loader, num_classes, device)
    else:
        torch.manual_seed(args.seed)
        model = build_model(args.arch, args.example, num_classes=num_classes).to(device)
        info = {"example": args.example, "arch": args.arch, "trained": not args.untrained,
                "seed": args.seed}
        if not args.untrained:
            ckpt = (Path(args.out)
                    / f"model_{args.example}_{args.arch}_seed{args.seed}_ep{args.epochs}.pt")
            info = train_cached(model, train_loader, ckpt, args.epochs, seed=args.seed,
                                progress=not args.quiet, info=info, device=device)
    info["test_acc"] = evaluate(model, test_loader)
    return model, info


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))
