"""Redundant layers from a modularity profile: the reference ΔQ rule, plateaus and degradations,
filtered by structural constraints, each removal with its reason.

Rules (``Q`` is the one-metric :class:`~dyngraph.DepthProfile`'s mean over repeats, e.g.
``dg.depth_profile(features)['modularity']``; ``M_{l-1} = max(Q_0, ..., Q_{l-1})`` its running
maximum):

========================  ===============================================  ==================
rule                      layer ``l ≥ 1`` is redundant when                default threshold
========================  ===============================================  ==================
``'delta'``               ``Q_l − Q_{l−1} < threshold`` (the reference:    0.03 (ResNet56);
                          ResNet56 on CIFAR-10 used 0.03, VGG19 used 0)    use 0 for VGG19
``'plateau'``             ``|Q_l − M_{l−1}| ≤ threshold``: no new          0.01
                          maximum, no real fall either
``'degradation'``         ``Q_l < M_{l−1} − threshold``: Q has fallen      0.0
                          below what an earlier layer reached
``'plateau+degradation'`` ``Q_l ≤ M_{l−1} + threshold`` (either of the     0.01
                          two above)
========================  ===============================================  ==================

The first profile layer (the stem) is never removed. With ``model``, the structural constraints are
checked on one forward pass: never remove the stem or the classifier; never remove a layer that
changes the shape unless ``allow_projection`` (then :func:`prune_layers` puts a shape-matching
projection in its place); keep at least ``min_per_stage`` layers in every stage (a run of
siblings at one shape, e.g. a ResNet stage). Flagged layers are considered from the most
redundant (lowest score) on, so a stage keeps its least redundant member.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .._validate import check_choice, check_flag, check_positive_int
from ..profiles._profile import DepthProfile
from ._surgery import (
    ExampleInput,
    check_surgery_model,
    infer_example_input,
    probe,
    resolve_units,
    split_name,
    stage_members,
)

RULES = ("delta", "plateau", "degradation", "plateau+degradation")
DEFAULT_THRESHOLDS = {"delta": 0.03, "plateau": 0.01, "degradation": 0.0,
                      "plateau+degradation": 0.01}
_ALIASES = {"reference": "delta", "drop": "degradation"}


@dataclass(frozen=True)
class Removal:
    """One layer to remove, and why.

    Attributes:
        layer: The profile's layer name.
        module: The module :func:`prune_layers` removes (equal to ``layer`` except for
            post-activation points, which map to their conv/linear layer).
        reason: A sentence with the numbers that triggered the removal.
        score: The rule's score (lower = more redundant; ``ΔQ`` for ``'delta'``).
        value: ``Q_l``; ``delta``: ``Q_l − Q_{l−1}``.
        projection: ``True`` when the layer changes the shape and will be replaced by a
            shape-matching projection.

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['stem', 'b1', 'b2'], 'modularity', torch.tensor([.1, .3, .31]))
        >>> r = dg.prune.redundant_layers(q)[0]
        >>> isinstance(r, dg.prune.Removal), r.module, round(r.delta, 2)
        (True, 'b2', 0.01)
    """

    layer: str
    module: str
    reason: str
    score: float
    value: float
    delta: float
    projection: bool = False


class Redundancy(Sequence):
    """The layers to remove (in depth order), what was kept despite being flagged, and how.

    Behaves as a sequence of :class:`Removal`; ``layers`` gives the module names to pass to
    :func:`prune_layers` (which also accepts this object directly).

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.resnet20()
        >>> q = dg.DepthProfile(dg.default_layers(m), 'modularity', torch.zeros(10))
        >>> red = dg.prune.redundant_layers(q, model=m)
        >>> len(red), red.layers[:2], red.kept['layer2.0'][:17]
        (6, ['layer1.0', 'layer1.1'], 'changes the shape')
        >>> p = dg.prune.prune_layers(m, red)
        >>> [len(p.layer1), len(p.layer2), len(p.layer3)]
        [1, 1, 1]
    """

    def __init__(self, removals: Sequence[Removal], kept: Dict[str, str], method: str,
                 params: Dict[str, Any], checked: bool, order: Sequence[str]):
        pos = {n: i for i, n in enumerate(order)}
        self.removals: List[Removal] = sorted(removals, key=lambda r: pos.get(r.layer, 0))
        self.kept = dict(kept)
        self.method = method
        self.params = dict(params)
        self.structure_checked = checked

    def __getitem__(self, i):
        return self.removals[i]

    def __len__(self) -> int:
        return len(self.removals)

    @property
    def layers(self) -> List[str]:
        """Module names to remove, in depth order."""
        return [r.module for r in self.removals]

    def __repr__(self) -> str:
        return (f"Redundancy(method={self.method!r}, remove={self.layers}, kept_flagged="
                f"{list(self.kept)}, structure_checked={self.structure_checked})")

    def to_dict(self) -> Dict[str, Any]:
        return {"method": self.method, "params": self.params,
                "structure_checked": self.structure_checked,
                "remove": [asdict(r) for r in self.removals], "kept": dict(self.kept)}

    def table(self) -> str:
        """Markdown table of the removals and of the flagged layers that were kept."""
        rows = ["| layer | module | Q | ΔQ | decision |", "|---|---|---|---|---|"]
        rows += [f"| {r.layer} | {r.module} | {r.value:.4f} | {r.delta:+.4f} | remove: {r.reason} |"
                 for r in self.removals]
        rows += [f"| {layer} | | | | keep: {why} |" for layer, why in self.kept.items()]
        return "\n".join(rows)


# ---------------------------------------------------------------------------- scores
def _rule(rule: str) -> str:
    return check_choice(_ALIASES.get(rule, rule), "rule", RULES)


def as_profile(profile: Any, name: str = "profile") -> DepthProfile:
    """A one-metric profile with at least 2 layers and finite means."""
    if not isinstance(profile, DepthProfile):
        raise TypeError(f"{name} must be a one-metric dg.DepthProfile (e.g. "
                        f"dg.depth_profile(features)['modularity']), got {type(profile).__name__}")
    if len(profile.metrics) != 1:
        raise ValueError(f"{name} must hold one metric, got {profile.metrics}: select one with "
                         f"{name}[{profile.metrics[0]!r}]")
    if len(profile) < 2:
        raise ValueError(f"{name} needs at least 2 layers to find redundant ones, got "
                         f"{len(profile)}: {profile.layers}")
    if not bool(torch.isfinite(profile.values).all()):
        raise ValueError(f"{name} has non-finite values: {profile.values.tolist()}")
    return profile


def layer_scores(profile: DepthProfile, rule: str = "delta") -> torch.Tensor:
    """Per-layer redundancy score ``[L]`` (lower = more redundant; ``nan`` for layer 0).

    ``'delta'``: ``Q_l − Q_{l−1}``; ``'plateau'``: ``|Q_l − M_{l−1}|``; ``'degradation'`` and
    ``'plateau+degradation'``: ``Q_l − M_{l−1}``, with ``M`` the running maximum.

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['a', 'b', 'c', 'd'], 'modularity', torch.tensor([.1, .5, .4, .6]))
        >>> [round(v, 2) for v in dg.prune.layer_scores(q, 'delta').tolist()[1:]]
        [0.4, -0.1, 0.2]
        >>> [round(v, 2) for v in dg.prune.layer_scores(q, 'degradation').tolist()[1:]]
        [0.4, -0.1, 0.1]
    """
    rule = _rule(rule)
    q = as_profile(profile).values
    out = torch.full_like(q, float("nan"))
    if rule == "delta":
        out[1:] = q[1:] - q[:-1]
        return out
    run_max = torch.cummax(q, 0).values
    gap = q[1:] - run_max[:-1]
    out[1:] = gap.abs() if rule == "plateau" else gap
    return out


def _flag(rule: str, q: torch.Tensor, l: int, threshold: float, layers: List[str]) \
        -> Optional[str]:
    """The reason layer ``l`` is flagged by the rule, or ``None``."""
    prev, val = float(q[l - 1]), float(q[l])
    if rule == "delta":
        d = val - prev
        if d < threshold:
            return (f"ΔQ = Q({layers[l]}) − Q({layers[l - 1]}) = {val:.4f} − {prev:.4f} = "
                    f"{d:+.4f} < {threshold:g}")
        return None
    j = int(torch.argmax(q[:l]))
    mx = float(q[j])
    gap = val - mx
    plateau = abs(gap) <= threshold
    if rule == "plateau" and plateau:
        return (f"plateau: Q = {val:.4f} stays within {threshold:g} of the running maximum "
                f"{mx:.4f} (at {layers[j]})")
    if rule == "degradation" and gap < -threshold:
        return (f"degradation: Q = {val:.4f} is {-gap:.4f} below the running maximum {mx:.4f} "
                f"(at {layers[j]})")
    if rule == "plateau+degradation" and gap <= threshold:
        what = "plateau" if plateau else "degradation"
        return (f"{what}: Q = {val:.4f} does not exceed the running maximum {mx:.4f} (at "
                f"{layers[j]}) by more than {threshold:g}")
    return None


# ---------------------------------------------------------------------------- structure
@dataclass
class LayerInfo:
    """Structural facts about one profile layer (from one forward pass)."""

    layer: str
    module: str  # what prune_layers removes for it
    stage: str
    stage_members: List[str]  # the removable units of its stage
    blocked: Optional[str]  # why it can never be removed (stem, classifier, shape), or None
    projection: bool = False  # it changes the shape: a projection takes its place


def layer_structure(layers: Sequence[str], model: Optional[nn.Module] = None,
                    example_input: Optional[ExampleInput] = None,
                    allow_projection: bool = False) -> Dict[str, LayerInfo]:
    """Per profile layer: its unit (what would be removed), its stage, and why it may never be
    removed. Without ``model`` only the first layer is blocked and stages are the parents in the
    dotted names.
    """
    if model is None:
        parents = [split_name(name)[0] for name in layers]
        return {name: LayerInfo(name, name, parent,
                                [n for n, p in zip(layers, parents) if p == parent],
                                "the first layer (stem)" if i == 0 else None)
                for i, (name, parent) in enumerate(zip(layers, parents))}
    check_surgery_model(model)
    if example_input is None:
        example_input = infer_example_input(model)
    shapes = probe(model, example_input)
    units = resolve_units(model, list(layers), shapes)
    modules = dict(model.named_modules())
    infos = {}
    for i, (name, unit) in enumerate(zip(layers, units)):
        blocked = None
        if i == 0:
            blocked = "the first layer (stem)"
        elif unit.protected:
            blocked = f"never removed: {unit.protected}"
        elif unit.calls > 1:
            blocked = f"runs {unit.calls} times per forward pass (shared weights)"
        elif unit.shape_change and not allow_projection:
            blocked = (f"changes the shape {list(unit.in_shape or ())} → "
                       f"{list(unit.out_shape or ())} (allow_projection=True would replace it "
                       f"by a projection)")
        members = stage_members(modules[unit.parent], unit.parent, unit.stage, shapes)
        infos[name] = LayerInfo(name, unit.module, unit.stage, members, blocked,
                                unit.shape_change)
    return infos


def select_layers(profile: DepthProfile, ranking: Sequence[str], reasons: Dict[str, str],
                  n: Optional[int], scores: torch.Tensor, method: str, params: Dict[str, Any],
                  *, model: Optional[nn.Module] = None,
                  example_input: Optional[ExampleInput] = None, allow_projection: bool = False,
                  min_per_stage: int = 1) -> Redundancy:
    """Greedy pick along ``ranking`` (most redundant first) under the structural constraints.

    Args:
        profile: The one-metric profile (``Q``, reported per removal; may be all ``nan``).
        ranking: Candidate layers, most redundant first.
        reasons: The flagged layers (threshold mode, ``n is None``: every flagged layer that
            fits is removed) or the reason text of every ranked layer (budget mode: the first
            ``n`` that fit are removed).
        n: The budget, or ``None``.
        scores: ``[L]`` the method's score per layer (lower = more redundant).
        method, params: Recorded in the result.
        model, example_input, allow_projection, min_per_stage: The structural constraints
            (:func:`layer_structure`).
    """
    check_positive_int(min_per_stage, "min_per_stage", minimum=0)
    check_flag(allow_projection, "allow_projection")
    if model is None and example_input is not None:
        raise ValueError("example_input= is an input for model=; give the model too (without "
                         "it the structural checks do not run)")
    layers, values = profile.layers, profile.values
    infos = layer_structure(layers, model, example_input, allow_projection)
    pos = {name: i for i, name in enumerate(layers)}
    removed_modules: Dict[str, set] = {}
    chosen: List[Removal] = []
    kept: Dict[str, str] = {}
    for name in [r for r in ranking if r in reasons]:
        if n is not None and len(chosen) >= n:
            break
        info = infos[name]
        if info.blocked:
            kept[name] = info.blocked
            continue
        gone = removed_modules.setdefault(info.stage, set())
        if info.module in gone:  # two profile points on the same layer
            continue
        remaining = [m for m in info.stage_members if m not in gone and m != info.module]
        if len(remaining) < min_per_stage:
            kept[name] = (f"keeps {min_per_stage} layer(s) in stage {info.stage!r} "
                          f"({len(info.stage_members)} there)")
            continue
        gone.add(info.module)
        i = pos[name]
        delta = float(values[i] - values[i - 1]) if i > 0 else float("nan")
        reason = reasons[name] + (" — replaced by a shape-matching projection"
                                  if info.projection else "")
        chosen.append(Removal(name, info.module, reason, float(scores[i]), float(values[i]),
                              delta, info.projection))
    if n is not None and len(chosen) < n:
        raise ValueError(f"n_remove={n} but only {len(chosen)} layers can be removed under the "
                         f"structural constraints (kept: {kept})")
    return Redundancy(chosen, kept, method, params, model is not None, layers)


def redundant_layers(profile: DepthProfile, rule: str = "delta",
                     threshold: Optional[float] = None, *, model: Optional[nn.Module] = None,
                     example_input: Optional[ExampleInput] = None,
                     n_remove: Optional[int] = None, allow_projection: bool = False,
                     min_per_stage: int = 1) -> Redundancy:
    """Layers to remove according to a modularity profile, each with its reason.

    Args:
        profile: A one-metric :class:`~dyngraph.DepthProfile` over the candidate layers, e.g.
            ``dg.depth_profile(features, 'modularity')['modularity']`` of
            ``dg.default_layers(model)`` (the stem and every residual block); its mean over
            repeats is ``Q``.
        rule: ``'delta'`` (the reference ΔQ rule; alias ``'reference'``), ``'plateau'``,
            ``'degradation'`` or ``'plateau+degradation'`` (see the module docstring).
        threshold: The rule's threshold (default: 0.03, 0.01, 0.0, 0.01 respectively).
        model: The network the profile was computed on; enables the structural constraints.
        example_input: An input the model accepts (guessed when ``None``).
        n_remove: Remove exactly this many layers: the most redundant by the rule's score that
            satisfy the constraints (the threshold is then not used).
        allow_projection: Allow removing layers that change the shape (replaced by projections).
        min_per_stage: Layers every stage keeps.

    Returns:
        A :class:`Redundancy`: the removals (layer, module, reason, Q, ΔQ) in depth order, and
        the flagged layers that were kept, with the constraint that kept them.

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['stem', 'b1', 'b2', 'b3'], 'modularity',
        ...                     torch.tensor([0.10, 0.30, 0.31, 0.50]))
        >>> r = dg.prune.redundant_layers(q, rule='delta', threshold=0.03)
        >>> r.layers, r[0].reason
        (['b2'], 'ΔQ = Q(b2) − Q(b1) = 0.3100 − 0.3000 = +0.0100 < 0.03')
    """
    rule = _rule(rule)
    profile = as_profile(profile)
    if threshold is None:
        threshold = DEFAULT_THRESHOLDS[rule]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got threshold={threshold!r}")
    if rule in ("plateau", "degradation", "plateau+degradation") and threshold < 0:
        raise ValueError(f"threshold is a tolerance for rule={rule!r} and must be >= 0, got "
                         f"threshold={threshold}")
    if n_remove is not None:
        check_positive_int(n_remove, "n_remove")
    layers, q = profile.layers, profile.values
    scores = layer_scores(profile, rule)
    order = sorted(range(1, len(layers)), key=lambda i: (float(scores[i]), i))
    reasons = {}
    for rank, i in enumerate(order):
        why = _flag(rule, q, i, float(threshold), layers)
        if n_remove is not None:  # budget mode: every layer is ranked, flagged or not
            why = (why or f"{rule} score {float(scores[i]):+.4f}") + \
                f" (rank {rank + 1} of {len(order)} by {rule} score)"
        if why is not None:
            reasons[layers[i]] = why
    params = {"rule": rule, "threshold": float(threshold), "n_remove": n_remove,
              "allow_projection": allow_projection, "min_per_stage": min_per_stage}
    return select_layers(profile, [layers[i] for i in order], reasons, n_remove, scores,
                         f"modularity/{rule}", params, model=model, example_input=example_input,
                         allow_projection=allow_projection, min_per_stage=min_per_stage)


__all__ = ["DEFAULT_THRESHOLDS", "LayerInfo", "RULES", "Redundancy", "Removal",
           "layer_scores", "layer_structure", "redundant_layers", "select_layers"]
