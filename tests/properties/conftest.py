"""Hypothesis profiles for the property tests.

``ci`` (the default): derandomised, so every run draws the same examples and CI is deterministic;
no deadline (no wall-clock limits in tests); no example database written to disk; a bounded
number of examples so that the folder stays fast on 2 cores. ``dev``: random draws and more
examples, for a longer local hunt (``HYPOTHESIS_PROFILE=dev python3 -m pytest tests/properties``).
A test may lower ``max_examples`` further with its own ``@settings`` (it inherits the rest).
"""
import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

settings.register_profile("ci", max_examples=40, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=300, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
