"""Every row of the bad-inputs catalogue (``catalogue.py``, rendered as ``docs/bad_inputs.md``):
the exception type, the words of the message that name the argument and the value, and where it
is raised (inside dyngraph, not deep in torch or NumPy); for the CLI, exit status 2 and one
``dyngraph: error: ...`` line naming the option, never a traceback."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyngraph.cli._main import main

from .catalogue import API_CASES, CLI_CASES, DOC, render


def _marks(case):
    if case.owner is None:
        return ()
    return (pytest.mark.xfail(strict=True, reason=f"owner: {case.owner}"),)


def _message(exc: BaseException) -> str:
    # KeyError's str() is the repr of its argument; the argument is the message.
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _raised_in_dyngraph(tb) -> bool:
    """The innermost frame is dyngraph's own code (a check, not a failure deep inside torch,
    NumPy, matplotlib or pathlib)."""
    frames = [e for e in tb if "site-packages" not in str(e.path) or "dyngraph" in str(e.path)]
    last = tb[-1]
    return bool(frames) and f"{os.sep}dyngraph{os.sep}" in str(last.path) and \
        f"{os.sep}tests{os.sep}" not in str(last.path)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in API_CASES])
def test_api(case, base_dir):
    tmp_path = base_dir / case.id  # one fresh folder per row (cheaper than tmp_path)
    tmp_path.mkdir()
    if issubclass(case.error, Warning):
        with pytest.warns(case.error) as record:
            case.call(tmp_path)
        messages = [str(w.message) for w in record if isinstance(w.message, case.error)]
        assert any(all(s in m for s in case.says) for m in messages), \
            f"no {case.error.__name__} holds {case.says}: {messages}"
        return
    with pytest.raises(case.error) as info:
        case.call(tmp_path)
    message = _message(info.value)
    missing = [s for s in case.says if s not in message]
    assert not missing, f"{type(info.value).__name__}: {message!r} lacks {missing}"
    assert _raised_in_dyngraph(info.traceback), \
        f"raised outside dyngraph, at {info.traceback[-1].path}: {message!r}"


@pytest.fixture
def cli_tmp(tmp_path: Path) -> Path:
    (tmp_path / "garbage.pt").write_bytes(b"this is not a torch file")
    (tmp_path / "net.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self, width=4):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 10)\n\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n")
    for name in ("a.pt", "b.pt"):  # state_dicts of net.py:Net
        torch.save({"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)},
                   tmp_path / name)
    return tmp_path


def run_cli(argv):
    """``dyngraph ARGV`` in this process: ``(exit status, stderr)``."""
    err = io.StringIO()
    threads, quiet = torch.get_num_threads(), os.environ.get("DYNGRAPH_QUIET")
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(list(argv))
            except SystemExit as exc:
                rc = exc.code
    finally:
        torch.set_num_threads(threads)
        if quiet is None:
            os.environ.pop("DYNGRAPH_QUIET", None)
        else:
            os.environ["DYNGRAPH_QUIET"] = quiet
    return rc, err.getvalue()


def _check_cli(rc, stderr: str, says) -> None:
    assert "Traceback" not in stderr, stderr
    assert rc == 2, f"exit status {rc!r}; stderr: {stderr[-500:]}"
    starts = [i for i, line in enumerate(stderr.splitlines()) if line.startswith("dyngraph: error: ")]
    assert starts, f"no 'dyngraph: error: ...' line in {stderr[-500:]!r}"
    error = "\n".join(stderr.splitlines()[starts[0]:])
    missing = [s for s in says if s not in error]
    assert not missing, f"{error!r} lacks {missing}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in CLI_CASES])
def test_cli(case, cli_tmp):
    argv = [a.replace("{tmp}", str(cli_tmp)) for a in case.argv]
    rc, stderr = run_cli(argv)
    _check_cli(rc, stderr, [s.replace("{tmp}", str(cli_tmp)) for s in case.says])


def test_cli_subprocess(tmp_path):
    """The real process: exit status 2, one error line, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, "-m", "dyngraph", "curve", "--out",
                           str(tmp_path / "o"), "--per-class", "0"],
                          capture_output=True, text=True, env=env, timeout=None)
    _check_cli(proc.returncode, proc.stderr, ["--per-class must be >= 1", "--per-class=0"])
    assert not (tmp_path / "o").exists()  # nothing was written for a run that never started


def test_catalogue_ids_unique_and_large_enough():
    ids = [c.id for c in API_CASES] + [c.id for c in CLI_CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(ids) >= 60
    for c in API_CASES:
        assert c.says, c.id  # every row names at least the argument or the value


def test_doc_is_the_catalogue():
    """``docs/bad_inputs.md`` is generated from the catalogue: regenerate it with
    ``python -m tests.bad_inputs.catalogue --write``."""
    assert DOC.read_text() == render(), "docs/bad_inputs.md is out of date"
