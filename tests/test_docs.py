"""The documentation is part of the tested code.

* Every ```python block of every page under ``docs/`` runs: the blocks of one page in order, in one
  namespace, in a temporary working directory. A block may be skipped only with a
  ``<!-- no-run: reason -->`` comment right before it (long trainings, GPUs, several processes);
  it is still compiled. Every fence names its language, so Python cannot hide in a bare fence.
* The API reference renders every name of every public package's ``__all__`` (the site's API pages
  are built by mkdocs + mkdocstrings into a temporary folder and the rendered anchors are read).
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import List, NamedTuple, Optional

import pytest
import torch

import dyngraph as dg

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)
# Fence languages a page may use; anything else (or none) is an error.
LANGUAGES = {"python", "bash", "console", "text", "json", "yaml", "toml", "csv"}
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
# The packages whose __all__ the API reference must render, a page each under docs/api/: the top
# level and every subpackage it exports (a new one needs its page).
PUBLIC = ["dyngraph"] + [f"dyngraph.{name}" for name in dg.__all__
                         if isinstance(getattr(dg, name), type(dg))]


class Block(NamedTuple):
    page: Path
    line: int                 # 1-based line of the first code line
    language: str
    code: str
    skip: Optional[str]       # the no-run reason, or None


def code_blocks(page: Path) -> List[Block]:
    """Every fenced block of a Markdown page, with its language and no-run marker."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info")
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = NO_RUN.match(prev)
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page.name}:{i + 1}: the fence is never closed")
        blocks.append(Block(page, i + 2, info.lower(), "\n".join(body) + "\n",
                            skip.group("reason") if skip else None))
        i = j + 1
    return blocks


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_fence_names_a_known_language_and_every_skip_a_reason():
    problems = []
    for page in PAGES:
        for b in code_blocks(page):
            if b.language not in LANGUAGES:
                problems.append(f"{_rel(page)}:{b.line - 1}: fence language {b.language!r} "
                                f"(use one of {sorted(LANGUAGES)})")
            if b.skip is not None and (b.language != "python" or len(b.skip) < 8):
                problems.append(f"{_rel(page)}:{b.line - 1}: a no-run marker needs a python "
                                f"block and a reason, got {b.skip!r}")
            if b.language == "python":
                try:   # every block compiles, the skipped ones too
                    compile("\n" * (b.line - 1) + b.code, _rel(page), "exec")
                except SyntaxError as exc:
                    problems.append(f"{_rel(page)}:{exc.lineno}: {exc.msg}")
    assert not problems, "\n".join(problems)


