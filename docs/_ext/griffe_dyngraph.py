"""Griffe extension used by the docs build (``mkdocs.yml``): the API reference shows exactly what
the package exports, and reads dyngraph's docstring conventions as written.

1. **Public = the runtime ``__all__``.** Griffe reads ``__all__`` statically and cannot evaluate
   ``sorted(set(a.__all__ + b.__all__))`` (``dyngraph.measures``); so every module of the package
   is imported and each of its members is marked public exactly when the module's runtime
   ``__all__`` lists it. A name in ``__all__`` that griffe cannot find is an error, so a new
   export is either documented or breaks the build.
2. **``Example:``** (the singular title, which Napoleon and the Google style guide also accept)
   is read as the ``Examples`` section, so its doctests render as code.
3. **Grouped parameters**: an ``Args`` item ``a, b: text`` documents ``a`` and ``b`` with the same
   text (griffe would otherwise read one parameter called ``'a, b'``).
4. **Sphinx roles** (``:func:`x```, ``:class:`~pkg.X```, ``:func:`title <pkg.x>```, ...)
   become links to the API reference when they name a rendered public object (a short name is
   looked up in the object's own package, then at the top level), and inline code otherwise.

This changes what the docs show, never the package: ``help()`` and doctests read the source.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any, Dict, List, Optional, Set

import griffe

PACKAGE = "dyngraph"
_SKIP = {"dyngraph.__main__"}

_PARAM_SECTION = re.compile(
    r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters)"
    r":\s*$")
_GROUPED_ITEM = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*\([^)]*\))?\s*:(.*)$")
_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc|const):`(~?)([^`<>]+?)"
                   r"(?:\s*<([^`<>]+)>)?`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _runtime_exports() -> Dict[str, List[str]]:
    """``{module path: runtime __all__}`` for every module of the package that defines one."""
    pkg = importlib.import_module(PACKAGE)
    names = [PACKAGE] + [m.name for m in pkgutil.walk_packages(pkg.__path__, PACKAGE + ".")]
    out = {}
    for name in names:
        if name in _SKIP:
            continue
        mod = importlib.import_module(name)
        if hasattr(mod, "__all__"):
            out[name] = list(mod.__all__)
    return out


class DyngraphDocs(griffe.Extension):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.exports = _runtime_exports()
        # Identifiers the reference renders: the top level and the subpackages it exports, each
        # a page of docs/api/, and their exported names.
        top = self.exports[PACKAGE]
        pages = [PACKAGE] + [f"{PACKAGE}.{n}" for n in top if f"{PACKAGE}.{n}" in self.exports]
        self.rendered: Set[str] = set(pages)
        for mod in pages:
            self.rendered.update(f"{mod}.{n}" for n in self.exports[mod])

    # ------------------------------------------------------------------ docstrings
    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self.rewrite(obj.docstring.value, obj.path)

    def rewrite(self, text: str, path: str) -> str:
        """Apply the conventions 2-4 of the module docstring to one docstring."""
        lines = text.split("\n")
        out: List[str] = []
        i = 0
        in_params: Optional[int] = None      # indent of the current Args header
        item_indent: Optional[int] = None    # indent of its items
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            indent = _indent(line)
            if stripped and in_params is not None and indent <= in_params:
                in_params = None
            m = _PARAM_SECTION.match(line)
            if m:
                in_params, item_indent = len(m.group(1)), None
                out.append(line)
                i += 1
                continue
            m = _EXAMPLE.match(line)
            if m:
                out.append(f"{m.group(1)}Examples:")
                i += 1
                continue
            if in_params is not None and stripped and item_indent is None:
                item_indent = indent
            at_item = in_params is not None and indent == item_indent
            # a group of names wrapped over lines ("a, b, c,\n    d: text") is read as one line
            while (at_item and stripped.endswith(",") and ":" not in stripped
                   and i + 1 < len(lines) and _indent(lines[i + 1]) > indent):
                line = f"{line.rstrip()} {lines[i + 1].strip()}"
                stripped = line.strip()
                del lines[i + 1]
            g = _GROUPED_ITEM.match(line) if at_item else None
            if g:
                # the item's continuation: the following lines indented deeper than the item
                # (blank lines included when the item goes on after them)
                j = i + 1
                while j < len(lines):
                    if lines[j].strip():
                        if _indent(lines[j]) <= indent:
                            break
                        j += 1
                        continue
                    k = j
                    while k < len(lines) and not lines[k].strip():
                        k += 1
                    if k == len(lines) or _indent(lines[k]) <= indent:
                        break
                    j = k
                rest = lines[i + 1:j]
                for name in (n.strip() for n in g.group(2).split(",")):
                    out.append(f"{g.group(1)}{name}{g.group(3) or ''}:{g.group(4)}")
                    out.extend(rest)
                i = j
                continue
            out.append(line)
            i += 1
        return _ROLE.sub(lambda r: self._role(r, path), "\n".join(out))

    def _role(self, match: "re.Match[str]", path: str) -> str:
        short, text, explicit = match.group(1) == "~", match.group(2).strip(), match.group(3)
        target = explicit.strip() if explicit else text     # :func:`title <target>`
        shown = text.rsplit(".", 1)[-1] if short else " ".join(text.split())
        resolved = self.resolve(target, path)
        if resolved is None:
            return f"`{shown}`"
        return f"[`{shown}`][{resolved}]"

    def resolve(self, target: str, path: str) -> Optional[str]:
        """The rendered identifier a role's target names, seen from the object at ``path``."""
        candidates = [target]
        if not target.startswith(PACKAGE + "."):
            parts = path.split(".")
            # the object's own public package (dyngraph.measures for dyngraph.measures._x.f)
            public = [p for p in parts[1:] if not p.startswith("_")]
            owner = ".".join([PACKAGE] + public[:1]) if len(parts) > 1 else PACKAGE
            candidates = [f"{owner}.{target}", f"{PACKAGE}.{target}"]
        for c in candidates:
            if c in self.rendered:
                return c
        return None

    # ------------------------------------------------------------------ public = __all__
    def on_package(self, *, pkg: griffe.Module, loader: Any = None, **kwargs: Any) -> None:
        if pkg.path != PACKAGE:
            return
        missing = []
        for mod_path, names in self.exports.items():
            mod = pkg if mod_path == PACKAGE else pkg[mod_path[len(PACKAGE) + 1:]]
            for name, member in mod.members.items():
                member.public = name in names
            missing += [f"{mod_path}.{n}" for n in names if n not in mod.members]
        if missing:
            raise ValueError(f"exported but not found by griffe: {missing}")
