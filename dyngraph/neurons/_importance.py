"""Importance of groups of neurons: lesion a group, measure the accuracy drop, compare with random
same-size groups of the same layer (Hod et al. 2022).

A lesion zeroes the group's incoming weights and biases (and, where a BatchNorm follows, its scale
and shift), so each lesioned neuron's pre-activation is exactly 0. It is applied as an edit of
:class:`dyngraph.capture.LayerTaps` that multiplies the unit module's output (the BatchNorm, else
the layer) by a 0/1 mask, which is the same thing and leaves the model untouched (no hook is left
and its training mode is restored, also after an error). Many masks run in one batched forward
pass: the batch is repeated once per mask.

Per group: the overall drop ``d``, its percentile among the random groups' drops, the p-value
``(1 + #{random drop ≥ d}) / (n + 1)``, and the same for the largest per-class drop (a group that
matters for one class only). Across groups: Benjamini–Hochberg q-values and Fisher's combined
p-value.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._json import JsonFile
from .._validate import check_labels, check_positive_int, compact_labels, model_device
from ..capture._taps import Edit, LayerTaps
from ..capture._taps import split_batch as _split_batch
from ..capture._taps import to_device as _to
from ._groups import NeuronGroup, group_row, groups_to_test, layer_masks
from ._stats import compare

if TYPE_CHECKING:
    from torch_geometric.data import Data


class _Lesion:
    """The edit that lesions ``module``: its output ``[B, C, ...]`` times a 0/1 mask per channel,
    for each of the ``M`` masks in :attr:`mask` ``[M, C]``. With ``expand='hook'`` the batch is
    repeated here (``[M * B, C, ...]``), with ``'input'`` it arrives repeated (``M * B`` rows).
    ``strict=False`` is the probe of :meth:`LesionRunner._expand_mode`: no shape checks, and the
    mask keeps its dtype."""

    def __init__(self, module: Optional[str], expand: str, strict: bool = True) -> None:
        self.module, self.expand, self.strict = module, expand, strict
        self.mask = torch.ones(1, 1)

    def __call__(self, output: Tensor) -> Tensor:
        (m, c), shape = self.mask.shape, output.shape
        if self.strict and (output.dim() < 2 or shape[1] != c):
            raise ValueError(f"module {self.module!r} gave output {tuple(shape)}, which "
                             f"does not hold {c} channels per sample")
        mk = self.mask.view(m, 1, c, *([1] * (output.dim() - 2)))
        mk = mk.to(output.dtype) if self.strict else mk
        if self.expand == "hook":
            return (output.unsqueeze(0) * mk).reshape(m * shape[0], *shape[1:])
        if self.strict and shape[0] % m:
            raise ValueError(f"module {self.module!r}: batch {shape[0]} is not a multiple "
                             f"of {m} masks")
        return (output.reshape(m, shape[0] // m, *shape[1:]) * mk).reshape(shape)


class LesionRunner:
    """Accuracy of a model under many neuron masks of one layer, batched.

    Each mask multiplies the output channels of one module (a lesion); the masks run through
    :class:`dyngraph.capture.LayerTaps` edits, so the model is left unchanged, without hooks and
    in its own training mode.

    Args:
        model: The network (left unchanged).
        loader: Batches ``(inputs, labels)``; read once and kept. A label is the index of its
            class's logit (a label beyond the model's logits is a ``ValueError``).
        device: Where to run.
        max_rows: Largest batch (masks × samples) per forward pass.
        batch_fn: ``batch -> (inputs, labels)`` for batches of another shape.

    Attributes:
        classes: ``[K]`` the labels present in the data, sorted: the per-class axis of
            :meth:`accuracy` (sized by the classes present, not by the largest label).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> ds = TensorDataset(torch.randn(40, 4), torch.arange(40) % 2)
        >>> runner = dg.neurons.LesionRunner(m, DataLoader(ds, batch_size=20))
        >>> masks = torch.ones(3, 8)
        >>> masks[1, :4] = 0.0                                  # lesion neurons 0-3 of layer '0'
        >>> masks[2] = 0.0                                      # the whole layer
        >>> overall, per_class = runner.accuracy('0', masks)
        >>> overall.shape, per_class.shape, float(overall[0]) == float(runner.accuracy()[0][0])
        (torch.Size([3]), torch.Size([3, 2]), True)
    """

    def __init__(self, model: nn.Module, loader: Any,
                 device: Optional[Union[str, torch.device]] = None, max_rows: int = 8192,
                 batch_fn: Optional[Callable[[Any], Tuple[Any, Any]]] = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"loader must be an iterable of batches (a DataLoader), got "
                            f"{type(loader).__name__}")
        self.model = model
        self.device = torch.device(device) if device is not None else model_device(model)
        self.max_rows = check_positive_int(max_rows, "max_rows")
        self.batches: List[Tuple[Tensor, Tensor]] = []
        for batch in loader:
            x, y = _split_batch(batch, batch_fn)
            if not isinstance(x, Tensor):
                raise TypeError("lesion tests need tensor inputs; pass batch_fn to select them")
            self.batches.append((x, torch.as_tensor(y).reshape(-1).long()))
        if not self.batches:
            raise ValueError("the loader produced no samples")
        y_all = torch.cat([y for _, y in self.batches])
        check_labels(y_all, y_all.numel(), "labels")
        # The per-class axis holds the classes present, in sorted order (never max(y) + 1
        # slots): labels are compared with the logits' argmax, and counted by class position.
        codes, classes = compact_labels(y_all)
        self.classes: Tensor = classes.cpu()
        self.num_classes = int(classes.numel())
        self.class_counts = torch.bincount(codes, minlength=self.num_classes).double().to(
            self.device)
        # each batch's class positions, for the per-class counts
        self._codes: List[Tensor] = list(codes.split([y.numel() for _, y in self.batches]))
        self.n = int(y_all.numel())
        self._modes: Dict[str, str] = {}

    def _forward_correct(self, module: Optional[str], masks: Tensor, expand: str) -> Tensor:
        """Correct predictions per class ``[M, K]``; ``expand='hook'`` repeats the batch at the
        lesioned module (upstream runs once), ``'input'`` repeats the inputs (always valid).
        ``module=None`` runs the intact model (one row)."""
        dev = self.device
        m_total = masks.shape[0]
        out = torch.zeros(m_total, self.num_classes, dtype=torch.float64, device=dev)
        lesion = _Lesion(module, expand)
        edits: Dict[str, Edit] = {module: lesion} if module is not None else {}
        with LayerTaps(self.model, [], edits=edits) as taps:
            for (x, y), codes in zip(self.batches, self._codes):
                x, y, codes = _to(x, dev), y.to(dev), codes.to(dev)
                b = x.shape[0]
                step = max(1, self.max_rows // max(b, 1)) if module is not None else 1
                for s in range(0, m_total, step):
                    lesion.mask = masks[s:s + step]
                    m = lesion.mask.shape[0]
                    xr = x.repeat(m, *([1] * (x.dim() - 1))) if (
                        module is not None and expand == "input") else x
                    logits = taps.run(xr)
                    if logits.shape[0] != m * b:
                        raise ValueError(f"the model returned {logits.shape[0]} rows for "
                                         f"{m} masks x {b} samples")
                    if int(self.classes[-1]) >= logits.shape[-1]:
                        raise ValueError(f"labels: the loader holds label "
                                         f"{int(self.classes[-1])}, but the model gives "
                                         f"{logits.shape[-1]} logits; a label is the index of "
                                         f"its class's logit (relabel them 0..K-1)")
                    hits = (logits.argmax(-1).view(m, b) == y.unsqueeze(0)).double()
                    out[s:s + m].index_add_(1, codes, hits)
        return out

    def _expand_mode(self, module: str, size: int) -> str:
        """``'hook'`` when repeating at the module gives the same logits as repeating the inputs
        (a chain without skips around it), else ``'input'``."""
        if module in self._modes:
            return self._modes[module]
        x = _to(self.batches[0][0][:8], self.device)
        masks = torch.ones(2, size, device=self.device)
        masks[1, : max(1, size // 2)] = 0.0
        outs: Dict[str, Optional[Tensor]] = {}
        for mode_try in ("input", "hook"):
            lesion = _Lesion(module, mode_try, strict=False)
            lesion.mask, outs[mode_try] = masks, None
            with LayerTaps(self.model, [], edits={module: lesion}) as taps, \
                    contextlib.suppress(Exception):
                xr = x.repeat(2, *([1] * (x.dim() - 1))) if mode_try == "input" else x
                outs[mode_try] = taps.run(xr)
        a, b = outs["input"], outs["hook"]
        same = a is not None and b is not None and a.shape == b.shape and \
            torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        self._modes[module] = "hook" if same else "input"
        return self._modes[module]

    def correct(self, module: Optional[str], masks: Optional[Tensor]) -> Tensor:
        """Correct predictions per class ``[M, K]`` with each mask ``[M, C]`` applied to the output
        channels of ``module`` (``module=None``: the intact model, ``M = 1``)."""
        with torch.no_grad():
            if module is None or masks is None:
                return self._forward_correct(None, torch.ones(1, 1, device=self.device), "input")
            masks = masks.to(self.device, torch.float32)
            if masks.dim() != 2:
                raise ValueError(f"masks must be [M, C], got shape {tuple(masks.shape)}")
            mode = self._expand_mode(module, masks.shape[1])
            return self._forward_correct(module, masks, mode)

    def accuracy(self, module: Optional[str] = None, masks: Optional[Tensor] = None
                 ) -> Tuple[Tensor, Tensor]:
        """``(overall [M], per class [M, K])`` accuracy; the ``K`` classes are those present
        in the data, in sorted order (:attr:`classes`)."""
        c = self.correct(module, masks)
        return c.sum(1) / self.n, c / self.class_counts.clamp_min(1)


@dataclass
class ImportanceResult(JsonFile):
    """Lesion importance of each cluster ∩ layer group.

    A group is *important* when its Benjamini–Hochberg q-value (over the groups) is ``<= alpha``;
    ``summary()`` also counts the groups with a raw p-value ``<= alpha`` (``*_nominal``).

    Attributes:
        groups: One row (dict) per group: layer, cluster, size, layer_size, neurons, acc_drop,
            random_drop_mean, percentile, p_value, q_value, important, class_drop_max,
            class_drops, class_percentile, class_p_value, class_q_value, important_class.
        base_accuracy: Accuracy of the intact model.
        base_class_accuracy: ``[K]`` per-class accuracy of the intact model, for the ``K``
            classes present in the data (their labels, sorted, in ``meta['classes']``).
        fisher_p: Fisher's combination of the groups' p-values (overall drop).
        fisher_p_class: The same for the largest per-class drop.
        n_random: ``n``, random groups per group.
        alpha: The q-value threshold of ``important``.
        drops: ``[G]``; random_drops ``[G, n]``; class_drops ``[G, K]``; random_class_drops
            ``[G, n, K]``.
        meta: Settings (default ``{}``).

    Returned by :func:`lesion_importance` (and kept in :attr:`NeuronReport.importance`).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> dl = DataLoader(TensorDataset(torch.randn(40, 4), torch.arange(40) % 2), batch_size=20)
        >>> g = dg.neurons.neuron_graph(m, include_output=True)     # 8 hidden + 2 output neurons
        >>> r = dg.neurons.lesion_importance(m, g, torch.arange(10) % 2, dl, n_random=19,
        ...                                  progress=False)
        >>> r.drops.shape, r.random_drops.shape, r.class_drops.shape, len(r.base_class_accuracy)
        (torch.Size([2]), torch.Size([2, 19]), torch.Size([2, 2]), 2)
        >>> r.n_important == r.summary()['n_important']
        True
    """

    groups: List[Dict[str, Any]]
    base_accuracy: float
    base_class_accuracy: List[float]
    fisher_p: Optional[float]
    fisher_p_class: Optional[float]
    n_random: int
    alpha: float
    drops: Tensor
    random_drops: Tensor
    class_drops: Tensor
    random_class_drops: Tensor
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_important(self) -> int:
        return sum(bool(g["important"]) for g in self.groups)

    @property
    def n_important_class(self) -> int:
        return sum(bool(g["important_class"]) for g in self.groups)

    def summary(self) -> Dict[str, Any]:
        n = len(self.groups)
        nominal = sum(g["p_value"] <= self.alpha for g in self.groups)
        nominal_c = sum(g["class_p_value"] <= self.alpha for g in self.groups)
        return {"n_groups": n, "n_important": self.n_important,
                "n_important_class": self.n_important_class,
                "n_important_nominal": nominal, "n_important_class_nominal": nominal_c,
                "share_important": self.n_important / n if n else 0.0,
                "share_important_class": self.n_important_class / n if n else 0.0,
                "fisher_p": self.fisher_p, "fisher_p_class": self.fisher_p_class,
                "base_accuracy": self.base_accuracy, "n_random": self.n_random,
                "alpha": self.alpha}

    def to_dict(self) -> Dict[str, Any]:
        return {"summary": self.summary(), "groups": self.groups,
                "base_class_accuracy": self.base_class_accuracy, "meta": self.meta}

    def __repr__(self) -> str:
        s = self.summary()
        fp = "n/a" if s["fisher_p"] is None else f"{s['fisher_p']:.3g}"
        return (f"ImportanceResult(groups={s['n_groups']}, important={s['n_important']}, "
                f"important_for_a_class={s['n_important_class']}, fisher_p={fp}, "
                f"n_random={self.n_random}, base_accuracy={self.base_accuracy:.4f})")


def lesion_importance(model: nn.Module, data: Data, clusters: Tensor, loader: Any, *,
                      n_random: int = 99, seed: int = 0, min_size: int = 2,
                      max_fraction: float = 0.99, alpha: float = 0.05,
                      device: Optional[Union[str, torch.device]] = None,
                      max_rows: int = 8192, groups: Optional[Sequence[NeuronGroup]] = None,
                      progress: bool = True) -> ImportanceResult:
    """Lesion test of each cluster ∩ layer group against random same-size groups.

    Args:
        model: The network the graph was built from.
        data: Its neuron graph (:func:`dyngraph.neurons.neuron_graph`).
        clusters: ``[num_nodes]`` partition of the graph's nodes.
        loader: Evaluation batches ``(inputs, labels)`` (e.g. the test set).
        n_random: Random groups per group (>= 19, so that p can reach 0.05).
        seed: Seed of the random groups.
        min_size, max_fraction: Which groups are tested (2 neurons to 99% of the layer).
        alpha: Level of the Benjamini–Hochberg procedure that flags a group as important.
        device: Where to run (default: the model's device).
        max_rows: Largest (masks × samples) batch per forward pass.
        groups: Groups to test instead of ``neuron_groups(data, clusters, ...)``.
        progress: Progress bar over layers.

    Returns:
        :class:`ImportanceResult`.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> ds = TensorDataset(torch.randn(40, 4), torch.arange(40) % 2)
        >>> g = dg.neurons.neuron_graph(m, include_output=True)     # 8 hidden + 2 output neurons
        >>> dl = DataLoader(ds, batch_size=20)
        >>> r = dg.neurons.lesion_importance(m, g, torch.arange(10) % 2, dl, n_random=19,
        ...                                  progress=False)
        >>> len(r.groups), r.groups[0]['size']
        (2, 4)
    """
    groups, alpha = groups_to_test(data, clusters, groups, n_random, alpha, min_size,
                                   max_fraction)
    runner = LesionRunner(model, loader, device=device, max_rows=max_rows)
    base, base_cls = runner.accuracy()
    base, base_cls = base[0], base_cls[0]
    k, g_n = runner.num_classes, len(groups)
    drops = torch.zeros(g_n, dtype=torch.float64)
    rnd = torch.zeros(g_n, n_random, dtype=torch.float64)
    cdrops = torch.zeros(g_n, k, dtype=torch.float64)
    rcdrops = torch.zeros(g_n, n_random, k, dtype=torch.float64)
    for li, idx, masks in layer_masks(groups, data, n_random, seed, runner.device, "lesions",
                                      progress):
        acc, acc_cls = runner.accuracy(data.unit_modules[li], masks)
        d = (base - acc).view(len(idx), 1 + n_random).cpu()
        dc = (base_cls.unsqueeze(0) - acc_cls).view(len(idx), 1 + n_random, k).cpu()
        drops[idx], rnd[idx] = d[:, 0], d[:, 1:]
        cdrops[idx], rcdrops[idx] = dc[:, 0], dc[:, 1:]
    # every class of the per-class axis is present in the data (runner.classes)
    cmax = cdrops.amax(1) if g_n else torch.zeros(0, dtype=torch.float64)
    rcmax = rcdrops.amax(2) if g_n else torch.zeros(0, n_random, dtype=torch.float64)
    rows: List[Dict[str, Any]] = []
    fisher: Optional[float] = None
    fisher_c: Optional[float] = None
    if g_n:
        p, q, pct, fisher = compare(drops, rnd)
        pc, qc, pctc, fisher_c = compare(cmax, rcmax)
        for i, g in enumerate(groups):
            rows.append({
                **group_row(g), "neurons": g.neurons.tolist(),
                "acc_drop": float(drops[i]), "random_drop_mean": float(rnd[i].mean()),
                "percentile": float(pct[i]), "p_value": float(p[i]), "q_value": float(q[i]),
                "important": bool(q[i] <= alpha), "class_drop_max": float(cmax[i]),
                "class_drop_argmax": int(runner.classes[cdrops[i].argmax()]),
                "class_drops": [round(v, 6) for v in cdrops[i].tolist()],
                "class_percentile": float(pctc[i]), "class_p_value": float(pc[i]),
                "class_q_value": float(qc[i]), "important_class": bool(qc[i] <= alpha)})
    meta = {"seed": seed, "min_size": min_size, "max_fraction": max_fraction, "n_samples": runner.n,
            "classes": runner.classes.tolist()}
    return ImportanceResult(rows, float(base), base_cls.cpu().tolist(), fisher, fisher_c,
                            n_random, alpha, drops, rnd, cdrops, rcdrops, meta)
