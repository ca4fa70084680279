"""The tutorials (``docs/tutorials/``) show scripts of ``examples/`` that exist and still run.

A tutorial page includes its script's source with a snippet line (pymdownx.snippets, so the page
cannot show stale code), shows the figures the script wrote when it was run for the page
(committed under ``docs/img/tutorials/``) and gives the commands that ran it. Here:

* every included file exists, is a script of ``examples/``, parses, has a docstring and answers
  ``--help``; every script of ``examples/`` is on some tutorial page (or listed in ``NOT_TUTORIALS``
  with its reason);
* every figure a page shows exists and is a small PNG under ``docs/img/tutorials/``, and every
  PNG there is shown by some page;
* every ``python examples/NAME.py ...`` command a page gives names a script that exists and only
  flags that script's ``--help`` lists;
* the scripts whose smoke flags finish in seconds run end to end with them.

Running every script with its defaults takes tens of minutes on 2 CPU cores: that belongs to the
examples themselves (each page says what its run took), not to this fast suite.
"""
from __future__ import annotations

import ast
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
FIGURES = ROOT / "docs" / "img" / "tutorials"
PAGES = sorted(TUTORIALS.glob("*.md"))
SCRIPTS = sorted((ROOT / "examples").glob("*.py"))
# Scripts of examples/ that are not tutorials, with the reason.
NOT_TUTORIALS = {
    "readme_numbers.py": "regenerates the README's table (issue 17, part 5), not a tutorial",
    "tutorial_figures.py": "runs the tutorial scripts and copies their figures into the docs",
}
SNIPPET = re.compile(r'^\s*-{2}8<-{2}\s+"(?P<path>[^"]+)"\s*$')
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<path>[^)\s]+)\)")
COMMAND = re.compile(r"^\s*(?:python3?|\$ python3?)\s+(?P<script>examples/[\w.-]+\.py)(?P<args>.*)$")
MAX_FIGURE_BYTES = 160_000


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _included(page: Path) -> List[str]:
    return [m.group("path") for line in page.read_text("utf-8").splitlines()
            if (m := SNIPPET.match(line))]


