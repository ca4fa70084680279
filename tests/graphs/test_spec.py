"""GraphSpec: the reference preset and validated options."""
import pytest
import torch

import dyngraph as dg


def test_default_is_the_reference_and_build_equals_build_snapshot():
    spec = dg.GraphSpec()
    assert (spec.k, spec.metric, spec.symmetrize) == (3, "cosine", "mean")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 6, generator=g), torch.arange(80) % 4
    a = spec.build(x, y, layer_name="l")
    b = dg.graphs.build_snapshot(x, y, k=3, metric="cosine", symmetrize="mean", layer_name="l")
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_weight, b.edge_weight)
    assert a.layer_name == "l" and a.num_nodes == 80


def test_options_round_trip_and_errors():
    spec = dg.GraphSpec(k=5, metric="euclidean", symmetrize="max", precision="bf16")
    assert dg.GraphSpec.from_dict(spec.to_dict()) == spec
    assert spec.replace(k=3).k == 3 and spec.k == 5
    with pytest.raises(ValueError, match="k must be >= 1"):
        dg.GraphSpec(k=0)
    with pytest.raises(TypeError, match="k must be an int"):
        dg.GraphSpec(k=2.5)
    with pytest.raises(ValueError, match="metric"):
        dg.GraphSpec(metric="manhattan")
    with pytest.raises(ValueError, match="symmetrize"):
        dg.GraphSpec(symmetrize="min")
    with pytest.raises(TypeError, match="no field"):
        spec.replace(neighbours=4)
    with pytest.raises(TypeError, match="out_of_core"):
        dg.GraphSpec(out_of_core="yes")
    with pytest.raises(ValueError, match="smaller than the number of samples"):
        dg.GraphSpec(k=10).build(torch.randn(5, 3), torch.arange(5) % 2)
