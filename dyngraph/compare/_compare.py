"""Compare models (or feature sets) layer by layer: ``dg.compare(...)`` → tidy table + matrices.

The expensive work is done once per model (netrep's pattern): extract the representations, then
reduce each layer to a :class:`~dyngraph.measures._similarity.RepresentationSummary` (CKA Gram
matrices or centred features, kNN lists, graph rows, modularity). Every pair of models — and each
model with itself — is then filled in from the summaries, one layer × layer matrix per measure.

:func:`stream_cka` is the bounded-memory alternative for CKA: it runs every model on each batch of
the loader and accumulates the minibatch CKA of Nguyen et al. (2021) for all layer pairs of all
models at once, without keeping any features.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._curve import Curve
from .._io import PathLike, atomic_write_json, atomic_write_text
from .._progress import progress_bar
from .._validate import check_choice, check_labels, check_positive_int
from ..capture._features import LayerFeatures
from ..measures._similarity import (
    DISTANCES,
    MEASURES,
    MinibatchCKA,
    SimilarityMatrix,
    fill_matrix,
    summarize_layers,
)

#: Measures computed by default (all but the two CKA variants' duplicate).
DEFAULT_MEASURES = ("cka", "knn_overlap", "mutual_knn", "graph", "modularity_distance")
#: Every measure :func:`compare` accepts: the summary-based ones plus the streamed minibatch CKA.
COMPARE_MEASURES = MEASURES + ("cka_minibatch",)

Item = Union[nn.Module, LayerFeatures, Mapping[str, Tensor]]


# ================================================================================== result
@dataclass
class Comparison:
    """The result of :func:`compare`.

    Attributes:
        names: Model names, in order.
        layers: ``{model: [layer names]}``.
        measures: The measures computed.
        matrices: ``{measure: {(model_a, model_b): SimilarityMatrix}}`` for every pair with
            ``a`` before ``b`` in ``names`` and, with ``within=True``, ``(a, a)``.
        curves: ``{model: {curve name: Curve}}`` — per-model curves that came for free (label
            modularity, kNN purity).
        info: ``{model: dict}`` (e.g. accuracy, source) as given.
        meta: Settings and timings.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
        >>> res = dg.compare([{'l': x}, {'l': 2 * x}], measures=['cka'], progress=False)
        >>> res.names, round(float(res.matrix('cka', 'features_0', 'features_1').values[0, 0]), 6)
        (['features_0', 'features_1'], 1.0)
        >>> res.table[0]['measure'], len(res.table)
        ('cka', 3)
    """

    names: List[str]
    layers: Dict[str, List[str]]
    measures: List[str]
    matrices: Dict[str, Dict[Tuple[str, str], SimilarityMatrix]]
    curves: Dict[str, Dict[str, Curve]] = field(default_factory=dict)
    info: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        pairs = len(next(iter(self.matrices.values()))) if self.matrices else 0
        return (f"Comparison(models={self.names}, measures={self.measures}, pairs={pairs}, "
                f"n_samples={self.meta.get('n_samples')})")

    def matrix(self, measure: str, a: str, b: str) -> SimilarityMatrix:
        """The ``a × b`` matrix of ``measure`` (transposed from ``b × a`` when needed)."""
        if measure not in self.matrices:
            raise KeyError(f"measure {measure!r} was not computed; have {self.measures}")
        for n in (a, b):
            if n not in self.names:
                raise KeyError(f"no model named {n!r}; models are {self.names}")
        got = self.matrices[measure]
        if (a, b) in got:
            return got[(a, b)]
        if (b, a) in got:
            m = got[(b, a)]
            return SimilarityMatrix(m.values.T, m.layers_b, m.layers_a, measure, a, b,
                                    None if m.p_values is None else m.p_values.T, dict(m.meta))
        raise KeyError(f"pair ({a!r}, {b!r}) was not computed (within=False?)")

    @property
    def table(self) -> List[Dict[str, Any]]:
        """Tidy rows: one per (measure, model pair, layer pair)."""
        rows = []
        for measure, mats in self.matrices.items():
            for (a, b), m in mats.items():
                for i, la in enumerate(m.layers_a):
                    for j, lb in enumerate(m.layers_b):
                        rows.append({"measure": measure, "model_a": a, "model_b": b,
                                     "layer_a": la, "layer_b": lb, "index_a": i, "index_b": j,
                                     "value": float(m.values[i, j]),
                                     "p_value": None if m.p_values is None
                                     else float(m.p_values[i, j])})
        return rows

    def to_pandas(self):
        """The tidy table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover
            raise ImportError("to_pandas needs pandas; use .table (a list of dicts) or "
                              ".to_csv()") from exc
        return pd.DataFrame(self.table)

    def to_csv(self, path: Optional[PathLike] = None) -> str:
        """The tidy table as CSV text, written atomically to ``path`` when given."""
        buf = io.StringIO()
        cols = ["measure", "model_a", "model_b", "layer_a", "layer_b", "index_a", "index_b",
                "value", "p_value"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in self.table:
            r = dict(r)
            r["value"] = f"{r['value']:.10g}"
            r["p_value"] = "" if r["p_value"] is None else f"{r['p_value']:.6g}"
            w.writerow(r)
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def summary(self) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
        """Per measure and pair ``'a|b'``: the mean, the mean best match per row of ``a`` and, for
        square matrices, the diagonal/off-diagonal means and how often each row's best match is
        the corresponding layer."""
        out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
        for measure, mats in self.matrices.items():
            out[measure] = {}
            for (a, b), m in mats.items():
                v = m.values
                best = v.max(1).values if m.higher_is_similar else v.min(1).values
                row = {"mean": float(v.mean()), "mean_best_match": float(best.mean())}
                if v.shape[0] == v.shape[1]:
                    row.update(m.diagonal_contrast())
                if m.p_values is not None:
                    row["share_p_below_0.05"] = float((m.p_values < 0.05).double().mean())
                out[measure][f"{a}|{b}"] = row
        return out

    def to_dict(self) -> Dict[str, Any]:
        from .._curve import _jsonable
        return _jsonable({
            "format": "dyngraph.Comparison/1",
            "names": self.names, "layers": self.layers, "measures": self.measures,
            "matrices": {m: [mat.to_dict() for mat in mats.values()]
                         for m, mats in self.matrices.items()},
            "summary": self.summary(),
            "curves": {n: {k: c.to_dict() for k, c in cs.items()} for n, cs in self.curves.items()},
            "info": self.info, "meta": self.meta})

    def to_json(self, path: Optional[PathLike] = None) -> str:
        """JSON report (matrices, p-values, summary, curves, settings); atomic when ``path``."""
        d = self.to_dict()
        if path is not None:
            atomic_write_json(path, d)
        return json.dumps(d, indent=2)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Comparison":
        if d.get("format") != "dyngraph.Comparison/1":
            raise ValueError("not a dyngraph.Comparison report")
        mats = {}
        for m, lst in d["matrices"].items():
            mats[m] = {}
            for md in lst:
                sm = SimilarityMatrix.from_dict(md)
                mats[m][(sm.name_a, sm.name_b)] = sm
        curves = {n: {k: Curve.from_dict(c) for k, c in cs.items()}
                  for n, cs in d.get("curves", {}).items()}
        return cls(d["names"], d["layers"], d["measures"], mats, curves, d.get("info", {}),
                   d.get("meta", {}))

    @classmethod
    def from_json(cls, path: PathLike) -> "Comparison":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def plot_grid(self, measure: str, path: Optional[PathLike] = None):
        """All pairs of one measure in one figure: an upper-triangular grid of heatmaps (rows and
        columns: models) on a shared colour scale. Returns the figure."""
        from ..measures._similarity import _LABELS
        from ..outputs._plot import _pyplot, save_figure
        if measure not in self.matrices:
            raise KeyError(f"measure {measure!r} was not computed; have {self.measures}")
        plt = _pyplot()
        names = self.names
        m_ = len(names)
        got = self.matrices[measure]
        vals = torch.cat([m.values.flatten() for m in got.values()])
        distance = measure in DISTANCES
        vmin = 0.0 if distance else min(0.0, float(vals.min()))
        vmax = float(vals.max()) if distance else 1.0
        fig, axes = plt.subplots(m_, m_, figsize=(1.9 * m_ + 1.2, 1.8 * m_ + 0.8), squeeze=False,
                                 layout="constrained")
        im = None
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                ax = axes[i][j]
                if (a, b) not in got:
                    ax.axis("off")
                    continue
                im = ax.imshow(got[(a, b)].values.numpy(), vmin=vmin, vmax=vmax,
                               cmap="viridis_r" if distance else "viridis", aspect="auto")
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 or (i == j):
                    ax.set_title(b, fontsize=7)
                if j == i or (j == i + 1 and (a, a) not in got):
                    ax.set_ylabel(a, fontsize=7)
        if im is not None:
            fig.colorbar(im, ax=axes, fraction=0.02, label=_LABELS.get(measure, measure))
        fig.suptitle(f"{_LABELS.get(measure, measure)}: layer × layer, every pair of models "
                     f"(rows: first model's layers, top = input side)", fontsize=9)
        if path is not None:
            save_figure(fig, path)
        return fig

    def plot(self, out_dir: PathLike, measures: Optional[Sequence[str]] = None,
             per_pair: Optional[bool] = None) -> Dict[str, Path]:
        """Writes to ``out_dir``: one grid per measure (:meth:`plot_grid`), the per-model curves
        and, with ``per_pair`` (default: when there are at most 6 model pairs), one annotated
        heatmap per (measure, pair of different models)."""
        from ..outputs._plot import close, plot_curves
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths: Dict[str, Path] = {}
        measures = list(measures or self.measures)
        between = [(a, b) for (a, b) in next(iter(self.matrices.values())) if a != b] \
            if self.matrices else []
        if per_pair is None:
            per_pair = len(between) <= 6
        for measure in measures:
            p = out / f"grid_{measure}.png"
            close(self.plot_grid(measure, p))
            paths[f"grid_{measure}"] = p
            if per_pair:
                for (a, b), m in self.matrices[measure].items():
                    if a == b:
                        continue
                    key = f"{measure}__{_safe(a)}__vs__{_safe(b)}"
                    p = out / f"{key}.png"
                    close(m.plot(p))
                    paths[key] = p
        names = sorted({k for cs in self.curves.values() for k in cs})
        for cname in names:
            curves = [(n, self.curves[n][cname]) for n in self.names if cname in self.curves[n]]
            p = out / f"curve_{cname}.png"
            close(plot_curves([c for _, c in curves], path=p, labels=[n for n, _ in curves],
                              title=f"{cname} per model"))
            paths[f"curve_{cname}"] = p
        return paths

    def to_tensorboard(self, writer, prefix: str = "dyngraph/compare",
                       per_pair: bool = False) -> None:
        """Per measure: the grid figure and every pair's values as a markdown table; per model:
        the free curves as scalars. ``per_pair`` also logs one heatmap per pair."""
        from ..measures._similarity import _markdown, log_similarity_matrix
        from ..outputs._log import log_curve
        from ..outputs._plot import close
        for measure, mats in self.matrices.items():
            fig = self.plot_grid(measure)
            writer.add_figure(f"{prefix}/{measure}/grid", fig)
            close(fig)
            for (a, b), m in mats.items():
                tag = f"{prefix}/{measure}/{_safe(a)}_vs_{_safe(b)}"
                if per_pair:
                    log_similarity_matrix(writer, m, tag=tag)
                else:
                    writer.add_text(f"{tag}/values", _markdown(m))
        for n, cs in self.curves.items():
            for cname, c in cs.items():
                log_curve(writer, c, tag=f"{prefix}/{cname}/{_safe(n)}", figure=False)
        if callable(getattr(writer, "flush", None)):
            writer.flush()


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


# ================================================================================== helpers
def _named_items(items) -> List[Tuple[str, Item]]:
    if isinstance(items, Mapping) and not isinstance(items, LayerFeatures) and items and \
            all(isinstance(v, (nn.Module, LayerFeatures, Mapping)) for v in items.values()):
        pairs = [(str(k), v) for k, v in items.items()]
    elif isinstance(items, (list, tuple)):
        pairs = [(None, v) for v in items]
    else:
        raise TypeError(f"models_or_feature_sets must be a list (or a dict {{name: item}}) of "
                        f"models or feature sets, got {type(items).__name__}")
    if len(pairs) < 1:
        raise ValueError("models_or_feature_sets is empty")
    out = []
    for i, (name, v) in enumerate(pairs):
        if not isinstance(v, (nn.Module, LayerFeatures, Mapping)):
            raise TypeError(f"models_or_feature_sets[{i}] must be an nn.Module, LayerFeatures or "
                            f"a dict {{layer: Tensor}}, got {type(v).__name__}")
        if name is None:
            name = (type(v).__name__ if isinstance(v, nn.Module) else "features") + f"_{i}"
        out.append((name, v))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    return out


def _layers_for(layers, name: str, index: int):
    if isinstance(layers, Mapping) and (name in layers or index in layers):
        return layers.get(name, layers.get(index))
    if isinstance(layers, Mapping) and any(isinstance(v, (list, tuple)) for v in layers.values()):
        return None
    return layers


def _same_inputs(feats: Dict[str, LayerFeatures], labels: Optional[Tensor]) -> Optional[Tensor]:
    first_name = next(iter(feats))
    first = feats[first_name]
    n = first.n_samples
    for name, f in feats.items():
        if f.n_samples != n:
            raise ValueError(f"every model must see the same inputs: {first_name!r} has "
                             f"{n} samples, {name!r} has {f.n_samples}")
        if first.indices is not None and f.indices is not None and \
                not torch.equal(first.indices.cpu(), f.indices.cpu()):
            raise ValueError(f"{first_name!r} and {name!r} were extracted from different dataset "
                             f"samples (indices differ); use the same loader, per_class/n_samples "
                             f"and seed")
        if labels is None and not torch.equal(first.y.cpu(), f.y.cpu()):
            raise ValueError(f"{first_name!r} and {name!r} have different labels for the same "
                             f"positions: the samples are not aligned")
    return first.y if labels is None else check_labels(labels, n, "labels")


# ================================================================================== streaming
class _Taps:
    """Forward hooks that capture the flattened outputs of chosen layers for one batch."""

    def __init__(self, model: nn.Module, layers):
        from ..capture._layers import _resolve_layers
        self.model = model
        self.spec = _resolve_layers(model, layers)
        self.out: Dict[str, Tensor] = {}
        self.handles = []

    def __enter__(self):
        modules = dict(self.model.named_modules())
        self.was_training = self.model.training
        for alias, (name, where) in self.spec.items():
            def hook(mod, inputs, output=None, alias=alias, where=where):
                val = inputs[0] if where == "input" else output
                if not isinstance(val, Tensor):
                    raise ValueError(f"layer {alias!r} returned {type(val).__name__}, not a "
                                     f"Tensor")
                self.out[alias] = val.detach().reshape(val.shape[0], -1)
            mod = modules[name]
            self.handles.append(mod.register_forward_pre_hook(hook) if where == "input"
                                else mod.register_forward_hook(hook))
        self.model.eval()
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.model.train(self.was_training)
        return False

    def run(self, inputs) -> List[Tensor]:
        self.out.clear()
        self.model(*inputs) if isinstance(inputs, (tuple, list)) else self.model(inputs)
        missing = [a for a in self.spec if a not in self.out]
        if missing:
            raise ValueError(f"layers {missing} did not run in the forward pass")
        return [self.out[a] for a in self.spec]


def stream_cka(models: Union[Sequence[nn.Module], Mapping[str, nn.Module]], loader,
               layers=None, unbiased: bool = True, device=None, max_batches: Optional[int] = None,
               batch_fn: Optional[Callable] = None, within: bool = True,
               progress: bool = True) -> Dict[Tuple[str, str], SimilarityMatrix]:
    """Minibatch CKA (Nguyen et al. 2021) between every pair of models, streamed from a loader.

    Every model runs on each batch once; each layer's ``B × B`` Gram matrix updates one
    :class:`~dyngraph.MinibatchCKA` over all layers of all models; then the features are dropped.
    Memory is ``O((Σ L)·B²)``, independent of the number of samples.

    Args:
        models: Models (a list, or ``{name: model}``), already on ``device`` or moved there.
        loader: Batches ``(inputs, labels)`` (labels unused). Batches with fewer than 4 rows are
            skipped for the unbiased estimator (counted in ``meta['skipped_batches']``).
        layers: Per-model layer spec as in :func:`~dyngraph.extract_features` (``None``:
            :func:`~dyngraph.default_layers`), one spec for all or ``{name: spec}``.
        unbiased: Unbiased HSIC per batch (the paper's choice).
        device: Where to run (default: each model's parameters).
        max_batches: Stop after this many batches.
        batch_fn: ``batch -> (inputs, labels)``.
        within: Also return each model with itself.
        progress: Progress bar.

    Returns:
        ``{(a, b): SimilarityMatrix}`` with ``measure='cka_minibatch'``.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> b = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
        >>> loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.zeros(64)), batch_size=16)
        >>> mats = dg.compare.stream_cka({'a': a, 'b': b}, loader, progress=False)
        >>> sorted(mats), tuple(mats[('a', 'b')].values.shape)
        ([('a', 'a'), ('a', 'b'), ('b', 'b')], (2, 2))
    """
    from ..capture._layers import default_layers
    from ..capture._taps import split_batch as _split_batch
    from ..capture._taps import to_device as _to
    named = _named_items(dict(models) if isinstance(models, Mapping) else list(models))
    for n, m in named:
        if not isinstance(m, nn.Module):
            raise TypeError(f"stream_cka needs models, got {type(m).__name__} for {n!r}")
    if max_batches is not None:
        check_positive_int(max_batches, "max_batches")
    taps = []
    for i, (n, m) in enumerate(named):
        spec = _layers_for(layers, n, i)
        taps.append(_Taps(m, spec if spec is not None else default_layers(m)))
    acc = MinibatchCKA(unbiased=unbiased)
    skipped = 0
    seen = 0
    for t in taps:
        t.__enter__()
    try:
        with torch.no_grad():
            total = len(loader) if hasattr(loader, "__len__") else None
            for bi, batch in enumerate(progress_bar(loader, desc="stream CKA", total=total,
                                                    disable=not progress)):
                if max_batches is not None and bi >= max_batches:
                    break
                inputs, targets = _split_batch(batch, batch_fn)
                b = inputs.shape[0] if isinstance(inputs, Tensor) else len(targets)
                if b < (4 if unbiased else 2):
                    skipped += 1
                    continue
                feats: List[Tensor] = []
                dev0 = None
                for (n, m), t in zip(named, taps):
                    dev = torch.device(device) if device is not None else \
                        next(iter(m.parameters()), torch.empty(0)).device
                    outs = t.run(_to(inputs, dev))
                    dev0 = dev0 or outs[0].device
                    feats.extend(o.to(dev0) for o in outs)
                acc.update(feats)
                seen += b
    finally:
        for t in taps:
            t.__exit__(None, None, None)
    if acc.n_batches == 0:
        raise ValueError("stream_cka: the loader produced no usable batch")
    full = acc.compute().cpu()
    out = {}
    offs = [0]
    for t in taps:
        offs.append(offs[-1] + len(t.spec))
    meta = {"unbiased": unbiased, "batches": acc.n_batches, "rows": seen,
            "skipped_batches": skipped}
    for i, (na, _) in enumerate(named):
        for j, (nb, _) in enumerate(named):
            if j < i or (i == j and not within):
                continue
            block = full[offs[i]:offs[i + 1], offs[j]:offs[j + 1]]
            out[(na, nb)] = SimilarityMatrix(block, list(taps[i].spec), list(taps[j].spec),
                                             "cka_minibatch", na, nb, None, dict(meta))
    return out


# ================================================================================== compare
def compare_models(models_or_feature_sets, loader=None, measures: Sequence[str] = DEFAULT_MEASURES,
            names: Optional[Sequence[str]] = None, layers=None, labels: Optional[Tensor] = None,
            per_class: Optional[int] = None, n_samples: Optional[int] = None, seed: int = 0,
            k: int = 10, metric: str = "cosine", symmetrize: Optional[str] = "mean",
            modularity_k: int = 3, backend: str = "auto", permutations: int = 0,
            within: bool = True, pool=None, device=None, spill_dir: Optional[str] = None,
            info: Optional[Mapping[str, Dict[str, Any]]] = None,
            progress: bool = True) -> Comparison:
    """Compares two or more models (or feature sets) layer by layer on the same inputs.

    Per model, once: extract the representations of the chosen layers (for ``nn.Module`` items,
    with :func:`~dyngraph.extract_features` on ``loader`` — the same seeded class-balanced sample
    for every model) and reduce each layer to a summary (one layer in memory at a time). Then
    every pair is filled in from the summaries.

    Args:
        models_or_feature_sets: A list, or ``{name: item}``, of ``nn.Module`` (needs ``loader``),
            :class:`~dyngraph.LayerFeatures` or ``{layer: Tensor[N, ...]}`` (same N inputs, same
            order).
        loader: DataLoader for the models.
        measures: Any of ``'cka'``, ``'cka_unbiased'``, ``'knn_overlap'``, ``'mutual_knn'``,
            ``'graph'``, ``'modularity_distance'`` and ``'cka_minibatch'`` (models only: streamed
            over the whole ``loader`` with :func:`stream_cka`).
        names: Model names (default: the dict keys, or ``<Class>_<i>``).
        layers: Layer spec for extraction (one for all, or ``{name: spec}``); default
            :func:`~dyngraph.default_layers`.
        labels: ``[N]`` classes for plain-dict feature sets (LayerFeatures carry theirs).
        per_class, n_samples, seed: Class-balanced sampling of the loader (all samples when both
            are ``None``).
        k, metric, symmetrize: kNN-measure and graph settings (``k = 10`` by default).
        modularity_k: Snapshot k for the modularity distance (reference: 3).
        backend: kNN backend.
        permutations: When ``> 0``, a permutation p-value for every cell (costly: ``P`` times the
            pairwise work).
        within: Also compute each model against itself (layer × layer within a model).
        pool, device, spill_dir: Passed to :func:`~dyngraph.extract_features`.
        info: Extra per-model information to carry into the report (e.g. accuracy).
        progress: Progress bars.

    Returns:
        A :class:`Comparison` (``.table``, ``.matrices``, ``.summary()``, ``.to_json``, ``.plot``,
        ``.to_tensorboard``).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(120) % 3
        >>> a = {'l1': torch.randn(120, 8, generator=g), 'l2': torch.randn(120, 8, generator=g) + 4 * torch.eye(8)[y]}
        >>> b = {k: 2 * v for k, v in a.items()}
        >>> res = dg.compare({'a': a, 'b': b}, measures=['cka', 'mutual_knn'], labels=y, progress=False)
        >>> [round(v, 6) for v in res.matrix('cka', 'a', 'b').values.diagonal().tolist()]
        [1.0, 1.0]
        >>> len(res.table)
        24
    """
    t0 = time.perf_counter()
    measures = list(measures)
    if not measures:
        raise ValueError("measures is empty")
    for m in measures:
        check_choice(m, "measures", COMPARE_MEASURES)
    if len(set(measures)) != len(measures):
        raise ValueError(f"measures lists a measure twice: {measures}")
    check_positive_int(permutations, "permutations", minimum=0)
    items = _named_items(models_or_feature_sets)
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(items):
            raise ValueError(f"names has {len(names)} entries for {len(items)} models")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names}")
        items = [(n, v) for n, (_, v) in zip(names, items)]
    if len(items) < 2 and not within:
        raise ValueError("compare needs two or more models (or within=True)")
    if any(isinstance(v, nn.Module) for _, v in items) and loader is None:
        raise ValueError("models need a loader: compare(models, loader, ...)")
    if "cka_minibatch" in measures and not all(isinstance(v, nn.Module) for _, v in items):
        raise ValueError("measure 'cka_minibatch' streams the models over the loader; every item "
                         "must then be an nn.Module")

    # ---- per-model work, once
    feats: Dict[str, LayerFeatures] = {}
    timings: Dict[str, float] = {}
    for i, (name, item) in enumerate(items):
        t = time.perf_counter()
        if isinstance(item, nn.Module):
            from ..capture._extract import extract_features
            f = extract_features(item, loader, layers=_layers_for(layers, name, i),
                                 per_class=per_class, n_samples=n_samples, seed=seed, pool=pool,
                                 device=device, spill_dir=spill_dir, progress=progress)
        elif isinstance(item, LayerFeatures):
            f = item
        else:
            if not item:
                raise ValueError(f"feature set {name!r} is empty")
            first = next(iter(item.values()))
            if not isinstance(first, Tensor):
                raise TypeError(f"feature set {name!r} must map layer names to Tensors, got "
                                f"{type(first).__name__}")
            lab = labels if labels is not None else torch.zeros(first.shape[0], dtype=torch.long)
            f = LayerFeatures(dict(item), check_labels(lab, first.shape[0], "labels"))
        feats[name] = f
        timings[f"extract:{name}"] = round(time.perf_counter() - t, 3)
    has_labels = labels is not None or any(isinstance(v, (nn.Module, LayerFeatures))
                                           for _, v in items)
    y = _same_inputs(feats, labels)
    if not has_labels:
        if "modularity_distance" in measures:
            raise ValueError("measure 'modularity_distance' needs labels for plain-dict feature "
                             "sets: pass labels=")
        y = None
    summary_measures = [m for m in measures if m != "cka_minibatch"]
    summaries = {}
    curves: Dict[str, Dict[str, Curve]] = {}
    for name, f in feats.items():
        t = time.perf_counter()
        if summary_measures:
            summaries[name] = summarize_layers(f, summary_measures, labels=y, name=name,
                                               device=device, progress=progress, k=k,
                                               metric=metric, symmetrize=symmetrize,
                                               modularity_k=modularity_k, backend=backend)
            curves[name] = _free_curves(summaries[name], y, f.names, name)
        else:
            curves[name] = {}
        timings[f"summaries:{name}"] = round(time.perf_counter() - t, 3)

    # ---- pairwise fill
    names_ = [n for n, _ in items]
    pairs = [(a, b) for i, a in enumerate(names_) for j, b in enumerate(names_)
             if j > i or (j == i and within)]
    meta = {"k": k, "metric": metric, "symmetrize": symmetrize, "modularity_k": modularity_k,
            "n_samples": next(iter(feats.values())).n_samples, "per_class": per_class,
            "seed": seed, "permutations": permutations, "measures": measures}
    matrices: Dict[str, Dict[Tuple[str, str], SimilarityMatrix]] = {m: {} for m in measures}
    t = time.perf_counter()
    for measure in progress_bar(summary_measures, desc="pairs", disable=not progress):
        for a, b in pairs:
            vals, ps = fill_matrix(summaries[a], summaries[b], measure, permutations, seed,
                                   symmetric=a == b)
            matrices[measure][(a, b)] = SimilarityMatrix(vals, feats[a].names, feats[b].names,
                                                         measure, a, b, ps, dict(meta))
    timings["pairwise"] = round(time.perf_counter() - t, 3)
    if "cka_minibatch" in measures:
        t = time.perf_counter()
        got = stream_cka(dict(items), loader, layers=layers, device=device, within=within,
                         progress=progress)
        matrices["cka_minibatch"] = got
        timings["cka_minibatch"] = round(time.perf_counter() - t, 3)
    meta["seconds"] = timings
    meta["total_seconds"] = round(time.perf_counter() - t0, 3)
    meta["layers_hooked"] = {n: f.meta.get("points") for n, f in feats.items()
                             if f.meta.get("points")}
    return Comparison(names_, {n: feats[n].names for n in names_}, measures, matrices, curves,
                      {n: dict((info or {}).get(n, {})) for n in names_}, meta)


def _free_curves(summ, y: Optional[Tensor], layers: List[str], name: str) -> Dict[str, Curve]:
    """Per-layer curves the summaries already hold: label modularity and kNN purity."""
    out = {}
    first = next(iter(summ.values()))
    if first.q is not None:
        out["modularity"] = Curve(layers, torch.tensor([summ[l].q for l in layers]),
                                  name="modularity", meta={"k": first.modularity_k,
                                                           "label": name})
    if first.knn_idx is not None and y is not None:
        vals = []
        for l in layers:
            idx = summ[l].knn_idx
            yy = y.to(idx.device)
            vals.append(float((yy[idx] == yy.unsqueeze(1)).double().mean()))
        out["knn_purity"] = Curve(layers, torch.tensor(vals), name="knn_purity",
                                  meta={"k": first.k, "label": name})
    return out


__all__ = ["Comparison", "compare_models", "stream_cka", "DEFAULT_MEASURES", "COMPARE_MEASURES"]