def test_the_block_parser_reads_languages_markers_and_lines(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\na = 1\n```\n\n<!-- no-run: needs a GPU here -->\n"
                    "```python\nb = a + 1\n```\n  ```bash\n  ls\n  ```\n```\nbare\n```\n")
    blocks = code_blocks(page)
    assert [(b.line, b.language, b.code, b.skip) for b in blocks] == [
        (4, "python", "a = 1\n", None), (9, "python", "b = a + 1\n", "needs a GPU here"),
        (12, "bash", "ls\n", None), (15, "", "bare\n", None)]


REPO_PATH = re.compile(r"(?<![\w./-])((?:dyngraph|tests|examples|benchmarks|docs)/[\w./-]*\w)")


def test_repository_paths_named_in_the_docs_exist():
    """A page that names a file of the repository (``tests/measures/test_x.py``) names one that
    exists, so a moved file does not leave a stale pointer behind."""
    stale = []
    for page in PAGES:
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for path in REPO_PATH.findall(line):
                if "*" not in path and not (ROOT / path).exists() and \
                        not (page.parent / path).exists():
                    stale.append(f"{_rel(page)}:{n}: {path}")
    assert not stale, "\n".join(stale)


RUNNABLE = [p for p in PAGES if any(b.language == "python" and b.skip is None
                                    for b in code_blocks(p))]


@pytest.mark.parametrize("page", RUNNABLE, ids=[_rel(p) for p in RUNNABLE])
def test_page_code_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(dg.measures.available())
    threads = torch.get_num_threads()
    namespace = {"__name__": "__docs__"}
    try:
        for b in code_blocks(page):
            if b.language != "python" or b.skip is not None:
                continue
            # leading newlines: a traceback names the page's own line numbers
            exec(compile("\n" * (b.line - 1) + b.code, _rel(page), "exec"), namespace)
    finally:
        for name in set(dg.measures.available()) - before:   # a page's own measures
            dg.measures.unregister(name)
        for value in namespace.values():                     # TensorBoard writers left open
            if type(value).__name__ == "SummaryWriter":
                value.close()
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- API reference
def _build_api_site(out: Path) -> Path:
    """Build only the API pages with the site's own configuration (mkdocs.yml, its plugins and
    the griffe extension); the strict build of the whole site is CI's (.ci/run)."""
    import yaml
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = out / "docs"
    shutil.copytree(DOCS / "api", docs / "api")
    python = config["plugins"][-1]["mkdocstrings"]["handlers"]["python"]
    python["paths"] = [str(ROOT)]
    # extension files are named relative to mkdocs.yml
    python["options"]["extensions"] = [str(ROOT / e) if ".py" in e else e
                                       for e in python["options"]["extensions"]]
    config.update(docs_dir=str(docs), site_dir=str(out / "site"), strict=False,
                  nav=[{"API reference": [str(p.relative_to(docs)) for p in
                                          sorted((docs / "api").glob("*.md"))]}])
    config["plugins"] = [p for p in config["plugins"] if p != "search"]
    (out / "mkdocs.yml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-f",
                          str(out / "mkdocs.yml")], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return out / "site"


def _html_text(fragment: str) -> str:
    """The text of an HTML fragment (tags and attributes left out)."""
    parts: List[str] = []
    parser = HTMLParser(convert_charrefs=True)
    parser.handle_data = parts.append  # type: ignore[method-assign]
    parser.feed(fragment)
    parser.close()
    return " ".join(parts)


def _words(text: str) -> List[str]:
    """The words of a text, markup and punctuation left out (Markdown and HTML render the same
    words)."""
    return re.findall(r"[^\W_]+", text)


@pytest.fixture(scope="module")
def api_site(tmp_path_factory):
    return _build_api_site(tmp_path_factory.mktemp("api"))


def test_every_public_package_has_an_api_page():
    for pkg in PUBLIC:
        page = DOCS / "api" / f"{pkg.rpartition('.')[2]}.md"
        assert page.exists(), f"no API page for {pkg}"
        assert re.search(rf"^::: {re.escape(pkg)}\s*$", page.read_text(), re.M), page


def test_api_reference_renders_every_exported_name(api_site):
    """Each name of each public ``__all__`` has its heading on its package's page, and a function
    or class has its docstring rendered under it."""
    missing, undocumented = [], []
    for pkg in PUBLIC:
        mod = importlib.import_module(pkg)
        assert getattr(mod, "__all__", None), f"{pkg} has no __all__"
        text = (api_site / "api" / pkg.rpartition(".")[2] / "index.html").read_text("utf-8")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if isinstance(obj, type(dg)) and obj.__name__ == f"dyngraph.{name}":
                continue              # a subpackage: a page of its own
            anchor = text.find(f'id="{pkg}.{name}"')
            if anchor < 0:
                missing.append(f"{pkg}.{name}")
                continue
            if inspect.isfunction(obj) or inspect.isclass(obj):
                # the text between this heading and the next one: the rendered docstring
                start = text.find("</h", anchor)
                end = text.find("doc-heading", start)
                body = _words(_html_text(text[start:end]))
                first = (inspect.getdoc(obj) or "").split("\n\n")[0]   # the summary paragraph
                summary = _words(re.sub(r":\w+:`([^`<]*)(<[^>]*>)?`", r"\1", first))[:6]
                if not summary or f" {' '.join(summary)} " not in f" {' '.join(body)} ":
                    undocumented.append(f"{pkg}.{name}")
    assert not missing, f"exported but not in the API reference: {missing}"
    assert not undocumented, f"rendered without their docstring: {undocumented}"
