"""Block Influence and angular distance against direct numpy computations, and as registered
pair measures."""
import math

import numpy as np
import pytest
import torch

import dyngraph as dg
from dyngraph.measures import angular_distance, block_influence, last_token


def _np_cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture
def states():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 5, generator=g)
    b = a + 0.7 * torch.randn(3, 7, 5, generator=g)
    # right padding, left padding and none
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [1] * 7])
    return a, b, mask


def test_block_influence_is_one_minus_mean_token_cosine(states):
    a, b, mask = states
    cos = _np_cos(a.numpy(), b.numpy())
    keep = mask.numpy().astype(bool)
    assert block_influence(a, b, mask) == pytest.approx(1 - cos[keep].mean(), abs=1e-6)
    assert block_influence(a, b) == pytest.approx(1 - cos.mean(), abs=1e-6)
    # rows that are tokens already
    assert block_influence(a[keep], b[keep]) == pytest.approx(1 - cos[keep].mean(), abs=1e-6)
    # padding really is left out: changing a padded token changes nothing
    b2 = b.clone()
    b2[0, 5] = -a[0, 5]
    assert block_influence(a, b2, mask) == pytest.approx(block_influence(a, b, mask), abs=1e-7)
    assert block_influence(a, b2) != pytest.approx(block_influence(a, b), abs=1e-4)


def test_block_influence_bfloat16_is_computed_in_float32(states):
    a, b, mask = states
    ref = block_influence(a.bfloat16().float(), b.bfloat16().float(), mask)
    assert block_influence(a.bfloat16(), b.bfloat16(), mask) == pytest.approx(ref, abs=1e-6)


def test_angular_distance_at_the_last_real_token(states):
    a, b, mask = states
    last = [3, 6, 6]  # by hand from the mask above
    cos = np.array([_np_cos(a[i, t].numpy(), b[i, t].numpy()) for i, t in enumerate(last)])
    ref = float(np.mean(np.arccos(np.clip(cos, -1, 1)) / math.pi))
    assert angular_distance(a, b, mask) == pytest.approx(ref, abs=1e-6)
    assert torch.equal(last_token(a, mask), a[torch.arange(3), torch.tensor(last)])
    nomask = float(np.mean(np.arccos(np.clip(_np_cos(a[:, -1].numpy(), b[:, -1].numpy()), -1,
                                             1)) / math.pi))
    assert angular_distance(a, b) == pytest.approx(nomask, abs=1e-6)
    assert angular_distance(a, a, mask) == pytest.approx(0.0, abs=1e-3)
    assert angular_distance(a, -a, mask) == pytest.approx(1.0, abs=1e-3)


def test_bad_inputs_are_named_errors(states):
    a, b, mask = states
    with pytest.raises(ValueError, match="one shape"):
        block_influence(a, b[:, :3])
    with pytest.raises(ValueError, match="mask must have shape"):
        block_influence(a, b, mask[:, :3])
    with pytest.raises(TypeError, match="floating-point"):
        block_influence(a.long(), b.long())
    with pytest.raises(TypeError, match="mask must be bool"):
        block_influence(a, b, mask.float())
    with pytest.raises(ValueError, match="only 0 and 1"):
        block_influence(a, b, mask * 2)
    with pytest.raises(ValueError, match="no token"):
        block_influence(a, b, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="no non-padding token"):
        angular_distance(a, b, torch.zeros_like(mask))
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        angular_distance(a[0, 0], b[0, 0])
    with pytest.raises(TypeError, match="torch.Tensor"):
        block_influence(a.numpy(), b)


def test_registered_pair_measures_through_layer_matrix(states):
    from dyngraph.measures import _criteria  # noqa: F401  (registers the measures)
    a, b, mask = states
    keep = mask.bool()
    c = b + 0.3 * torch.randn(b.shape, generator=torch.Generator().manual_seed(1))
    tokens = {"h0": a[keep], "h1": b[keep], "h2": c[keep]}
    m = dg.layer_matrix(tokens, measures=["block_influence"])
    assert m["block_influence"][0, 1].item() == pytest.approx(block_influence(a, b, mask),
                                                              abs=1e-6)
    assert m["block_influence"][1, 2].item() == pytest.approx(block_influence(b, c, mask),
                                                              abs=1e-6)
    lasts = {k: last_token(v, mask) for k, v in (("h0", a), ("h1", b), ("h2", c))}
    m = dg.layer_matrix(lasts, measures=["angular_distance"])
    assert m["angular_distance"][0, 2].item() == pytest.approx(angular_distance(a, c, mask),
                                                               abs=1e-6)
    assert m.meta["distance"] == {"angular_distance": True}