def _fenced(page: Path, languages=("bash", "console")) -> List[str]:
    """The lines of the page's shell blocks, continuation backslashes joined."""
    out, lang, buf = [], None, ""
    for line in page.read_text("utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].split() or [""])[0]
            continue
        if lang in languages:
            buf += stripped[:-1] + " " if stripped.endswith("\\") else stripped
            if not stripped.endswith("\\"):
                out.append(buf)
                buf = ""
    return out


INCLUDED: Dict[str, List[str]] = {_rel(p): _included(p) for p in PAGES}
TUTORIAL_SCRIPTS = sorted({s for paths in INCLUDED.values() for s in paths})


def test_there_are_tutorials_and_each_includes_a_script():
    assert (TUTORIALS / "index.md").exists()
    pages = [p for p in PAGES if p.name != "index.md"]
    assert len(pages) >= 8, [p.name for p in pages]
    for page in pages:
        assert INCLUDED[_rel(page)], f"{_rel(page)} includes no script of examples/"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_included_scripts_exist_parse_and_have_a_docstring(page):
    for path in INCLUDED[_rel(page)]:
        script = ROOT / path
        assert path.startswith("examples/") and path.endswith(".py"), \
            f"{_rel(page)} includes {path}, not a script of examples/"
        assert script.is_file(), f"{_rel(page)} includes {path}, which does not exist"
        tree = ast.parse(script.read_text("utf-8"), filename=path)
        assert ast.get_docstring(tree), f"{path} has no module docstring"
        # the include is the whole script, in a fence that says it is not run by test_docs
        lines = page.read_text("utf-8").splitlines()
        i = next(n for n, line in enumerate(lines) if SNIPPET.match(line)
                 and SNIPPET.match(line).group("path") == path)
        assert lines[i - 1].startswith("```python"), f"{_rel(page)}: {path} not in a python fence"
        assert re.match(r"<!--\s*no-run:", lines[i - 2].strip()), \
            f"{_rel(page)}: the fence including {path} needs a no-run marker (tests/test_docs.py)"


def test_every_example_script_is_a_tutorial_or_listed():
    names = {Path(s).name for s in TUTORIAL_SCRIPTS}
    missing = [s.name for s in SCRIPTS if s.name not in names and s.name not in NOT_TUTORIALS]
    assert not missing, f"scripts on no tutorial page (add one, or list it in NOT_TUTORIALS): " \
                        f"{missing}"
    stale = [n for n in NOT_TUTORIALS if not (ROOT / "examples" / n).exists()]
    assert not stale, stale


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_figures_shown_exist_and_are_small_pngs(page):
    for m in IMAGE.finditer(page.read_text("utf-8")):
        fig = (page.parent / m.group("path")).resolve()
        assert fig.is_file(), f"{_rel(page)} shows {m.group('path')}, which does not exist"
        assert fig.parent == FIGURES, f"{_rel(page)}: {m.group('path')} is not under " \
                                      f"{_rel(FIGURES)}"
        assert fig.suffix == ".png" and fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig.name
        assert fig.stat().st_size <= MAX_FIGURE_BYTES, \
            f"{fig.name}: {fig.stat().st_size} bytes (save it at a lower dpi)"


def test_every_committed_figure_is_shown():
    shown = {(p.parent / m.group("path")).resolve() for p in PAGES
             for m in IMAGE.finditer(p.read_text("utf-8"))}
    unused = [f.name for f in sorted(FIGURES.glob("*")) if f.resolve() not in shown]
    assert not unused, f"figures under {_rel(FIGURES)} no page shows: {unused}"


def test_every_figure_can_be_regenerated():
    """Each committed figure is one that ``examples/tutorial_figures.py`` copies from a run of a
    tutorial script, and each run it names is a script some page includes."""
    helper = runpy.run_path(str(ROOT / "examples" / "tutorial_figures.py"), run_name="helper")
    figures, runs = helper["FIGURES"], helper["RUNS"]
    committed = {f.name for f in FIGURES.glob("*")}
    assert committed == set(figures), (f"committed, not in FIGURES: {committed - set(figures)}; "
                                       f"in FIGURES, not committed: {set(figures) - committed}")
    assert {run for run, *_ in figures.values()} <= set(runs)
    for script, _ in runs.values():
        assert f"examples/{script}" in TUTORIAL_SCRIPTS, script


def test_the_figure_runs_are_the_pages_commands():
    """``examples/tutorial_figures.py --run`` runs each script exactly as its page says."""
    helper = runpy.run_path(str(ROOT / "examples" / "tutorial_figures.py"), run_name="helper")
    commands = []
    for page in PAGES:
        for line in _fenced(page):
            if (m := COMMAND.match(line)):
                args = m.group("args").split(" #")[0].split()
                i = args.index("--out") if "--out" in args else None
                if i is not None:
                    del args[i:i + 2]
                commands.append((m.group("script"), args))
    for name, (script, args) in helper["RUNS"].items():
        assert (f"examples/{script}", list(args)) in commands, \
            f"RUNS[{name!r}] = {script} {args}: no tutorial page gives that command"


def _help(script: str, capsys, monkeypatch) -> str:
    """The script's ``--help`` text, run in this process as ``__main__``."""
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    out = capsys.readouterr().out
    assert exc.value.code in (0, None), f"{script} --help exited with {exc.value.code}"
    return out


@pytest.mark.parametrize("script", TUTORIAL_SCRIPTS)
def test_help_works(script, capsys, monkeypatch):
    out = _help(script, capsys, monkeypatch)
    assert out.startswith("usage:") and "--out" in out, out


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_commands_on_the_page_use_existing_scripts_and_flags(page, capsys, monkeypatch):
    helps: Dict[str, str] = {}
    for line in _fenced(page):
        m = COMMAND.match(line)
        if not m:
            continue
        script = m.group("script")
        assert (ROOT / script).is_file(), f"{_rel(page)}: no such script ({line})"
        if script not in helps:
            helps[script] = _help(script, capsys, monkeypatch)
        args = m.group("args").split(" #")[0]          # a trailing comment is not a flag
        for flag in re.findall(r"(?<!\S)(--[\w-]+)", args):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[script]), \
                f"{_rel(page)}: {script} has no flag {flag} ({line})"


# Smoke runs: the scripts whose quick flags finish in seconds, end to end, in a fresh process
# (they set torch's thread count and write under --out).
QUICK = {
    "examples/neural_collapse_curve.py": ["--quick", "--no-tensorboard"],
    "examples/minority_collapse.py": ["--quick", "--quiet"],
}
QUICK_OUTPUTS = {
    "examples/neural_collapse_curve.py": ["neural_collapse_curve.json", "nc_per_layer.png",
                                          "nc_over_epochs.png"],
    "examples/minority_collapse.py": ["minority_collapse.json", "minority_cosine_vs_ratio.png",
                                      "last_layer_vs_lpm.png"],
}


@pytest.mark.parametrize("script", sorted(QUICK))
def test_quick_run(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    run = subprocess.run([sys.executable, str(ROOT / script), *QUICK[script],
                          "--out", str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in QUICK_OUTPUTS[script]:
        assert (tmp_path / name).is_file(), f"{script} {QUICK[script]} wrote no {name}"
