"""Coherence of groups of neurons: do a group's neurons respond to the same input features?

Each group is scored by one or more methods and compared with random same-size groups from the
same layer (percentile, permutation p-value, Benjamini–Hochberg q-value, Fisher's combination).
Neuron activations are read after the activation function (a conv channel averaged over space) and
z-scored over the dataset, so that every neuron weighs the same in a group's mean activation.

Methods:

* ``'labels'`` (dataset examples): the entropy (nats) of the true labels of the ``top_k`` inputs
  that activate the group's mean most. Lower entropy = more coherent.
* ``'pixels'`` (input-feature association): the largest ``|Pearson r|`` between the group's mean
  activation and any input feature (pixel). Higher = more coherent.
* ``'feature_vis'`` (feature visualisation): inputs optimised by gradient ascent (Adam) to maximise
  the group's mean z-scored pre-activation (before the nonlinearity, so that the gradient never
  vanishes in a dead ReLU zone), on a sphere around the data mean (``x = mean + r·u/‖u‖``,
  ``r`` = the data's RMS distance from its mean), so every group gets the same input budget; the
  score is the mean z-score reached. Higher = the neurons can be driven together by one input,
  i.e. they share a preferred input direction.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._json import JsonFile
from .._validate import (
    check_choice,
    check_choices,
    check_features,
    check_labels,
    check_positive_int,
    compact_labels,
    model_device,
)
from ..capture._taps import LayerTaps
from ._chain import NeuronLayer, layer_activations, weight_chain
from ._groups import NeuronGroup, group_row, groups_to_test, layer_masks
from ._stats import compare

if TYPE_CHECKING:
    from torch_geometric.data import Data

METHODS = ("labels", "pixels", "feature_vis")
# Whether a larger score means more coherent.
GREATER = {"labels": False, "pixels": True, "feature_vis": True}


def label_entropy(scores: Tensor, y: Tensor, top_k: int, num_classes: Optional[int] = None
                  ) -> Tensor:
    """Entropy (nats) of the labels of the ``top_k`` highest-scoring samples, per column.

    Args:
        scores: ``[N, M]`` one score per sample for each of ``M`` groups.
        y: ``[N]`` labels.
        top_k: Samples kept per group.
        num_classes: ``K``, checked to exceed every label (default: any label values; they are
            class ids, so ``{0, 1, 10**9}`` gives the entropies of ``{0, 1, 2}``).

    Returns:
        ``[M]`` entropies in ``[0, ln min(K, top_k)]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> s = torch.tensor([[3., 0.], [2., 1.], [1., 2.], [0., 3.]])
        >>> h = dg.neurons.label_entropy(s, torch.tensor([0, 0, 1, 1]), 2)
        >>> [round(v, 4) for v in h.tolist()]
        [0.0, 0.0]
    """
    check_features(scores, "scores")
    n = scores.shape[0]
    y = check_labels(y, n, "y").to(scores.device)
    check_positive_int(top_k, "top_k")
    if top_k > n:
        raise ValueError(f"top_k={top_k} exceeds the number of samples N={n}")
    if num_classes is not None:
        check_positive_int(num_classes, "num_classes")
        if num_classes <= int(y.max()):
            raise ValueError(f"y holds labels up to {int(y.max())}, so num_classes={num_classes} "
                             f"is too small")
    # The entropy depends on which samples share a label, not on its value: count over the
    # distinct labels only (absent classes add 0), never over max(y) + 1 slots.
    codes, classes = compact_labels(y)
    k = int(classes.numel())
    top = scores.topk(top_k, dim=0).indices  # [top_k, M]
    labels = codes[top]
    counts = torch.zeros(scores.shape[1], k, dtype=torch.float64, device=scores.device)
    counts.scatter_add_(1, labels.T, torch.ones_like(labels.T, dtype=torch.float64))
    p = counts / top_k
    return -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(1) + 0.0  # never -0.0


def _zscore(a: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    mu = a.mean(0, keepdim=True)
    sd = a.std(0, unbiased=False, keepdim=True)
    sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    return (a - mu) / sd, mu, sd


@dataclass
class CoherenceResult(JsonFile):
    """Coherence of each cluster ∩ layer group, per method.

    Attributes:
        groups: One row per group: layer, cluster, size, layer_size, and for each method ``m``:
            ``m_score``, ``m_random_mean``, ``m_percentile`` (high = more coherent than random),
            ``m_p_value``, ``m_q_value``, ``m_coherent``; plus ``coherent`` (any method).
        methods: The methods run (``'labels'``, ``'pixels'``, ``'feature_vis'``).
        fisher_p: ``{method: Fisher's combined p over the groups}``.
        n_random: ``n``, random groups per group.
        alpha: The q-value threshold of ``coherent``.
        scores, random_scores: ``{method: [G]}`` and ``{method: [G, n]}``.
        meta: Settings (default ``{}``).

    Returned by :func:`coherence` (and kept in :attr:`NeuronReport.coherence`).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> dl = DataLoader(TensorDataset(torch.randn(40, 4), torch.arange(40) % 2), batch_size=20)
        >>> g = dg.neurons.neuron_graph(m, include_output=True)     # 8 hidden + 2 output neurons
        >>> r = dg.neurons.coherence(m, g, torch.arange(10) % 2, dl, methods=['labels'],
        ...                          n_random=19, top_k=5, progress=False)
        >>> len(r.groups), r.groups[0]['size'], r.scores['labels'].shape
        (2, 4, torch.Size([2]))
        >>> r.random_scores['labels'].shape, r.n_coherent() == r.summary()['n_coherent']
        (torch.Size([2, 19]), True)
    """

    groups: List[Dict[str, Any]]
    methods: List[str]
    fisher_p: Dict[str, Optional[float]]
    n_random: int
    alpha: float
    scores: Dict[str, Tensor]
    random_scores: Dict[str, Tensor]
    meta: Dict[str, Any] = field(default_factory=dict)

    def n_coherent(self, method: Optional[str] = None) -> int:
        key = "coherent" if method is None else f"{method}_coherent"
        return sum(bool(g[key]) for g in self.groups)

    def summary(self) -> Dict[str, Any]:
        n = len(self.groups)
        out: Dict[str, Any] = {"n_groups": n, "n_coherent": self.n_coherent(),
                               "share_coherent": self.n_coherent() / n if n else 0.0}
        for m in self.methods:
            out[f"n_coherent_{m}"] = self.n_coherent(m)
            out[f"n_coherent_{m}_nominal"] = sum(g[f"{m}_p_value"] <= self.alpha
                                                 for g in self.groups)
            out[f"share_coherent_{m}"] = self.n_coherent(m) / n if n else 0.0
            out[f"fisher_p_{m}"] = self.fisher_p[m]
        out.update({"n_random": self.n_random, "alpha": self.alpha})
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"summary": self.summary(), "groups": self.groups, "meta": self.meta}

    def __repr__(self) -> str:
        s = self.summary()
        per = ", ".join(f"{m}={s[f'n_coherent_{m}']}" for m in self.methods)
        return (f"CoherenceResult(groups={s['n_groups']}, coherent={s['n_coherent']} ({per}), "
                f"n_random={self.n_random})")


def coherence(model: nn.Module, data: Data, clusters: Tensor, loader: Any, *,
              methods: Sequence[str] = ("labels", "pixels"), n_random: int = 99, seed: int = 0,
              top_k: int = 20, min_size: int = 2, max_fraction: float = 0.99,
              alpha: float = 0.05, point: str = "post", fv_steps: int = 100, fv_lr: float = 0.1,
              fv_radius: Optional[float] = None, per_class: Optional[int] = None,
              n_samples: Optional[int] = None, device: Optional[Union[str, torch.device]] = None,
              groups: Optional[Sequence[NeuronGroup]] = None, progress: bool = True
              ) -> CoherenceResult:
    """Coherence test of each cluster ∩ layer group against random same-size groups.

    Args:
        model: The network the graph was built from.
        data: Its neuron graph (:func:`dyngraph.neurons.neuron_graph`).
        clusters: ``[num_nodes]`` partition.
        loader: Batches ``(inputs, labels)`` whose activations are read.
        methods: Any of ``'labels'``, ``'pixels'``, ``'feature_vis'`` (see the module docs).
        n_random: Random groups per group (>= 19).
        seed: Seed of the random groups and of the feature-visualisation start points.
        top_k: Top-activating inputs per group for ``'labels'``.
        min_size, max_fraction: Which groups are tested.
        alpha: Benjamini–Hochberg level that flags a group as coherent.
        point: Read activations after the nonlinearity (``'post'``) or before it (``'pre'``).
        fv_steps, fv_lr, fv_radius: Feature visualisation: Adam steps, learning rate, and the
            radius of the sphere around the data mean that the inputs live on (default: the RMS
            distance of the data from its mean).
        per_class, n_samples: Class-balanced subsample of ``loader`` (default: every sample).
        device: Where to run (default: the model's device).
        groups: Groups to test instead of ``neuron_groups(data, clusters, ...)``.
        progress: Progress bars.

    Returns:
        :class:`CoherenceResult`.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> ds = TensorDataset(torch.randn(60, 4), torch.arange(60) % 2)
        >>> g = dg.neurons.neuron_graph(m, include_output=True)     # 8 hidden + 2 output neurons
        >>> r = dg.neurons.coherence(m, g, torch.arange(10) % 2, DataLoader(ds, batch_size=30),
        ...                  n_random=19, top_k=10, progress=False)
        >>> r.methods, len(r.groups)
        (['labels', 'pixels'], 2)
    """
    methods = check_choices(methods, "methods", METHODS)
    check_choice(point, "point", ("pre", "post"))
    check_positive_int(top_k, "top_k")
    check_positive_int(fv_steps, "fv_steps")
    groups, alpha = groups_to_test(data, clusters, groups, n_random, alpha, min_size,
                                   max_fraction)
    dev = torch.device(device) if device is not None else model_device(model)
    chain = {layer.name: layer for layer in weight_chain(model)}
    names = [data.layer_names[li] for li in sorted({g.layer_index for g in groups})]
    for name in names:
        if name not in chain:
            raise ValueError(f"layer {name!r} of data is not a Linear/Conv of this model")
    layers = [chain[name] for name in names]
    acts: Dict[str, Tensor] = {}
    raw: Optional[Tensor] = None
    y = torch.zeros(0, dtype=torch.long)
    if layers:
        acts, raw, y, _ = layer_activations(model, loader, layers, point=point,
                                            raw_input="pixels" in methods, per_class=per_class,
                                            n_samples=n_samples, seed=seed, device=dev,
                                            progress=progress)
        if top_k > y.numel():
            raise ValueError(f"top_k={top_k} exceeds the {y.numel()} samples of the loader")
    g_n = len(groups)
    scores = {m: torch.zeros(g_n, dtype=torch.float64) for m in methods}
    rnd = {m: torch.zeros(g_n, n_random, dtype=torch.float64) for m in methods}
    input_stats: Dict[str, Any] = {}
    pre: Dict[str, Tensor] = {}
    if "feature_vis" in methods and groups:
        input_stats = _input_stats(loader, dev)
        # Pre-activations (the unit output) have no dead zone for the gradient.
        pre, _, _, _ = layer_activations(model, loader, layers, point="pre",
                                         per_class=per_class, n_samples=n_samples, seed=seed,
                                         device=dev, progress=False)
    # raw is read for 'pixels' only; its constant features are left out
    raw_z = _zscore(raw[:, raw.std(0) > 0].double())[0] if raw is not None else None
    for li, idx, keep in layer_masks(groups, data, n_random, seed, dev, "coherence", progress):
        name = data.layer_names[li]
        sel = (1.0 - keep).double()  # [M, C] 1 on the group's neurons
        sel = sel / sel.sum(1, keepdim=True)
        mean_act = _zscore(acts[name].double())[0] @ sel.T  # [N, M]
        res: Dict[str, Tensor] = {}
        if "labels" in methods:
            res["labels"] = label_entropy(mean_act, y, top_k).cpu()
        if raw_z is not None:
            gz = _zscore(mean_act)[0]
            res["pixels"] = ((raw_z.T @ gz) / raw_z.shape[0]).abs().amax(0).cpu()
        if "feature_vis" in methods:
            _, mu_pre, sd_pre = _zscore(pre[name].double())
            res["feature_vis"] = _feature_vis(model, chain[name], sel.float(), mu_pre.float(),
                                              sd_pre.float(), input_stats, fv_steps, fv_lr,
                                              fv_radius, seed + li, dev).cpu()
        for m, v in res.items():
            v = v.view(len(idx), 1 + n_random)
            scores[m][idx], rnd[m][idx] = v[:, 0], v[:, 1:]
    rows = [group_row(g) for g in groups]
    fisher: Dict[str, Optional[float]] = {m: None for m in methods}
    for m in methods if g_n else []:
        p, q, pct, fisher[m] = compare(scores[m], rnd[m], GREATER[m])
        for i, row in enumerate(rows):
            row.update({f"{m}_score": float(scores[m][i]),
                        f"{m}_random_mean": float(rnd[m][i].mean()),
                        f"{m}_percentile": float(pct[i]), f"{m}_p_value": float(p[i]),
                        f"{m}_q_value": float(q[i]), f"{m}_coherent": bool(q[i] <= alpha)})
    for row in rows:
        row["coherent"] = any(row[f"{m}_coherent"] for m in methods)
    meta = {"seed": seed, "top_k": top_k, "point": point, "n_samples": int(y.numel()),
            "min_size": min_size, "max_fraction": max_fraction}
    if "feature_vis" in methods:
        meta.update({"fv_steps": fv_steps, "fv_lr": fv_lr,
                     "fv_radius": fv_radius if fv_radius is not None else
                     input_stats.get("radius")})
    return CoherenceResult(rows, methods, fisher, n_random, alpha, scores, rnd, meta)


def _input_stats(loader: Any, dev: torch.device) -> Dict[str, Any]:
    """Per-feature mean of the model's inputs, their RMS distance from it, and their shape."""
    total: Optional[Tensor] = None
    total_sq: Optional[Tensor] = None
    n, shape = 0, None
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError("feature visualisation needs tensor inputs")
        shape = tuple(x.shape[1:])
        f = x.to(dev).flatten(1).double()
        total = f.sum(0) if total is None else total + f.sum(0)
        total_sq = (f * f).sum(0) if total_sq is None else total_sq + (f * f).sum(0)
        n += f.shape[0]
    if n == 0 or total is None or total_sq is None:
        raise ValueError("the loader produced no samples")
    mean = total / n
    radius = float((total_sq / n - mean * mean).clamp_min(0).sum().sqrt())
    return {"mean": mean.float(), "radius": radius, "shape": shape}


def _feature_vis(model: nn.Module, layer: NeuronLayer, sel: Tensor, mu: Tensor, sd: Tensor,
                 stats: Dict[str, Any], steps: int, lr: float, radius: Optional[float],
                 seed: int, dev: torch.device) -> Tensor:
    """Mean z-scored pre-activation of each row's group reached by gradient ascent on inputs
    ``x = mean + r · u / ||u||`` (a sphere of radius ``r`` around the data mean)."""
    shape, mean = stats["shape"], stats["mean"]
    r = float(radius) if radius is not None else stats["radius"]
    if not r > 0:
        raise ValueError(f"feature visualisation needs a radius > 0, got {r!r} (constant inputs?)")
    m = sel.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(m, mean.numel(), generator=gen).to(dev).requires_grad_(True)
    assert layer.unit is not None

    def objective(taps: LayerTaps, u_: Tensor) -> Tensor:
        x = mean.unsqueeze(0) + r * u_ / u_.norm(dim=1, keepdim=True).clamp_min(1e-12)
        taps.run(x.view(m, *shape))
        a = taps.outputs["a"]
        a = a.flatten(2).mean(-1) if a.dim() > 2 else a
        return (((a - mu) / sd) * sel).sum(1)  # [M]

    opt = torch.optim.Adam([u], lr=lr)
    # The unit's raw output with its autograd graph; a module run twice: the last call counts.
    with LayerTaps(model, {layer.unit: "a"}, grad=True, reduce=False, allow_repeat=True) as taps:
        with torch.enable_grad():
            for _ in range(steps):
                obj = objective(taps, u)
                (grad,) = torch.autograd.grad(-obj.sum(), u)
                u.grad = grad
                opt.step()
        with torch.no_grad():
            obj = objective(taps, u)
    return obj.detach().double()
