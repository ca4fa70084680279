"""The one JSON convention of dyngraph's results: tensors become lists, non-finite floats become
the strings ``'nan'``, ``'inf'`` and ``'-inf'`` (strict JSON), and :func:`decode_floats` undoes
that exactly. Floats are written with ``repr`` precision, so a round trip is bit-exact."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def jsonable(obj: Any) -> Any:
    """A JSON-ready copy of ``obj`` (dicts, lists, tensors, numbers, paths, dataclass-likes)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("nan" if math.isnan(obj) else
                                               ("inf" if obj > 0 else "-inf"))
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        return jsonable(obj.item())
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return jsonable(obj.to_dict())
    return str(obj)


def decode_floats(obj: Any) -> Any:
    """Nested lists of numbers with ``'nan'``/``'inf'``/``'-inf'`` strings → floats."""
    if isinstance(obj, list):
        return [decode_floats(v) for v in obj]
    if isinstance(obj, str):
        if obj not in _NONFINITE:
            raise ValueError(f"expected a number, got the string {obj!r}")
        return _NONFINITE[obj]
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        raise ValueError(f"expected a number, got {type(obj).__name__}: {obj!r}")
    return float(obj)


def float_tensor(obj: Any, name: str) -> Tensor:
    """A float64 tensor from JSON lists (non-finite strings decoded)."""
    try:
        return torch.tensor(decode_floats(obj), dtype=torch.float64)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def read_json(path: Any, formats: Tuple[str, ...]) -> Dict[str, Any]:
    """A JSON file written by dyngraph: its checksum verified (a file without one is read with a
    warning), then its ``format`` checked against ``formats``; the checksum entry is removed.

    Raises:
        CorruptFileError: The file is not valid JSON or does not match its checksum.
        ValueError: It is not one of ``formats``.
    """
    from ._io import read_json_file
    d = read_json_file(path)
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt not in formats:
        raise ValueError(f"{path} is not a {formats[0].split('/')[0]} file (format {fmt!r})")
    return d


def check_format(d: Any, formats: Tuple[str, ...], what: str) -> None:
    """Raises unless ``d`` is a dict whose ``format`` is one of ``formats``."""
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt not in formats:
        raise ValueError(f"not a {what} dict (format {fmt!r})")


class JsonFile:
    """JSON files of a result class that defines ``to_dict``/``from_dict`` and ``FORMAT``:
    strict JSON, written atomically with a checksum of its contents, the checksum and the format
    checked on load (``FORMATS`` lists the formats a class still reads). A flipped byte raises
    :class:`~dyngraph._io.CorruptFileError` naming the file; a file written without a checksum
    (an older dyngraph) is read with a warning."""

    FORMAT = ""
    FORMATS: Tuple[str, ...] = ()

    def to_json(self: Any, path: Optional[Any] = None) -> str:
        """The JSON text (with its ``"checksum"`` entry); written atomically to ``path`` when
        given."""
        from ._io import atomic_write_text, json_text
        text = json_text(jsonable(self.to_dict()))
        if path is not None:
            atomic_write_text(path, text)
        return text.rstrip("\n")

    @classmethod
    def from_json(cls: Any, path: Any) -> Any:
        """Reads :meth:`to_json`'s file (an exact round trip)."""
        return cls.from_dict(read_json(path, cls.FORMATS or (cls.FORMAT,)))

    @classmethod
    def _check_format(cls: Any, d: Any) -> None:
        check_format(d, cls.FORMATS or (cls.FORMAT,), cls.__name__)
