"""Compare models (or feature sets) layer by layer: one :class:`~dyngraph.LayerMatrix` per pair.

The expensive work is done once per model (netrep's pattern): extract the representations, then
prepare each layer for every pair measure (the registry's ``prepare``: CKA Gram matrices or
centred features, kNN lists, graph rows, modularity). Every pair of models — and each model with
itself — is then scored from the prepared states, exactly as :func:`dyngraph.layer_matrix` scores
one pair.

:func:`stream_cka` is the bounded-memory alternative for CKA: it runs every model on each batch of
the loader (through :class:`dyngraph.capture.LayerTaps`) and accumulates the minibatch CKA of
Nguyen et al. (2021) for all layer pairs of all models at once, without keeping any features.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._io import PathLike
from .._json import JsonFile, jsonable
from .._progress import progress_bar
from .._validate import check_choice, check_flag, check_labels, check_positive_int
from ..capture._features import LayerFeatures
from ..capture._taps import (
    LayerTaps,
    Pool,
    check_layout,
    check_pool,
    split_batch,
    to_device,
)
from ..measures._registry import Measure, resolve
from ..measures._similarity import MEASURES, MinibatchCKA, RepresentationSummary
from ..profiles._profile import DepthProfile, LayerMatrix, require_keys, write_csv
from ..profiles._runner import check_measure_options, prepare_layers, score_layers

#: Measures computed by default (all but the two CKA variants' duplicate).
DEFAULT_MEASURES = ("cka", "knn_overlap", "mutual_knn", "graph", "modularity_distance")
#: The measure :func:`compare_models` streams over the loader with :func:`stream_cka`.
STREAMED = "cka_minibatch"
#: The built-in measures :func:`compare_models` accepts (any registered pair measure works too).
COMPARE_MEASURES = MEASURES + (STREAMED,)
FORMAT = "dyngraph.Comparison/2"

Item = Union[nn.Module, LayerFeatures, Mapping[str, Tensor]]
Pair = Tuple[str, str]


# ================================================================================== result
@dataclass
class Comparison(JsonFile):
    """The result of :func:`compare_models`.

    Attributes:
        names: Model names, in order.
        layers: ``{model: [layer names]}``.
        measures: The measures computed.
        matrices: ``{(model_a, model_b): LayerMatrix}`` for every pair with ``a`` before ``b`` in
            ``names`` and, with ``within=True``, ``(a, a)``. Each matrix holds every measure as a
            metric (values ``[La, Lb, M]``), with the permutation p-values as ``'<measure>:p'``.
        profiles: ``{model: DepthProfile}`` — per-layer values that came for free with the
            prepared states (``'modularity'`` of the kNN snapshot, ``'knn_purity'``).
        info: ``{model: dict}`` (e.g. accuracy, source) as given.
        meta: Settings and timings.

    Example:
        >>> import torch, dyngraph as dg
        >>> x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
        >>> res = dg.compare.compare_models([{'l': x}, {'l': 2 * x}], measures=['cka'],
        ...                                 progress=False)
        >>> res.names, round(float(res.matrix('features_0', 'features_1')['cka'][0, 0]), 6)
        (['features_0', 'features_1'], 1.0)
        >>> res.table[0]['measure'], len(res.table)
        ('cka', 3)
    """

    FORMAT = FORMAT
    names: List[str]
    layers: Dict[str, List[str]]
    measures: List[str]
    matrices: Dict[Pair, LayerMatrix]
    profiles: Dict[str, DepthProfile] = field(default_factory=dict)
    info: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"Comparison(models={self.names}, measures={self.measures}, "
                f"pairs={len(self.matrices)}, n_samples={self.meta.get('n_samples')})")

    def matrix(self, a: str, b: str) -> LayerMatrix:
        """The ``a × b`` :class:`~dyngraph.LayerMatrix` (transposed from ``b × a`` when needed);
        ``res.matrix(a, b)['cka']`` is the ``[La, Lb]`` CKA matrix."""
        for n in (a, b):
            if n not in self.names:
                raise KeyError(f"no model named {n!r}; models are {self.names}")
        if (a, b) in self.matrices:
            return self.matrices[(a, b)]
        if (b, a) in self.matrices:
            m = self.matrices[(b, a)]
            meta = dict(m.meta, models=[a, b])
            return LayerMatrix(m.cols, m.rows, m.metrics, m.values.transpose(0, 1), meta)
        raise KeyError(f"pair ({a!r}, {b!r}) was not computed (within=False?)")

    def higher_is_similar(self, measure: str) -> bool:
        """``False`` for a distance (``'modularity_distance'``), ``True`` otherwise."""
        if measure not in self.measures:
            raise KeyError(f"no measure {measure!r}; the comparison has {self.measures}")
        m = next(iter(self.matrices.values()), None)
        return not (m is not None and m.meta.get("distance", {}).get(measure, False))

    @property
    def table(self) -> List[Dict[str, Any]]:
        """Tidy rows: one per (measure, model pair, layer pair)."""
        rows = []
        for measure in self.measures:
            for (a, b), m in self.matrices.items():
                v = m[measure]
                p = m[f"{measure}:p"] if f"{measure}:p" in m.metrics else None
                for i, la in enumerate(m.rows):
                    for j, lb in enumerate(m.cols):
                        rows.append({"measure": measure, "model_a": a, "model_b": b,
                                     "layer_a": la, "layer_b": lb, "index_a": i, "index_b": j,
                                     "value": float(v[i, j]),
                                     "p_value": None if p is None else float(p[i, j])})
        return rows

    def to_pandas(self) -> Any:
        """The tidy table as a ``pandas.DataFrame`` (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover
            raise ImportError("to_pandas needs pandas; use .table (a list of dicts) or "
                              ".to_csv()") from exc
        return pd.DataFrame(self.table)

    def to_csv(self, path: Optional[PathLike] = None) -> str:
        """The tidy table as CSV text, written atomically to ``path`` when given."""
        cols = ["measure", "model_a", "model_b", "layer_a", "layer_b", "index_a", "index_b",
                "value", "p_value"]
        rows = ([*(r[c] for c in cols[:-2]), f"{r['value']:.10g}",
                 "" if r["p_value"] is None else f"{r['p_value']:.6g}"] for r in self.table)
        return write_csv(cols, rows, path)

    def summary(self) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
        """Per measure and pair ``'a|b'``: the mean, the mean best match per row of ``a`` and, for
        square matrices, the diagonal/off-diagonal means and how often each row's best match is
        the corresponding layer."""
        out: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {}
        for measure in self.measures:
            out[measure] = {}
            for (a, b), m in self.matrices.items():
                v = m[measure]
                best = v.max(1).values if self.higher_is_similar(measure) else v.min(1).values
                row: Dict[str, Optional[float]] = {"mean": float(v.mean()),
                                                   "mean_best_match": float(best.mean())}
                if v.shape[0] == v.shape[1]:
                    row.update(m.diagonal_contrast(measure))
                if f"{measure}:p" in m.metrics:  # a permutation test at 0.05 rejects p <= 0.05
                    row["share_p_at_most_0.05"] = float((m[f"{measure}:p"] <= 0.05)
                                                        .double().mean())
                    row["p_resolution"] = m.meta.get("p_resolution")
                out[measure][f"{a}|{b}"] = row
        return out

    def to_dict(self) -> Dict[str, Any]:
        """Everything, JSON-ready (non-finite floats as strings)."""
        return jsonable({
            "format": FORMAT, "names": self.names, "layers": self.layers,
            "measures": self.measures,
            "matrices": [{"pair": [a, b], "matrix": m.to_dict()}
                         for (a, b), m in self.matrices.items()],
            "summary": self.summary(),
            "profiles": {n: p.to_dict() for n, p in self.profiles.items()},
            "info": self.info, "meta": self.meta})

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Comparison":
        """The inverse of :meth:`to_dict`."""
        cls._check_format(d)
        require_keys(d, ("names", "layers", "measures", "matrices"), "Comparison")
        mats = {(str(e["pair"][0]), str(e["pair"][1])): LayerMatrix.from_dict(e["matrix"])
                for e in d["matrices"]}
        profiles = {n: DepthProfile.from_dict(p) for n, p in d.get("profiles", {}).items()}
        return cls(d["names"], d["layers"], d["measures"], mats, profiles, d.get("info", {}),
                   d.get("meta", {}))


# ================================================================================== helpers
def _named_items(items: Any) -> List[Tuple[str, Item]]:
    pairs: List[Tuple[Optional[str], Any]]
    if isinstance(items, Mapping) and not isinstance(items, LayerFeatures) and \
            all(isinstance(v, (nn.Module, LayerFeatures, Mapping)) for v in items.values()):
        pairs = [(str(k), v) for k, v in items.items()]
    elif isinstance(items, (list, tuple)):
        pairs = [(None, v) for v in items]
    else:
        raise TypeError(f"models_or_feature_sets must be a list (or a dict {{name: item}}) of "
                        f"models or feature sets, got {type(items).__name__}")
    if not pairs:
        raise ValueError("models_or_feature_sets is empty")
    out: List[Tuple[str, Item]] = []
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


def _check_layer_keys(layers: Any, names: Sequence[str]) -> None:
    """A per-model ``layers`` dict may only name models that exist (a typo is an error, not the
    default layers)."""
    if isinstance(layers, Mapping) and any(isinstance(v, (list, tuple))
                                           for v in layers.values()):
        unknown = [k for k in layers if k not in names and k not in range(len(names))]
        if unknown:
            raise ValueError(f"layers names models {unknown} that are not compared; models are "
                             f"{list(names)}")


def _layers_for(layers: Any, name: str, index: int) -> Any:
    if isinstance(layers, Mapping) and (name in layers or index in layers):
        return layers.get(name, layers.get(index))
    if isinstance(layers, Mapping) and any(isinstance(v, (list, tuple)) for v in layers.values()):
        return None
    return layers


def _same_inputs(feats: Dict[str, LayerFeatures], labels: Optional[Tensor]) -> Tensor:
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


def _same_tokens(first: Optional[Tuple[Tensor, Tensor]], tokens: Optional[Tuple[Tensor, Tensor]],
                 name: str, first_name: str) -> Tuple[Tensor, Tensor]:
    """The ``(rows, positions)`` of a batch's real tokens (``pool='tokens'``), which every model
    must share: row ``i`` of every model's layers is then the same token."""
    if tokens is None:
        raise ValueError(f"pool='tokens': model {name!r} recorded no tokens (no tapped layer "
                         f"returned a token sequence [B, T, H])")
    if first is None:
        return tokens
    same = all(a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))
               for a, b in zip(first, tokens))
    if not same:
        raise ValueError(f"pool='tokens': model {name!r} has {tokens[0].numel()} tokens in a "
                         f"batch where model {first_name!r} has {first[0].numel()} (or at other "
                         f"positions): token rows compare only between models that read the same "
                         f"tokens; use pool='mean', 'cls' or 'last' for models with different "
                         f"tokenizers")
    return first


