"""The runnable examples in the core modules' docstrings are part of the suite."""
import doctest
import importlib

import pytest

MODULES = ["dyngraph.measures._modularity", "dyngraph.graphs._graph", "dyngraph.graphs._knn", "dyngraph._curve",
           "dyngraph.capture._extract", "dyngraph.profiles._pipeline", "dyngraph.capture._features", "dyngraph.outputs._log"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
