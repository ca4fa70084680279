"""The whole neuron-level analysis in one call: per-group report, JSON, CSV and markdown tables.
Its figure and TensorBoard logs are drawn by :func:`dyngraph.plot` and :func:`dyngraph.log`."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._io import PathLike, atomic_write_text
from .._json import JsonFile
from .._validate import check_choice, check_choices, check_flag, check_positive_int
from ._clusterability import ClusterabilityResult, check_seed, clusterability, partition
from ._coherence import METHODS, CoherenceResult, coherence
from ._graph import SOURCES
from ._groups import MIN_RANDOM, group_row, neuron_groups
from ._importance import ImportanceResult, lesion_importance
from ._spectral import SOLVERS

if TYPE_CHECKING:
    from torch_geometric.data import Data

_SKIP_CSV = ("neurons", "class_drops")


@dataclass
class NeuronReport(JsonFile):
    """The neuron-level modularity analysis of one network.

    Attributes:
        graph: The neuron graph.
        clusters: ``[num_nodes]`` spectral partition.
        ncut: Its n-cut.
        clusterability: The shuffle test, or ``None``.
        importance: The lesion test, or ``None``.
        coherence: The coherence test, or ``None``.
        meta: Settings, model info, timings.

    Returned by :func:`neuron_report`; ``dg.plot(report)`` and ``dg.log(writer, report)`` draw and
    log it.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        ...                   nn.Linear(8, 2))
        >>> dl = DataLoader(TensorDataset(torch.randn(40, 4), torch.arange(40) % 2), batch_size=20)
        >>> r = dg.neurons.neuron_report(m, dl, n_clusters=2, n_shuffles=2, n_random=19, top_k=5,
        ...                              progress=False)
        >>> r.clusters.shape, r.clusterability.shuffled.shape, r.importance is not None
        (torch.Size([16]), torch.Size([2]), True)
        >>> len(r.groups()) == len(r.importance.groups)
        True
    """

    graph: Data
    clusters: Tensor
    ncut: float
    clusterability: Optional[ClusterabilityResult] = None
    importance: Optional[ImportanceResult] = None
    coherence: Optional[CoherenceResult] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- tables
    def groups(self) -> List[Dict[str, Any]]:
        """One row per cluster ∩ layer group: layer, cluster, size, importance and coherence
        percentiles, p- and q-values and flags."""
        rows: Dict[Tuple[int, int], Dict[str, Any]] = {}
        for res in (self.importance, self.coherence):
            for r in res.groups if res is not None else []:
                rows.setdefault((r["layer_index"], r["cluster"]), {}).update(r)
        if not rows:
            kw = {k: self.meta[k] for k in ("min_size", "max_fraction") if k in self.meta}
            for g in neuron_groups(self.graph, self.clusters, **kw):
                rows[(g.layer_index, g.cluster)] = group_row(g)
        return [rows[k] for k in sorted(rows)]

    def summary(self) -> Dict[str, Any]:
        """Headline numbers: n-cut, shuffle test, shares of important and coherent groups."""
        g = self.graph
        out: Dict[str, Any] = {"source": g.source, "n_nodes": int(g.num_nodes),
                               "n_edges": int(g.edge_index.shape[1] // 2),
                               "n_removed": int(getattr(g, "n_removed", 0)),
                               "n_clusters": int(self.clusters.unique().numel()), "ncut": self.ncut}
        if self.clusterability is not None:
            c = self.clusterability
            out.update({"ncut_shuffled_mean": c.shuffled_mean, "ncut_shuffled_std": c.shuffled_std,
                        "clusterability_p": c.p_value, "clusterability_z": c.z_score,
                        "n_shuffles": int(c.shuffled.numel())})
        for test, res in (("importance", self.importance), ("coherence", self.coherence)):
            if res is not None:  # counts and shares keep their names, the rest get the prefix
                out.update({k if k.startswith(("n_", "share_")) else f"{test}_{k}": v
                            for k, v in res.summary().items()
                            if k not in ("n_random", "alpha", "n_groups")})
        rows = self.groups()
        out["n_groups"] = len(rows)
        if self.importance is not None and self.coherence is not None and rows:
            both = sum(bool(r.get("important") or r.get("important_class")) and
                       bool(r.get("coherent")) for r in rows)
            out["n_important_and_coherent"] = both
            out["share_important_and_coherent"] = both / len(rows)
        return out

    def to_dict(self) -> Dict[str, Any]:
        """Summary, group rows, graph layout, clusters, the shuffle test and ``meta``."""
        g = self.graph
        return {"summary": self.summary(), "groups": self.groups(),
                "graph": {"layers": g.layer_names, "layer_sizes": g.layer_sizes,
                          "removed": getattr(g, "removed", {}), "norm": getattr(g, "norm", None),
                          "source": g.source},
                "clusters": self.clusters.tolist(),
                "clusterability": (self.clusterability.to_dict()
                                   if self.clusterability is not None else None),
                "meta": self.meta}

    def to_csv(self, path: Optional[PathLike] = None) -> str:
        """The group rows as CSV (written atomically to ``path`` when given)."""
        rows = self.groups()
        keys = list(dict.fromkeys(k for r in rows for k in r if k not in _SKIP_CSV))
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
                     for r in rows)
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_markdown(self, max_rows: int = 60) -> str:
        """A markdown table of the groups (the columns that exist)."""
        rows = self.groups()
        cols = [("layer", "layer"), ("cluster", "cluster"), ("size", "size"),
                ("layer_size", "of"), ("acc_drop", "acc drop"), ("percentile", "imp. pct"),
                ("p_value", "imp. p"), ("q_value", "imp. q"), ("class_drop_max", "max class drop"),
                ("class_p_value", "class p"), ("labels_score", "label H"),
                ("labels_percentile", "H pct"), ("labels_p_value", "H p"),
                ("pixels_score", "pixel |r|"), ("pixels_percentile", "|r| pct"),
                ("pixels_p_value", "|r| p"), ("feature_vis_score", "fv z"),
                ("feature_vis_p_value", "fv p")]
        cols = [(k, h) for k, h in cols if rows and k in rows[0]]
        lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |"
                  for r in rows[:max_rows]]
        if len(rows) > max_rows:
            lines.append(f"| … {len(rows) - max_rows} more |")
        return "\n".join(lines)

    def highlight(self) -> Tensor:
        """``[num_nodes]`` bool: nodes of groups flagged important (overall or for a class)."""
        mask = torch.zeros(self.graph.num_nodes, dtype=torch.bool)
        if self.importance is None:
            return mask
        layer, neuron = self.graph.layer.cpu(), self.graph.neuron.cpu()
        for r in self.importance.groups:
            if r["important"] or r["important_class"]:
                mask |= (layer == r["layer_index"]) & torch.isin(neuron, torch.tensor(r["neurons"]))
        return mask

    def save(self, out: PathLike, tensorboard: bool = True) -> Dict[str, str]:
        """Writes ``report.json``, ``groups.csv``, ``groups.md``, ``partition.png``
        (:func:`dyngraph.plot`) and TensorBoard events (:func:`dyngraph.log`, prefix
        ``'neurons'``) under ``out``; returns the paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "report.json", "csv": out / "groups.csv",
                 "markdown": out / "groups.md", "figure": out / "partition.png"}
        self.to_json(paths["json"])
        self.to_csv(paths["csv"])
        atomic_write_text(paths["markdown"], self.to_markdown(max_rows=10_000) + "\n")
        from ..outputs import log, plot
        plot(self, paths["figure"])
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            with SummaryWriter(str(out / "tensorboard")) as w:
                log(w, self, prefix="neurons")
            paths["tensorboard"] = out / "tensorboard"
        return {k: str(v) for k, v in paths.items()}

    def __repr__(self) -> str:
        s = self.summary()
        parts = [f"source={s['source']!r}", f"nodes={s['n_nodes']}",
                 f"clusters={s['n_clusters']}", f"ncut={s['ncut']:.4f}"]
        if "clusterability_p" in s:
            parts.append(f"shuffled={s['ncut_shuffled_mean']:.4f}, p={s['clusterability_p']:.3g}, "
                         f"z={s['clusterability_z']:.2f}")
        if "n_important" in s:
            parts.append(f"important={s['n_important']}/{s['n_groups']}")
        if "n_coherent" in s:
            parts.append(f"coherent={s['n_coherent']}/{s['n_groups']}")
        return "NeuronReport(" + ", ".join(parts) + ")"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        v = v + 0.0  # no "-0"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def neuron_report(model: nn.Module, loader: Any, n_clusters: int = 8, *,
                  source: str = "weights", n_shuffles: int = 20, n_random: int = 99,
                  methods: Sequence[str] = ("labels", "pixels"), seed: int = 0,
                  alpha: float = 0.05, min_size: int = 2, max_fraction: float = 0.99,
                  graph_kwargs: Optional[Dict[str, Any]] = None, dead_from_data: bool = False,
                  solver: str = "auto", top_k: int = 20,
                  coherence_kwargs: Optional[Dict[str, Any]] = None,
                  checkpoint: Optional[PathLike] = None,
                  device: Optional[Union[str, torch.device]] = None, progress: bool = True
                  ) -> NeuronReport:
    """Neuron graph → spectral partition → shuffle test → lesion importance → coherence.

    Args:
        model: A trained chain network (MLP or VGG-style CNN).
        loader: Evaluation batches ``(inputs, labels)`` (the activations graph, lesions and
            coherence all use it).
        n_clusters: Clusters of the spectral partition.
        source: ``'weights'`` or ``'activations'``.
        n_shuffles: Weight-shuffled copies for the clusterability test (0 skips it).
        n_random: Random groups per group (>= 19) for importance and coherence (0 skips both).
        methods: Coherence methods (``'labels'``, ``'pixels'``, ``'feature_vis'``); empty skips.
        seed: Seed of everything random.
        alpha: Benjamini–Hochberg level.
        min_size, max_fraction: Which cluster ∩ layer groups are tested.
        graph_kwargs: Extra arguments of :func:`dyngraph.neurons.neuron_graph` (layers, norm,
            ...).
        dead_from_data: With ``'weights'``, also remove neurons that are constant over ``loader``.
        solver: Eigensolver of the spectral partition.
        top_k: Top-activating inputs per group for the label coherence.
        coherence_kwargs: Extra arguments of :func:`dyngraph.neurons.coherence` (``fv_steps``, ...).
        checkpoint: JSON file where the shuffle test saves its progress (resumable).
        device: Where to run.
        progress: Progress bars.

    Returns:
        :class:`NeuronReport`; draw it with ``dg.plot(report)``, log it with
        ``dg.log(writer, report)``, write everything with ``report.save(out)``.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
        ...                   nn.Linear(8, 2))
        >>> dl = DataLoader(TensorDataset(torch.randn(60, 4), torch.arange(60) % 2), batch_size=30)
        >>> r = dg.neurons.neuron_report(m, dl, n_clusters=2, n_shuffles=3, n_random=19,
        ...                              top_k=10, progress=False)
        >>> r.summary()['n_clusters'], r.summary()['n_shuffles']
        (2, 3)
        >>> type(dg.plot(r)).__name__                 # the partition; dg.log(writer, r) logs it
        'Figure'
    """
    t0 = time.perf_counter()
    check_positive_int(n_clusters, "n_clusters", minimum=2)  # one cluster: nothing to test
    for name, count in (("n_shuffles", n_shuffles), ("n_random", n_random)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name} must be an int >= 0, got {count!r}")
    # Everything that can be checked before the (slow) graph, partition and shuffles:
    check_choice(source, "source", SOURCES)
    check_choice(solver, "solver", SOLVERS)
    check_seed(seed)
    check_flag(progress, "progress")
    check_flag(dead_from_data, "dead_from_data")
    methods = check_choices(methods, "methods", METHODS) if methods else []
    check_positive_int(top_k, "top_k")
    check_positive_int(min_size, "min_size")
    if isinstance(max_fraction, bool) or not isinstance(max_fraction, (int, float)) or \
            not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must be in (0, 1], got {max_fraction!r}")
    if coherence_kwargs is not None and not isinstance(coherence_kwargs, dict):
        raise TypeError(f"coherence_kwargs must be a dict of coherence arguments, got "
                        f"{type(coherence_kwargs).__name__}")
    if n_random > 0:
        if n_random < MIN_RANDOM:
            raise ValueError(f"n_random must be >= {MIN_RANDOM} so that a p-value can reach "
                             f"0.05 (or 0 to skip the group tests), got n_random={n_random}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if (n_random > 0 or source == "activations" or dead_from_data) and \
            not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of (inputs, labels) batches (a "
                        f"DataLoader), got {type(loader).__name__}")
    if graph_kwargs is not None and not isinstance(graph_kwargs, dict):
        raise TypeError(f"graph_kwargs must be a dict of neuron_graph arguments, got "
                        f"{type(graph_kwargs).__name__}")
    gkw = dict(graph_kwargs or {})
    gkw.setdefault("progress", False)
    if device is not None:
        gkw.setdefault("device", device)
    graph_loader = loader if (source == "activations" or dead_from_data) else None
    if n_shuffles > 0:
        cl = clusterability(model, n_clusters, n_shuffles, seed, source=source,
                            loader=graph_loader, graph_kwargs=gkw, solver=solver,
                            checkpoint=checkpoint, progress=progress)
        graph, clusters, value = cl.graph, cl.clusters, cl.ncut
    else:
        cl = None
        value, clusters, graph = partition(model, n_clusters, seed, solver, source=source,
                                           loader=graph_loader, **gkw)
    imp = coh = None
    if n_random > 0:
        imp = lesion_importance(model, graph, clusters, loader, n_random=n_random, seed=seed,
                                min_size=min_size, max_fraction=max_fraction, alpha=alpha,
                                device=device, progress=progress)
        if methods:
            coh = coherence(model, graph, clusters, loader, methods=methods, n_random=n_random,
                            seed=seed, top_k=top_k, min_size=min_size,
                            max_fraction=max_fraction, alpha=alpha, device=device,
                            progress=progress, **dict(coherence_kwargs or {}))
    meta = {"n_clusters": n_clusters, "source": source, "seed": seed, "alpha": alpha,
            "min_size": min_size, "max_fraction": max_fraction, "n_random": n_random,
            "n_shuffles": n_shuffles, "methods": list(methods), "solver": solver,
            "dead_from_data": dead_from_data,
            "graph_kwargs": {k: repr(v) for k, v in gkw.items() if k != "progress"},
            "seconds": round(time.perf_counter() - t0, 2)}
    return NeuronReport(graph, clusters, value, cl, imp, coh, meta)