def _pairs(names: Sequence[str], within: bool) -> List[Pair]:
    """Every pair ``(a, b)``, ``a`` before ``b`` in ``names``, and ``(a, a)`` with ``within``."""
    return [(a, b) for i, a in enumerate(names) for b in names[i if within else i + 1:]]


def _matrix_meta(measures: Sequence[str], distance: Dict[str, bool], a: str, b: str,
                 **extra: Any) -> Dict[str, Any]:
    return {"measures": list(measures), "models": [a, b], "same_model": a == b,
            "distance": dict(distance), **extra}


# ================================================================================== streaming
def stream_cka(models: Union[Sequence[nn.Module], Mapping[str, nn.Module]], loader: Any,
               layers: Any = None, unbiased: bool = True,
               device: Optional[Union[str, torch.device]] = None,
               max_batches: Optional[int] = None, batch_fn: Optional[Callable[..., Any]] = None,
               within: bool = True, progress: bool = True, pool: Pool = None,
               layout: Optional[str] = None) -> Dict[Pair, LayerMatrix]:
    """Minibatch CKA (Nguyen et al. 2021) between every pair of models, streamed from a loader.

    Every model runs on each batch once (:class:`dyngraph.capture.LayerTaps`, outputs
    flattened or pooled by ``pool``); each layer's ``B × B`` Gram matrix updates one
    :class:`dyngraph.measures.MinibatchCKA` over all layers of all models; then the features are
    dropped. Memory is ``O((Σ L)·B²)``, independent of the number of samples.

    Transformers: token sequences ``[B, T, H]`` padded per batch need a token pool
    (``pool='mean'``, ``'cls'``, ``'last'``: one row per input from its real tokens, by the
    ``attention_mask``; ``'tokens'``: one row per real token, and every model must then see the
    same tokens). Hugging Face batches (a dict or ``BatchEncoding`` with ``input_ids``,
    ``attention_mask`` and ``labels``/``label``) run as ``model(**inputs)``.

    Args:
        models: Models (a list, or ``{name: model}``), already on ``device``.
        loader: Batches ``(inputs, labels)`` or dict batches (labels unused). Batches with fewer
            than 4 rows are skipped for the unbiased estimator (counted in
            ``meta['skipped_batches']``).
        layers: Per-model layer spec as in :func:`dyngraph.extract_features` (``None``:
            :func:`dyngraph.default_layers`), one spec for all or ``{name: spec}``.
        unbiased: Unbiased HSIC per batch (the paper's choice).
        device: Where to send the inputs (default: each model's parameters).
        max_batches: Stop after this many batches.
        batch_fn: ``batch -> (inputs, labels)``.
        within: Also return each model with itself.
        progress: Progress bar.
        pool: How each layer's output becomes rows, as in :func:`dyngraph.extract_features`:
            ``None`` (flattened), ``'avg'``, ``'max'`` or an int for conv maps; ``'mean'``,
            ``'cls'``, ``'last'`` or ``'tokens'`` for token sequences.
        layout: ``None`` (detected per layer), ``'channels_first'`` or ``'channels_last'``, as
            in :class:`dyngraph.capture.LayerTaps`.

    Returns:
        ``{(a, b): LayerMatrix}`` with the one metric ``'cka_minibatch'`` (values
        ``[La, Lb, 1]``).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> b = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
        >>> loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.zeros(64)), batch_size=16)
        >>> mats = dg.compare.stream_cka({'a': a, 'b': b}, loader, progress=False)
        >>> sorted(mats), tuple(mats[('a', 'b')]['cka_minibatch'].shape)
        ([('a', 'a'), ('a', 'b'), ('b', 'b')], (2, 2))
    """
    check_flag(unbiased, "unbiased")
    check_flag(within, "within")
    check_flag(progress, "progress")
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}")
    named: List[Tuple[str, nn.Module]] = []
    for n, m in _named_items(dict(models) if isinstance(models, Mapping) else models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"stream_cka needs models, got {type(m).__name__} for {n!r}")
        named.append((n, m))
    _check_layer_keys(layers, [n for n, _ in named])
    if max_batches is not None:
        check_positive_int(max_batches, "max_batches")
    check_layout(layout, check_pool(pool))
    acc = MinibatchCKA(unbiased=unbiased)
    skipped = seen = 0
    least = 4 if unbiased else 2
    with contextlib.ExitStack() as stack:
        taps = [stack.enter_context(LayerTaps(m, _layers_for(layers, n, i), pool=pool,
                                              layout=layout))
                for i, (n, m) in enumerate(named)]
        devices = [torch.device(device) if device is not None else
                   next(iter(m.parameters()), torch.empty(0)).device for _, m in named]
        total = len(loader) if hasattr(loader, "__len__") else None
        for bi, batch in enumerate(progress_bar(loader, desc="stream CKA", total=total,
                                                disable=not progress)):
            if max_batches is not None and bi >= max_batches:
                break
            inputs, targets = split_batch(batch, batch_fn)
            b = inputs.shape[0] if isinstance(inputs, Tensor) else len(targets)
            if b < least:
                skipped += 1
                continue
            feats: List[Tensor] = []
            tokens: Optional[Tuple[Tensor, Tensor]] = None
            for (n, _), t, dev in zip(named, taps, devices):
                feats.extend(t(to_device(inputs, dev)).values())
                if pool == "tokens":
                    tokens = _same_tokens(tokens, t.tokens, n, named[0][0])
            rows = int(feats[0].shape[0])   # the inputs, or their real tokens (pool='tokens')
            if rows < least:
                skipped += 1
                continue
            acc.update([f.to(feats[0].device) for f in feats])
            seen += rows
    if acc.n_batches == 0:
        raise ValueError("stream_cka: the loader produced no usable batch")
    full = acc.compute().cpu()
    offs = [0, *accumulate(len(t.names) for t in taps)]
    index = {n: i for i, (n, _) in enumerate(named)}
    stats = {"unbiased": unbiased, "batches": acc.n_batches, "rows": seen,
             "skipped_batches": skipped}
    out = {}
    for na, nb in _pairs(list(index), within):
        i, j = index[na], index[nb]
        block = full[offs[i]:offs[i + 1], offs[j]:offs[j + 1]]
        meta = _matrix_meta([STREAMED], {STREAMED: False}, na, nb, **{STREAMED: stats})
        out[(na, nb)] = LayerMatrix(taps[i].names, taps[j].names, [STREAMED], block, meta)
    return out


