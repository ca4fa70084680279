"""Files dyngraph writes: atomic (a finished result is never half-written, so a rerun can trust
what exists) and checksummed (a flipped byte is found on load, never used silently).

Checksums:

* JSON files carry a top-level ``"checksum": "sha256:<hex>"`` over their canonical payload
  (every other key, sorted, compact, ASCII), so whitespace and key order do not matter and any
  change of a value, key or name does.
* Files of tensors written with :func:`atomic_torch_save` by dyngraph hold a ``"checksum"`` entry
  computed by :func:`payload_digest` over everything else in the dict: names, dtypes, shapes and
  the raw bytes of every tensor, and every plain value.
* Other files (a saved layer ``.npy``, a pruned model's state_dict) have the
  :func:`sha256_file` of their bytes recorded in the file that indexes them.

A file whose checksum does not match raises :class:`CorruptFileError` (a ``ValueError``) naming
the file and saying how to rebuild it. A file written before checksums existed (no checksum
entry) is read with a warning: its contents cannot be verified. To edit a JSON file by hand,
delete its ``"checksum"`` entry (it is then read with that warning).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch

PathLike = Union[str, os.PathLike]
CHECKSUM_KEY = "checksum"
_CHUNK = 1 << 20


class CorruptFileError(ValueError):
    """A file dyngraph wrote does not match its checksum (or can no longer be parsed).

    Attributes:
        path: The file.

    Example:
        >>> import dyngraph._io as io
        >>> issubclass(io.CorruptFileError, ValueError)
        True
    """

    def __init__(self, path: PathLike, problem: str, fix: str = "delete it and rerun to rebuild it",
                 message: Optional[str] = None):
        self.path = Path(path)
        super().__init__(message or f"{str(path)!r} is corrupt: {problem}; {fix}")

    @classmethod
    def unreadable(cls, path: PathLike, what: str, exc: BaseException,
                   fix: str = "delete it and rerun to rebuild it") -> "CorruptFileError":
        """The error for a file that cannot even be parsed: corrupt, or not ``what`` at all."""
        why = (str(exc).splitlines() or [""])[0][:200]
        return cls(path, why, fix, f"{str(path)!r} cannot be read ({type(exc).__name__}: {why}): "
                                   f"it is corrupt or not {what}; {fix}")


# ------------------------------------------------------------------------------ atomic writes
def file_in(folder: PathLike, name: Any, suffix: str = "", what: str = "a name") -> Path:
    """``folder / (name + suffix)`` for a ``name`` that came from a file (a report's row, an
    index entry): only a plain file name is accepted, so no such name reaches outside ``folder``
    (``'../x'``, ``'/etc/x'``, ``'a/b'``, ``'..'`` are refused).

    Example:
        >>> from dyngraph._io import file_in
        >>> file_in('/out/models', 'random0', '.pt').as_posix()
        '/out/models/random0.pt'
        >>> file_in('/out/models', '../../x', '.pt')
        Traceback (most recent call last):
        ...
        ValueError: a name '../../x' is not a plain file name: refusing a path outside '/out/models'
    """
    if not isinstance(name, str) or not name or name in (".", "..") or \
            Path(name).name != name or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"{what} {name!r} is not a plain file name: refusing a path outside "
                         f"{str(folder)!r}")
    return Path(folder) / f"{name}{suffix}"


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_path)`` then renames the temporary file over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically, synced to disk before the rename."""
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return atomic_write(path, _w)


def atomic_write_json(path: PathLike, obj: Any, checksum: bool = True) -> Path:
    """Writes ``obj`` as indented JSON atomically; a dict gets a ``"checksum"`` entry (see
    :func:`with_json_checksum`) unless ``checksum=False``."""
    return atomic_write_text(path, json_text(obj, checksum))


def atomic_torch_save(obj: Any, path: PathLike, checksum: bool = False) -> Path:
    """``torch.save(obj, path)`` atomically; with ``checksum`` (``obj`` a dict), a
    ``"checksum"`` entry computed by :func:`payload_digest` is added to what is saved."""
    if checksum:
        if not isinstance(obj, dict):
            raise TypeError(f"a checksummed torch file holds a dict, got {type(obj).__name__}")
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY},
               CHECKSUM_KEY: payload_digest(obj)}
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ------------------------------------------------------------------------------ digests
def sha256_file(path: PathLike, chunk: int = _CHUNK) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks (memory stays at one chunk).

    Example:
        >>> import tempfile, pathlib, hashlib, dyngraph._io as io
        >>> p = pathlib.Path(tempfile.mkdtemp()) / 'a.bin'
        >>> _ = p.write_bytes(b'abc')
        >>> io.sha256_file(p) == hashlib.sha256(b'abc').hexdigest()
        True
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    """Feeds a canonical, type-tagged encoding of ``obj`` into hash ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided or t.is_quantized:
            raise TypeError(f"cannot checksum a {t.layout} tensor (quantized: {t.is_quantized})")
        t = t.to("cpu").contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().data)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:  # dtypes, devices, sizes, NumPy scalars: what torch.load(weights_only=True) restores
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def payload_digest(obj: Any) -> str:
    """``'sha256:<hex>'`` over the contents of a dict of tensors and plain values (names,
    dtypes, shapes, the bytes of every tensor, every value), ignoring a ``"checksum"`` entry:
    equal for the same contents whatever the device or the file's layout.

    Example:
        >>> import torch, dyngraph._io as io
        >>> a = {'w': torch.zeros(2), 'epoch': 3}
        >>> io.payload_digest(a) == io.payload_digest({'w': torch.zeros(2), 'epoch': 3})
        True
        >>> io.payload_digest(a) == io.payload_digest({'w': torch.tensor([0., 1e-45]), 'epoch': 3})
        False
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in obj.items() if k != CHECKSUM_KEY} if isinstance(obj, dict)
          else obj)
    return "sha256:" + h.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def json_checksum(d: Dict[str, Any]) -> str:
    """``'sha256:<hex>'`` of the canonical JSON of ``d`` without its ``"checksum"`` entry
    (``d`` as parsed from JSON: string keys)."""
    return "sha256:" + hashlib.sha256(
        _canonical({k: v for k, v in d.items() if k != CHECKSUM_KEY})).hexdigest()


