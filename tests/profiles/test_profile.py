"""DepthProfile and LayerMatrix: derived statistics, views, exact round trips, checks on load."""
import json
import math

import pytest
import torch

import dyngraph as dg


def make(repeats=3):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(repeats, 4, 2, generator=g, dtype=torch.float64)
    return dg.DepthProfile(["a", "b", "c", "d"], ["q", "id"], s, {"seed": 0, "k": 3})


def test_mean_std_are_derived_and_views():
    p = make()
    assert torch.equal(p.mean, p.samples.mean(0))
    assert torch.equal(p.std, p.samples.std(0, unbiased=True))
    q = p["q"]
    assert q.metrics == ["q"] and q.name == "q" and torch.equal(q.values, p.mean[:, 0])
    assert torch.equal(q.errors, p.std[:, 0]) and torch.equal(q.diff(), q.values[1:] - q.values[:-1])
    assert p.layer("b") == {"q": float(p.mean[1, 0]), "id": float(p.mean[1, 1])}
    with pytest.raises(ValueError, match="one-metric"):
        _ = p.values
    with pytest.raises(KeyError, match="no metric 'nc1'"):
        p["nc1"]
    one = dg.DepthProfile(["a"], "q", torch.tensor([0.5]))
    assert one.repeats == 1 and one.std.tolist() == [[0.0]]
    # the samples are copied: changing the input later cannot change the result
    s = torch.zeros(2, 1, 1)
    r = dg.DepthProfile(["a"], ["q"], s)
    s += 1
    assert r.samples.sum() == 0


def test_equality_and_exact_json_round_trip(tmp_path):
    p = make()
    p.samples[0, 0, 0] = math.nan
    p.samples[1, 1, 1] = math.inf
    assert p != make()
    p.to_json(tmp_path / "p.json")
    back = dg.DepthProfile.from_json(tmp_path / "p.json")
    assert back == p and back.samples.dtype == torch.float64
    assert torch.equal(back.samples.nan_to_num(7), p.samples.nan_to_num(7))
    d = json.loads((tmp_path / "p.json").read_text())
    assert d["layers"] == ["a", "b", "c", "d"] and len(d["q"]) == 4  # 0.1 curve.json keys
    json.loads((tmp_path / "p.json").read_text(), parse_constant=lambda c: 1 / 0)  # strict JSON
    assert p.join(dg.DepthProfile(p.layers, ["z"], torch.zeros(3, 4))).metrics == ["q", "id", "z"]


def test_inconsistent_or_corrupt_files_are_refused(tmp_path):
    p = make()
    d = p.to_dict()
    d["mean"]["q"][2] += 0.5
    with pytest.raises(ValueError, match="disagrees with its samples"):
        dg.DepthProfile.from_dict(d)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        dg.DepthProfile.from_json(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(ValueError, match="not a dyngraph.DepthProfile file"):
        dg.DepthProfile.from_json(tmp_path / "other.json")


def test_shape_and_name_checks():
    with pytest.raises(ValueError, match=r"\[repeats, 2 layers, 1 metrics\]"):
        dg.DepthProfile(["a", "b"], ["q"], torch.zeros(3, 3, 1))
    with pytest.raises(ValueError, match="unique"):
        dg.DepthProfile(["a", "a"], ["q"], torch.zeros(2))
    with pytest.raises(TypeError, match="list of names"):
        dg.DepthProfile("ab", ["q"], torch.zeros(2))


def test_layer_matrix_round_trip_and_views(tmp_path):
    v = torch.arange(12, dtype=torch.float64).reshape(2, 3, 2)
    m = dg.LayerMatrix(["a1", "a2"], ["b1", "b2", "b3"], ["cka", "cka:p"], v, {"n": 5})
    assert torch.equal(m["cka"], v[:, :, 0]) and m.shape == (2, 3, 2)
    m.to_json(tmp_path / "m.json")
    assert dg.LayerMatrix.from_json(tmp_path / "m.json") == m
    assert "a2,b3,cka:p,11.0" in m.to_csv()
    sq = dg.LayerMatrix(["x", "y"], ["x", "y"], "cka", torch.tensor([[1.0, 0.2], [0.3, 0.9]]))
    assert sq.diagonal_contrast("cka") == pytest.approx(
        {"diagonal_mean": 0.95, "off_diagonal_mean": 0.25, "row_best_is_diagonal": 1.0})
    with pytest.raises(ValueError, match="shape"):
        dg.LayerMatrix(["a"], ["b"], ["cka"], torch.zeros(2, 2, 1))
