"""``dyngraph`` / ``python -m dyngraph``: the command-line interface."""
from ._main import build_parser, main

__all__ = ["build_parser", "main"]
