"""The runnable examples in the core modules' docstrings are part of the suite."""
import doctest
import importlib

import pytest

MODULES = ["dyngraph.metrics.modularity", "dyngraph.graph", "dyngraph.knn", "dyngraph.curve",
           "dyngraph.extract", "dyngraph.pipeline", "dyngraph.features", "dyngraph.logging"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
