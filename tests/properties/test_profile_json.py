"""``DepthProfile`` JSON round trips are exact: any float64 samples (NaN and ±inf included,
signed zeros and subnormals bit for bit), any layer and metric names, JSON-able ``meta``."""
import json
import math

import numpy as np
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import dyngraph as dg

#: Keys of ``DepthProfile.to_dict`` / ``to_json`` that a metric's own entry (``d[metric] = mean``)
#: would clash with.
KEYS = ("format", "layers", "metrics", "mean", "std", "samples", "meta", "checksum")

#: Characters that JSON must escape or encode (quotes, backslash, controls, NUL, non-ASCII, an
#: astral emoji), beside plain ones (an explicit alphabet: no Unicode table to build).
ALPHABET = 'aZ0 _:-./"\\\n\t\x00\x7f\u00e9\u2206\U0001F600'
NAMES = st.text(ALPHABET, min_size=1, max_size=8)
META = st.dictionaries(
    st.text(ALPHABET, max_size=6),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1),
                           st.floats(allow_nan=False, allow_infinity=False), st.text(ALPHABET, max_size=6)),
                 lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4)


#: Metric names other than the keys above (those: test_metric_named_like_a_key_...).
METRIC_NAMES = NAMES.filter(lambda s: s not in KEYS)


@st.composite
def profiles(draw, metric_names=METRIC_NAMES):
    layers = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    metrics = draw(st.lists(metric_names, min_size=1, max_size=3, unique=True))
    r = draw(st.integers(1, 3))
    samples = draw(arrays(np.float64, (r, len(layers), len(metrics)),
                          elements=st.floats(allow_nan=True, allow_infinity=True)))
    return dg.DepthProfile(layers, metrics, torch.from_numpy(samples), draw(META))


def assert_identical(a: torch.Tensor, b: torch.Tensor):
    """Same shape, NaN in the same places, every other value bit for bit (signed zeros too)."""
    assert a.dtype == b.dtype == torch.float64 and a.shape == b.shape
    assert torch.equal(a.isnan(), b.isnan())
    keep = ~a.isnan()
    assert torch.equal(a[keep].view(torch.int64), b[keep].view(torch.int64))


@given(profiles())
def test_json_round_trip_is_exact(profile):
    text = profile.to_json()
    json.loads(text)  # strict JSON: no bare NaN/Infinity tokens
    assert "NaN" not in text.replace('"nan"', "") and "Infinity" not in text
    for back in (dg.DepthProfile.from_dict(json.loads(text)),
                 dg.DepthProfile.from_dict(profile.to_dict())):
        assert back == profile
        assert back.layers == profile.layers and back.metrics == profile.metrics
        assert_identical(back.samples, profile.samples)
        assert_identical(back.mean, profile.mean)
        assert_identical(back.std, profile.std)
        assert json.dumps(back.meta, sort_keys=True) == json.dumps(profile.meta, sort_keys=True)


@given(profiles())
def test_json_file_round_trip_is_exact(tmp_path_factory, profile):
    path = tmp_path_factory.mktemp("profile") / "p.json"
    profile.to_json(path)
    back = dg.DepthProfile.from_json(path)
    assert back == profile
    assert_identical(back.samples, profile.samples)


@given(profiles(metric_names=st.sampled_from(KEYS)))
@example(dg.DepthProfile(["a", "b"], ["layers"], torch.tensor([0.25, 0.5])))
def test_metric_named_like_a_key_round_trips_or_is_refused(profile):
    back = dg.DepthProfile.from_dict(json.loads(profile.to_json()))
    assert back == profile and back.layers == profile.layers


def test_nan_and_inf_survive_as_strings():
    """The documented encoding: non-finite values are the strings 'nan', 'inf', '-inf'."""
    p = dg.DepthProfile(["a"], ["m"], torch.tensor([[[math.nan]], [[math.inf]], [[-math.inf]]],
                                                   dtype=torch.float64))
    d = json.loads(p.to_json())
    assert d["samples"] == [[["nan"]], [["inf"]], [["-inf"]]]
    assert_identical(dg.DepthProfile.from_dict(d).samples, p.samples)