# ================================================================================== compare
def _prepare(feats: LayerFeatures, ms: Sequence[Measure], y: Optional[Tensor],
             opts: Dict[str, Dict[str, Any]], device: Any, name: str,
             progress: bool) -> Dict[str, Dict[str, Any]]:
    """``{measure: {layer: prepared state}}`` of one model: its share of every pair."""
    return {m.name: prepare_layers(feats, m, y if m.labels else None, opts[m.name], device,
                                   name, progress) for m in ms}


def _free_profile(states: Dict[str, Dict[str, Any]], y: Optional[Tensor], layers: List[str],
                  name: str) -> Optional[DepthProfile]:
    """Per-layer values the prepared states already hold: the label modularity of the kNN
    snapshot and the kNN purity."""
    cols: Dict[str, List[float]] = {}
    meta: Dict[str, Any] = {"label": name}
    q = states.get("modularity_distance")
    if q and all(isinstance(s, RepresentationSummary) and s.q is not None for s in q.values()):
        cols["modularity"] = [float(q[layer].q) for layer in layers]
        meta["modularity_k"] = q[layers[0]].modularity_k
    knn = states.get("knn_overlap") or states.get("mutual_knn")
    if knn and y is not None and all(isinstance(s, RepresentationSummary)
                                     and s.knn_idx is not None for s in knn.values()):
        purity = []
        for layer in layers:
            idx = knn[layer].knn_idx
            yy = y.to(idx.device)
            purity.append(float((yy[idx] == yy.unsqueeze(1)).double().mean()))
        cols["knn_purity"] = purity
        meta["k"] = knn[layers[0]].k
    if not cols:
        return None
    samples = torch.tensor(list(cols.values()), dtype=torch.float64).T.unsqueeze(0)  # [1, L, M]
    return DepthProfile(layers, list(cols), samples, meta)


