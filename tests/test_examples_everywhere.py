"""Every public function and class carries a runnable example (issue 17).

"Public" is what the API reference renders: the ``__all__`` of ``dyngraph`` and of every
subpackage it exports (the same list as ``PUBLIC`` in ``tests/test_docs.py``). Each function and
class there needs a ``>>>`` example in its own docstring, and must be defined in a ``dyngraph``
module, so that ``tests/test_doctests.py`` (which runs every module's doctests) runs that example.
Constants and type aliases in ``__all__`` are documented by the page text, not by examples.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Dict, List

import pytest

import dyngraph as dg

PUBLIC = ["dyngraph"] + [f"dyngraph.{name}" for name in dg.__all__
                         if inspect.ismodule(getattr(dg, name))]
# The packages issue 17 names; a new public subpackage joins PUBLIC by itself.
REQUIRED = {"dyngraph", "dyngraph.capture", "dyngraph.graphs", "dyngraph.measures",
            "dyngraph.profiles", "dyngraph.outputs", "dyngraph.prune", "dyngraph.compare",
            "dyngraph.neurons", "dyngraph.theory", "dyngraph.zoo", "dyngraph.distributed",
            "dyngraph.errors"}
# "package.name" -> why it has no example. Keep it empty unless an example truly makes no sense.
NO_EXAMPLE: Dict[str, str] = {}


def _documented(obj: object) -> bool:
    return inspect.isclass(obj) or inspect.isroutine(obj)


def _public_objects() -> List[str]:
    out = []
    for pkg in PUBLIC:
        mod = importlib.import_module(pkg)
        for name in mod.__all__:
            if _documented(getattr(mod, name)):
                out.append(f"{pkg}.{name}")
    return out


OBJECTS = _public_objects()


def _resolve(qualified: str) -> object:
    pkg, name = qualified.rsplit(".", 1)
    return getattr(importlib.import_module(pkg), name)


def test_every_required_package_is_public_and_has_all():
    assert REQUIRED <= set(PUBLIC)
    for pkg in PUBLIC:
        mod = importlib.import_module(pkg)
        assert isinstance(getattr(mod, "__all__", None), (list, tuple)), pkg
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, f"{pkg}.__all__ names missing attributes: {missing}"


def test_the_exceptions_are_public_names_with_reasons():
    for name, reason in NO_EXAMPLE.items():
        assert name in OBJECTS, f"NO_EXAMPLE names {name}, which is not a public function/class"
        assert reason.strip(), f"NO_EXAMPLE[{name!r}] needs a reason"


@pytest.mark.parametrize("qualified", OBJECTS)
def test_public_object_has_a_runnable_example(qualified):
    obj = _resolve(qualified)
    # The object's own docstring (a class's is not inherited from its bases).
    doc = obj.__doc__ or ""
    if qualified in NO_EXAMPLE:
        assert ">>>" not in doc, f"{qualified} has an example now: drop it from NO_EXAMPLE"
        return
    assert ">>>" in doc, (f"{qualified} has no '>>>' example in its docstring; add an "
                          f"'Example:' section (see tests/test_doctests.py)")
    # tests/test_doctests.py runs doctest.testmod on every dyngraph module, which collects the
    # examples of the objects defined there: a re-export from elsewhere would never run.
    module = getattr(obj, "__module__", "") or ""
    assert module == "dyngraph" or module.startswith("dyngraph."), \
        f"{qualified} is defined in {module!r}, whose examples the suite does not run"


def test_the_scan_sees_what_it_should():
    # A guard against the parametrisation silently collecting nothing.
    assert len(OBJECTS) > 100
    assert "dyngraph.errors.DegenerateLayerWarning" in OBJECTS
    assert "dyngraph.zoo.resnet20" in OBJECTS
