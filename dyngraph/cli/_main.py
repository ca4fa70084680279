"""dyngraph: layer-by-layer kNN graphs of a network's representations (modularity profiles,
model comparison, neuron-level modularity, depth pruning).

Subcommands are discovered in ``dyngraph.cli.commands``: a command module defines
``register(subparsers)``, which adds its parser and sets ``func=run`` where ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys
from typing import List, NoReturn, Optional

import torch

from .._validate import check_device
from . import commands as _commands

#: ``--threads`` default: the same on every machine, so two runs of a command agree bit for bit.
DEFAULT_THREADS = 2


class _Parser(argparse.ArgumentParser):
    """Every usage error, the subcommands' included, is one ``dyngraph: error: ...`` line (after
    the usage) and exit status 2, the same shape as the errors the commands raise."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"dyngraph: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    parser = _Parser(
        prog="dyngraph", description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="Run 'dyngraph COMMAND --help' for a command's options and their defaults.")
    parser.add_argument("--version", action="version", version=f"dyngraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(_commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{_commands.__name__}.{info.name}").register(sub)
    for name, p in sub.choices.items():
        if name != "plot":
            p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                           help="torch CPU threads. Fixed by default: parallel reductions and "
                                "GEMMs round differently with another thread count, which can "
                                "change training in the last bits and through it a pruning "
                                "choice; every report records the count")
        p.formatter_class = argparse.ArgumentDefaultsHelpFormatter  # help shows the defaults
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        os.environ["DYNGRAPH_QUIET"] = "1"
    error = _usage_error(args)
    if error:
        print(f"dyngraph: error: {error}", file=sys.stderr)
        return 2
    before = torch.get_num_threads()
    threads = getattr(args, "threads", None)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"dyngraph: error: {_flags(str(exc), parser, args)}", file=sys.stderr)
        return 2
    finally:  # an in-process caller (a test, a notebook) gets its own setting back
        torch.set_num_threads(before)


def _usage_error(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with --device, --data, --eval-data, --out or --threads, checked before the
    command runs; ``None`` when nothing is."""
    device = str(getattr(args, "device", "") or "")
    if device:
        try:
            check_device(device, "--device")
        except ValueError as exc:
            return str(exc)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {device}: no CUDA device is available here (use --device cpu)"
    for flag in ("data", "eval_data"):
        folder = getattr(args, flag, None)
        if isinstance(folder, str) and not os.path.exists(folder):
            return (f"--{flag.replace('_', '-')} {folder!r} does not exist (a folder of class "
                    f"subfolders)")
    out = getattr(args, "out", None)
    if out and os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out!r} is a file, not a folder"
    threads = getattr(args, "threads", None)
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        return f"--threads must be >= 1, got {threads}"
    return None


def _flags(message: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command's option names in an error message as the user types them: ``per_class`` →
    ``--per-class`` (messages from the library name Python arguments). A command whose option
    feeds a library argument of another name declares it with
    ``set_defaults(_flag_aliases={"n_random": "--random-groups"})``."""
    for name, flag in (getattr(args, "_flag_aliases", None) or {}).items():
        message = re.sub(rf"(?<![\w.-]){name}(?= must| is |=)", flag, message)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[args.command]._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag and not action.dest.startswith("_"):
            # the argument checks' phrasing: "per_class must be ...", "got per_class=0"; a
            # one-word name only in those two shapes (a word like 'data' may be prose)
            after = " must| is |=" if "_" in action.dest else " must|="
            message = re.sub(rf"(?<![\w.-]){action.dest}(?={after})", flag, message)
    return message


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