def _as_features(name: str, item: Item, loader: Any, layers: Any, index: int,
                 labels: Optional[Tensor], progress: bool, **extract: Any) -> LayerFeatures:
    if isinstance(item, nn.Module):
        from ..capture._extract import extract_features
        return extract_features(item, loader, layers=_layers_for(layers, name, index),
                                progress=progress, **extract)
    if isinstance(item, LayerFeatures):
        return item
    if not item:
        raise ValueError(f"feature set {name!r} is empty")
    first = next(iter(item.values()))
    if not isinstance(first, Tensor):
        raise TypeError(f"feature set {name!r} must map layer names to Tensors, got "
                        f"{type(first).__name__}")
    lab = labels if labels is not None else torch.zeros(first.shape[0], dtype=torch.long)
    return LayerFeatures(dict(item), check_labels(lab, first.shape[0], "labels"))


def compare_models(models_or_feature_sets: Any, loader: Any = None,
                   measures: Sequence[str] = DEFAULT_MEASURES,
                   names: Optional[Sequence[str]] = None, layers: Any = None,
                   labels: Optional[Tensor] = None, per_class: Optional[int] = None,
                   n_samples: Optional[int] = None, seed: int = 0, k: int = 10,
                   metric: str = "cosine", symmetrize: Optional[str] = "mean",
                   modularity_k: int = 3, backend: str = "auto", permutations: int = 0,
                   within: bool = True, pool: Pool = None,
                   device: Optional[Union[str, torch.device]] = None,
                   spill_dir: Optional[str] = None,
                   info: Optional[Mapping[str, Dict[str, Any]]] = None,
                   measure_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   progress: bool = True, layout: Optional[str] = None,
                   batch_fn: Optional[Callable[[Any], Tuple[Any, Any]]] = None) -> Comparison:
    """Compares two or more models (or feature sets) layer by layer on the same inputs.

    Per model, once: extract the representations of the chosen layers (for ``nn.Module`` items,
    with :func:`dyngraph.extract_features` on ``loader`` — the same seeded class-balanced sample
    for every model) and prepare each layer for every measure. Then every pair is scored from the
    prepared states, each cell exactly as :func:`dyngraph.layer_matrix` scores it (same
    permutation seeds, so the same p-values).

    Transformers (the recipe for a pretrained against a fine-tuned checkpoint, or two
    architectures on the same texts): give a loader of Hugging Face batches (dicts or
    ``BatchEncoding`` with ``input_ids``, ``attention_mask`` and ``labels``/``label``, padded per
    batch) and a token pool: ``pool='mean'`` averages each text's real tokens (the attention
    mask), ``'cls'`` takes its first token, ``'last'`` its last real token, and ``'tokens'`` makes
    every real token a row (then every model must read the same tokens). The pool applies to the
    extraction and to the streamed ``'cka_minibatch'`` alike; ``layers=None`` taps the embedding
    output and every block (:func:`dyngraph.default_layers`).

    Args:
        models_or_feature_sets: A list, or ``{name: item}``, of ``nn.Module`` (needs ``loader``),
            :class:`dyngraph.LayerFeatures` or ``{layer: Tensor[N, ...]}`` (same N inputs, same
            order).
        loader: DataLoader for the models.
        measures: Registered pair measures (``'cka'``, ``'cka_unbiased'``, ``'knn_overlap'``,
            ``'mutual_knn'``, ``'graph'``, ``'modularity_distance'``, or your own) and
            ``'cka_minibatch'`` (models only: streamed over the whole ``loader`` with
            :func:`stream_cka`).
        names: Model names (default: the dict keys, or ``<Class>_<i>``).
        layers: Layer spec for extraction (one for all, or ``{name: spec}``); default
            :func:`dyngraph.default_layers`.
        labels: ``[N]`` classes for plain-dict feature sets (LayerFeatures carry theirs).
        per_class, n_samples, seed: Class-balanced sampling of the loader (all samples when both
            are ``None``); ``seed`` also seeds the permutations.
        k, metric, symmetrize: kNN-measure and graph settings of the built-in measures.
        modularity_k: Snapshot k for the modularity distance (reference: 3).
        backend: kNN backend.
        permutations: When ``> 0``, a permutation p-value for every cell (costly: ``P`` times the
            pairwise work), as metric ``'<measure>:p'``.
        within: Also compute each model against itself (layer × layer within a model).
        pool: How each layer's output becomes rows (for the extraction and ``'cka_minibatch'``):
            ``None`` (flattened), ``'avg'``, ``'max'`` or an int for conv maps; ``'mean'``,
            ``'cls'``, ``'last'`` or ``'tokens'`` for token sequences ``[B, T, H]``.
        device, spill_dir: Passed to :func:`dyngraph.extract_features`.
        info: Extra per-model information to carry into the report (e.g. accuracy).
        measure_options: ``{measure: {option: value}}`` for the measures' ``prepare`` (merged
            over the settings above for the built-in measures).
        progress: Progress bars.
        layout: ``None`` (detected per layer), ``'channels_first'`` or ``'channels_last'``, as
            in :class:`dyngraph.capture.LayerTaps`.
        batch_fn: ``batch -> (inputs, labels)`` for batches of another shape (default: tuples
            ``(inputs, labels)`` and dicts, see :func:`dyngraph.extract_features`).

    Returns:
        A :class:`Comparison` (``.matrix(a, b)``, ``.table``, ``.summary()``, ``.to_json``);
        draw it with ``dg.plot(result, metric=...)`` and log it with ``dg.log(writer, result)``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(120) % 3
        >>> a = {'l1': torch.randn(120, 8, generator=g),
        ...      'l2': torch.randn(120, 8, generator=g) + 4 * torch.eye(8)[y]}
        >>> b = {k: 2 * v for k, v in a.items()}
        >>> res = dg.compare.compare_models({'a': a, 'b': b}, measures=['cka', 'mutual_knn'],
        ...                                 labels=y, progress=False)
        >>> [round(v, 6) for v in res.matrix('a', 'b')['cka'].diagonal().tolist()]
        [1.0, 1.0]
        >>> len(res.table)
        24
    """
    t0 = time.perf_counter()
    if not isinstance(measures, (str, list, tuple)):
        raise TypeError(f"measures must be a measure name or a list of names, got "
                        f"{type(measures).__name__}: {measures!r}")
    measures = [measures] if isinstance(measures, str) else list(measures)
    if not measures:
        raise ValueError("measures is empty")
    if len(set(measures)) != len(measures):
        raise ValueError(f"measures lists a measure twice: {measures}")
    ms = resolve([m for m in measures if m != STREAMED], "pair") \
        if any(m != STREAMED for m in measures) else []
    check_positive_int(permutations, "permutations", minimum=0)
    # The settings, checked before any model runs (extraction is the slow part).
    from ..graphs._graph import SYMMETRIZE
    from ..graphs._knn import BACKENDS, METRICS
    check_positive_int(k, "k")
    check_positive_int(modularity_k, "modularity_k")
    check_choice(metric, "metric", METRICS)
    if symmetrize is not None:
        check_choice(symmetrize, "symmetrize", SYMMETRIZE)
    check_choice(backend, "backend", BACKENDS)
    check_flag(within, "within")
    check_flag(progress, "progress")
    check_layout(layout, check_pool(pool))
    if batch_fn is not None and not callable(batch_fn):
        raise TypeError(f"batch_fn must be callable (batch -> (inputs, labels)), got "
                        f"{type(batch_fn).__name__}: {batch_fn!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    if info is not None and not isinstance(info, Mapping):
        raise TypeError(f"info must be a dict {{model name: {{key: value}}}}, got "
                        f"{type(info).__name__}")
    items = _named_items(models_or_feature_sets)
    if names is not None:
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise TypeError(f"names must be a list of model names, got {type(names).__name__}: "
                            f"{names!r}")
        names = [str(n) for n in names]
        if len(names) != len(items):
            raise ValueError(f"names has {len(names)} entries for {len(items)} models")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names}")
        items = [(n, v) for n, (_, v) in zip(names, items)]
    if len(items) < 2 and not within:
        raise ValueError("compare needs two or more models (or within=True)")
    models = {n: v for n, v in items if isinstance(v, nn.Module)}
    if models and loader is None:
        raise ValueError("models need a loader: compare_models(models, loader, ...)")
    names_ = [n for n, _ in items]
    _check_layer_keys(layers, names_)
    if STREAMED in measures and len(models) != len(items):
        raise ValueError(f"measure {STREAMED!r} streams the models over the loader; every item "
                         f"must then be an nn.Module")
    builtin = {"k": k, "metric": metric, "symmetrize": symmetrize, "modularity_k": modularity_k,
               "backend": backend}
    given = check_measure_options(measure_options, ms)
    opts = {m.name: {**(builtin if m.name in MEASURES else {}), **given.get(m.name, {})}
            for m in ms}

    # ---- per-model work, once
    feats: Dict[str, LayerFeatures] = {}
    timings: Dict[str, float] = {}
    for i, (name, item) in enumerate(items):
        t = time.perf_counter()
        feats[name] = _as_features(name, item, loader, layers, i, labels, progress,
                                   per_class=per_class, n_samples=n_samples, seed=seed,
                                   pool=pool, layout=layout, device=device,
                                   spill_dir=spill_dir, batch_fn=batch_fn)
        timings[f"extract:{name}"] = round(time.perf_counter() - t, 3)
    has_labels = labels is not None or any(isinstance(v, (nn.Module, LayerFeatures))
                                           for _, v in items)
    y: Optional[Tensor] = _same_inputs(feats, labels)
    if not has_labels:
        needs = [m.name for m in ms if m.labels]
        if needs:
            raise ValueError(f"measure {needs[0]!r} needs labels for plain-dict feature sets: "
                             f"pass labels=")
        y = None
    states: Dict[str, Dict[str, Dict[str, Any]]] = {}
    profiles: Dict[str, DepthProfile] = {}
    for name, f in feats.items():
        t = time.perf_counter()
        states[name] = _prepare(f, ms, y, opts, device, name, progress)
        prof = _free_profile(states[name], y, f.names, name)
        if prof is not None:
            profiles[name] = prof
        timings[f"prepare:{name}"] = round(time.perf_counter() - t, 3)

    # ---- pairwise fill
    pairs = _pairs(names_, within)
    distance = {m.name: m.distance for m in ms}
    blocks: Dict[Pair, Dict[str, Tensor]] = {pair: {} for pair in pairs}
    t = time.perf_counter()
    for m in progress_bar(ms, desc="pairs", disable=not progress):
        for a, b in pairs:
            sa, sb = states[a][m.name], states[b][m.name]
            vals, ps = score_layers(sa, sb, feats[a], feats[b], m, y if m.labels else None,
                                    opts[m.name], permutations, seed, symmetric=a == b)
            blocks[(a, b)][m.name] = vals
            if ps is not None:
                blocks[(a, b)][f"{m.name}:p"] = ps
    timings["pairwise"] = round(time.perf_counter() - t, 3)
    streamed: Dict[Pair, LayerMatrix] = {}
    if STREAMED in measures:
        t = time.perf_counter()
        streamed = stream_cka(models, loader, layers=layers, device=device, within=within,
                              progress=progress, pool=pool, layout=layout, batch_fn=batch_fn)
        distance[STREAMED] = False
        timings[STREAMED] = round(time.perf_counter() - t, 3)
    settings = {"k": k, "metric": metric, "symmetrize": symmetrize,
                "modularity_k": modularity_k, "n_samples": next(iter(feats.values())).n_samples,
                "per_class": per_class, "seed": seed, "permutations": permutations,
                "p_resolution": 1.0 / (permutations + 1) if permutations else None,
                "measure_options": jsonable(opts), "pool": pool}
    if layout is not None:
        settings["layout"] = layout
    matrices: Dict[Pair, LayerMatrix] = {}
    for a, b in pairs:
        extra = dict(settings)
        if (a, b) in streamed:
            sm = streamed[(a, b)]
            if sm.rows != feats[a].names or sm.cols != feats[b].names:
                raise ValueError(f"stream_cka tapped layers {sm.rows} x {sm.cols}, the features "
                                 f"have {feats[a].names} x {feats[b].names}")
            blocks[(a, b)][STREAMED] = sm[STREAMED]
            extra[STREAMED] = sm.meta[STREAMED]
        metrics = [x for m in measures for x in (m, f"{m}:p") if x in blocks[(a, b)]]
        values = torch.stack([blocks[(a, b)][x] for x in metrics], -1)
        matrices[(a, b)] = LayerMatrix(feats[a].names, feats[b].names, metrics, values,
                                       _matrix_meta(measures, distance, a, b, **extra))
    meta = dict(settings, measures=measures, seconds=timings,
                total_seconds=round(time.perf_counter() - t0, 3))
    meta["layers_hooked"] = {n: f.meta.get("points") for n, f in feats.items()
                             if f.meta.get("points")}
    return Comparison(names_, {n: feats[n].names for n in names_}, measures, matrices, profiles,
                      {n: dict((info or {}).get(n, {})) for n in names_}, meta)


__all__ = ["Comparison", "compare_models", "stream_cka", "DEFAULT_MEASURES", "COMPARE_MEASURES"]
