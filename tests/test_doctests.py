"""Every docstring example in the package runs in the suite."""
import doctest
import importlib
import pkgutil

import pytest

import dyngraph

MODULES = sorted(info.name for info in pkgutil.walk_packages(dyngraph.__path__, "dyngraph.")
                 if info.name != "dyngraph.__main__")
# The spine's modules must carry runnable examples.
MUST_HAVE_EXAMPLES = ["dyngraph.capture._taps", "dyngraph.capture._extract",
                      "dyngraph.capture._features", "dyngraph.graphs._spec",
                      "dyngraph.graphs._graph", "dyngraph.graphs._knn",
                      "dyngraph.measures._modularity", "dyngraph.measures._registry",
                      "dyngraph.profiles._profile", "dyngraph.profiles._runner",
                      "dyngraph.outputs._dispatch"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if name in MUST_HAVE_EXAMPLES:
        assert result.attempted > 0