def with_json_checksum(obj: Any) -> Any:
    """A JSON-ready copy of ``obj`` (as a JSON round trip gives it) with a ``"checksum"`` entry
    added last when ``obj`` is a dict.

    Example:
        >>> import dyngraph._io as io
        >>> d = io.with_json_checksum({'b': 1.5, 'a': [1, 2]})
        >>> list(d), d['checksum'].startswith('sha256:')
        (['b', 'a', 'checksum'], True)
        >>> io.verify_json_checksum(d, 'x.json') == {'b': 1.5, 'a': [1, 2]}
        True
    """
    plain = json.loads(json.dumps(obj))
    if isinstance(plain, dict):
        plain.pop(CHECKSUM_KEY, None)
        plain[CHECKSUM_KEY] = json_checksum(plain)
    return plain


def json_text(obj: Any, checksum: bool = True) -> str:
    """The indented JSON text dyngraph writes for ``obj`` (with its checksum entry)."""
    return json.dumps(with_json_checksum(obj) if checksum else obj, indent=2) + "\n"


def _unverified(path: PathLike, what: str) -> None:
    warnings.warn(f"{str(path)!r} has no checksum (written by an older dyngraph, or edited by "
                  f"hand): its {what} cannot be verified and are used as they are; rewrite it "
                  f"to add one",
                  UserWarning, stacklevel=3)


def verify_json_checksum(d: Any, path: PathLike, keep: bool = False,
                         fix: str = "delete it and rerun to rebuild it") -> Any:
    """``d`` (parsed from ``path``) after checking its ``"checksum"`` entry, which is removed
    unless ``keep``; a dict without one is returned with a warning, anything else as it is.

    Raises:
        CorruptFileError: The checksum does not match the contents.
    """
    if not isinstance(d, dict):
        return d
    if CHECKSUM_KEY not in d:
        _unverified(path, "contents")
        return d
    stored = d[CHECKSUM_KEY]
    if stored != json_checksum(d):
        raise CorruptFileError(path, "its contents do not match their checksum", fix)
    if not keep:
        d = {k: v for k, v in d.items() if k != CHECKSUM_KEY}
    return d


def read_json_file(path: PathLike, keep_checksum: bool = False,
                   fix: str = "delete it and rerun to rebuild it", what: str = "") -> Any:
    """A JSON file dyngraph wrote, parsed and its checksum verified (see
    :func:`verify_json_checksum`); ``what`` names the kind of file in the error of a file that
    is not JSON.

    Raises:
        CorruptFileError: Not valid JSON (UTF-8), or its checksum does not match.

    Example:
        >>> import tempfile, pathlib, dyngraph._io as io
        >>> p = pathlib.Path(tempfile.mkdtemp()) / 'r.json'
        >>> _ = io.atomic_write_json(p, {'q': [0.25, 0.5]})
        >>> io.read_json_file(p)
        {'q': [0.25, 0.5]}
        >>> _ = p.write_text(p.read_text().replace('0.25', '0.35'))
        >>> io.read_json_file(p)
        Traceback (most recent call last):
        ...
        dyngraph._io.CorruptFileError: '...r.json' is corrupt: its contents do not match ...
    """
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        kind = f", so not {what}" if what else ""
        raise CorruptFileError(path, f"it is not valid JSON ({exc}){kind}", fix) from None
    return verify_json_checksum(d, path, keep=keep_checksum, fix=fix)


def verify_payload(obj: Any, path: PathLike, fix: str = "delete it and rerun to rebuild it",
                   required: bool = False) -> Any:
    """A dict loaded from a torch file written by ``atomic_torch_save(..., checksum=True)``,
    checked against its ``"checksum"`` entry (which is removed). Without one: a warning, or
    :class:`CorruptFileError` when ``required``."""
    if not isinstance(obj, dict):
        return obj
    if CHECKSUM_KEY not in obj:
        if required:
            raise CorruptFileError(path, "it has no checksum", fix)
        _unverified(path, "tensors")
        return obj
    if obj[CHECKSUM_KEY] != payload_digest(obj):
        raise CorruptFileError(path, "its tensors or values do not match their checksum", fix)
    return {k: v for k, v in obj.items() if k != CHECKSUM_KEY}


def verify_file(path: PathLike, expected: Optional[str], fix: str = "delete it and rerun to "
                "rebuild it") -> None:
    """Checks ``path``'s bytes against ``expected`` (a :func:`sha256_file` hex digest); without
    one (``None``) the file is used with a warning."""
    if expected is None:
        _unverified(path, "bytes")
        return
    if sha256_file(path) != expected:
        raise CorruptFileError(path, "its bytes do not match the checksum recorded for it", fix)


def run_environment() -> Dict[str, Any]:
    """What can change a run's results in the last bits: torch's thread count and version and
    the determinism flags, recorded in reports and checkpoints.

    Example:
        >>> import torch, dyngraph._io as io
        >>> io.run_environment()['threads'] == torch.get_num_threads()
        True
    """
    return {"threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic)}
