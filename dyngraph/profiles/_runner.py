"""The one runner: resampling, graphs, nulls and progress for every measure at once."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._io import CorruptFileError, PathLike, atomic_write_json, read_json_file, run_environment
from .._json import float_tensor, jsonable
from .._progress import progress_bar, progress_counter
from .._validate import (
    check_device,
    check_flag,
    check_labels,
    check_positive_int,
    layer_names,
)
from ..capture._extract import balanced_indices
from ..capture._features import LayerFeatures
from ..graphs._knn import is_row_source
from ..graphs._spec import GraphSpec
from ..measures._registry import Measure, resolve
from ..measures._similarity import RepresentationSummary, fill_matrix
from ._profile import DepthProfile, LayerMatrix

Options = Optional[Mapping[str, Mapping[str, Any]]]
CHECKPOINT_FORMAT = "dyngraph.depth_profile.checkpoint/1"


def as_layer_features(features: Any, y: Optional[Tensor] = None,
                      name: str = "features") -> LayerFeatures:
    """``LayerFeatures`` as given (labels replaced by ``y`` when given), or built from a
    ``{layer: Tensor[N, ...]}`` mapping plus ``y``."""
    if isinstance(features, LayerFeatures):
        if y is None:
            return features
        return LayerFeatures(dict(features._layers), check_labels(y, features.n_samples, "y"),
                             features.indices, features.meta)
    names = layer_names(features, name)
    if y is None:
        y = getattr(features, "y", None)
        if y is None:
            raise ValueError(f"y is required when {name} is a plain dict (the labels)")
    n = features[names[0]].shape[0]
    return LayerFeatures(dict(features), check_labels(y, n, "y"))


def check_measure_options(options: Options, measures: Sequence[Measure]
                          ) -> Dict[str, Dict[str, Any]]:
    """Validates ``measure_options``: ``{measure: {option: value}}`` for measures in the run."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"measure_options must be a dict {{measure: {{option: value}}}}, got "
                        f"{type(options).__name__}")
    names = {m.name for m in measures}
    out = {}
    for key, val in options.items():
        if key not in names:
            raise ValueError(f"measure_options names {key!r}, which is not among the measures "
                             f"{sorted(names)}")
        if not isinstance(val, Mapping):
            raise TypeError(f"measure_options[{key!r}] must be a dict, got {type(val).__name__}")
        out[key] = dict(val)
    return out


def _as_floats(measure: Measure, value: Any) -> List[float]:
    """A measure's return value as floats in the order of ``measure.metrics``."""
    if isinstance(value, Mapping):
        missing = [k for k in measure.metrics if k not in value]
        if missing or not measure.outputs:
            raise ValueError(f"measure {measure.name!r} returned a dict with keys "
                             f"{sorted(value)}; register it with outputs= naming the values "
                             f"(missing: {missing or list(value)})")
        return [float(value[k]) for k in measure.metrics]
    if measure.outputs and len(measure.outputs) > 1:
        raise ValueError(f"measure {measure.name!r} declares outputs {measure.outputs} but "
                         f"returned {type(value).__name__}")
    try:
        return [float(value)]
    except (TypeError, ValueError):
        raise TypeError(f"measure {measure.name!r} must return a float (or a dict of floats), "
                        f"got {type(value).__name__}") from None


def check_sampling(repeats: int, per_class: Optional[int], n_samples: Optional[int],
                    null_permutations: int) -> None:
    check_positive_int(repeats, "repeats")
    if per_class is not None and n_samples is not None:
        raise ValueError(f"give at most one of per_class or n_samples, got per_class="
                         f"{per_class!r}, n_samples={n_samples!r}")
    if per_class is not None:
        check_positive_int(per_class, "per_class")
    if n_samples is not None:
        check_positive_int(n_samples, "n_samples")
    if per_class is None and n_samples is None and repeats > 1:
        raise ValueError(f"repeats={repeats} needs per_class or n_samples (each repeat resamples)")
    if isinstance(null_permutations, bool) or not isinstance(null_permutations, int) or \
            null_permutations < 0:
        raise ValueError(f"null_permutations must be an integer >= 0, got {null_permutations!r}")


def _fingerprint(feats: LayerFeatures, settings: Dict[str, Any]) -> str:
    """A hash of the settings, the labels, every layer's shape and a strided sample of its values:
    a checkpoint is reused only for the same run on the same features."""
    h = hashlib.sha256(json.dumps(jsonable(settings), sort_keys=True).encode())
    h.update(feats.y.cpu().numpy().tobytes())
    for name in feats.names:
        stored = feats.stored(name)
        h.update(f"{name}:{tuple(stored.shape)}".encode())
        rows = torch.linspace(0, stored.shape[0] - 1, min(16, stored.shape[0])).long()
        sample = feats[name][rows].reshape(len(rows), -1)
        cols = torch.linspace(0, sample.shape[1] - 1, min(64, sample.shape[1])).long()
        h.update(sample[:, cols].detach().cpu().double().numpy().tobytes())
    return h.hexdigest()


def _load_checkpoint(path: Path, fingerprint: str, shape: Tuple[int, ...]
                     ) -> Tuple[Tensor, Tensor]:
    """``(samples, done[R, L])`` from a checkpoint of the same run, or empty ones.

    The whole file is checked against its checksum (any flipped byte is a
    :class:`~dyngraph._io.CorruptFileError`), the samples also against their own digest (the
    only check of a checkpoint written before checksums)."""
    samples = torch.full(shape, float("nan"), dtype=torch.float64)
    done = torch.zeros(shape[:2], dtype=torch.bool)
    if not path.exists():
        return samples, done
    fix = "delete it to start over"
    try:
        with warnings.catch_warnings():  # the samples' digest checks a checkpoint without one
            warnings.simplefilter("ignore", UserWarning)
            d = read_json_file(path, fix=fix, what="a depth_profile checkpoint")
    except OSError as exc:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({exc}); {fix}") from None
    if not (isinstance(d, dict) and d.get("format") == CHECKPOINT_FORMAT):
        raise ValueError(f"checkpoint {str(path)!r} is not a depth_profile checkpoint; {fix}")
    if d.get("fingerprint") != fingerprint:
        raise ValueError(f"checkpoint {str(path)!r} belongs to another run (other settings or "
                         f"features); delete it or choose another checkpoint path")
    try:
        stored = float_tensor(d["samples"], "checkpoint samples")
        done = torch.tensor(d["done"], dtype=torch.bool)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CorruptFileError(path, f"its samples cannot be read ({exc})", fix) from None
    if tuple(stored.shape) != shape or tuple(done.shape) != shape[:2] \
            or _digest(stored) != d.get("digest"):
        raise CorruptFileError(path, "its values do not match their checksum", fix)
    return stored, done


def _digest(samples: Tensor) -> str:
    return hashlib.sha256(samples.contiguous().numpy().tobytes()).hexdigest()


def _save_checkpoint(path: Path, fingerprint: str, samples: Tensor, done: Tensor) -> None:
    atomic_write_json(path, {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint,
                             "done": done.tolist(), "samples": jsonable(samples),
                             "digest": _digest(samples)})


@contextlib.contextmanager
def _naming(m: Measure, layer: str) -> Iterator[None]:
    """A measure's ``ValueError``/``TypeError`` name the layer and the measure."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"layer {layer!r}, measure {m.name!r}: {exc}") from exc


def _call(m: Measure, layer: str, x: Tensor, y: Tensor, g: Any, opts: Dict[str, Any]
          ) -> List[float]:
    """One measure on one layer."""
    with _naming(m, layer):
        return _as_floats(m, m.fn(x, y, g, **opts))


def _call_null(m: Measure, layer: str, x: Tensor, ys: Tensor, g: Any, opts: Dict[str, Any]
               ) -> Tensor:
    """A measure's batched null ``[P, outputs]``."""
    assert m.null is not None
    with _naming(m, layer):
        v = torch.as_tensor(m.null(x, ys, g, **opts), dtype=torch.float64).cpu()
    return v.reshape(ys.shape[0], len(m.metrics))


def depth_profile(features: Any, measures: Union[str, Sequence[str]] = ("modularity",), *,
                  y: Optional[Tensor] = None, graph: Optional[GraphSpec] = None,
                  repeats: int = 1, per_class: Optional[int] = None,
                  n_samples: Optional[int] = None, null_permutations: int = 0, seed: int = 0,
                  measure_options: Options = None,
                  device: Optional[Union[str, torch.device]] = None,
                  checkpoint: Optional[PathLike] = None,
                  samples: Optional[Sequence[Any]] = None,
                  progress: bool = True) -> DepthProfile:
    """Every chosen measure at every layer, over seeded class-balanced resamplings, with
    label-permutation nulls: the one loop behind every quantity over depth.

    Repeat ``r`` draws ``balanced_indices(y, per_class, n_samples, seed + r)``; each layer's
    features ``[N, D]`` (flattened) are scored by every measure, its kNN graph built once with
    ``graph`` when a measure needs it. With ``null_permutations = P``, every measure that reads
    the labels is also scored with the labels permuted ``P`` times (permutation ``p`` is the
    ``p``-th ``torch.randperm(N)`` of a CPU generator seeded with ``seed + r``, shared by all
    layers); the profile then has ``'<metric>:null_mean'``, ``'<metric>:null_std'`` and
    ``'<metric>:z'`` per repeat.

    Args:
        features: :class:`~dyngraph.LayerFeatures` or an ordered ``{layer: Tensor[N, ...]}``.
        measures: Registered layer measure names (``dg.measures.available('layer')``).
        y: ``[N]`` integer labels (default: ``features.y``).
        graph: The :class:`~dyngraph.GraphSpec` of the kNN graphs (default: the reference).
        repeats: Number of resamplings.
        per_class, n_samples: Size of each resampling; both ``None``: all samples, once.
        null_permutations: Label permutations per repeat (``0``: none).
        seed: First seed.
        measure_options: ``{measure: {option: value}}`` passed to the measures (e.g.
            ``{'knn_purity': {'k': 5}}``, ``{'nc3': {'classifier': model.fc}}``).
        device: Where to compute (default: where the features are).
        checkpoint: A JSON file updated atomically after every layer of every repeat; a rerun
            of the same run (same settings, labels and features, checked by a fingerprint)
            resumes after the last finished layer and gives bitwise the same profile. A
            checkpoint of another run or a corrupt one is an error, never silently reused.
        samples: The rows of each repeat, given instead of drawn (one index tensor per repeat,
            positions into ``features``): e.g. draws made on a larger pool whose used rows alone
            were extracted. Replaces ``repeats``, ``per_class`` and ``n_samples``.
        progress: A progress bar over repeats × layers.

    Returns:
        A :class:`~dyngraph.DepthProfile`, samples ``[repeats, layers, metrics]``; its ``meta``
        holds the settings and ``'environment'`` (torch's thread count and version, the
        determinism flags).

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 4
        >>> f = {'a': torch.randn(200, 8, generator=g),
        ...      'b': torch.randn(200, 8, generator=g) + 5 * torch.eye(8)[y]}
        >>> p = dg.depth_profile(f, ['modularity', 'twonn'], y=y, per_class=30, repeats=3,
        ...                      null_permutations=20, progress=False)
        >>> tuple(p.samples.shape), p.metrics[:3]
        ((3, 2, 5), ['modularity', 'twonn', 'modularity:null_mean'])
        >>> bool(p['modularity:z'].values[1] > 10)
        True
    """
    given = None
    if samples is not None:
        if per_class is not None or n_samples is not None or repeats != 1:
            raise ValueError("samples= replaces repeats, per_class and n_samples: give either")
        if isinstance(samples, (str, bytes)) or not isinstance(samples, (list, tuple)):
            raise TypeError(f"samples must be a list of index tensors (one per repeat), got "
                            f"{type(samples).__name__}")
        given = []
        for i, s_ in enumerate(samples):
            t_ = torch.as_tensor(s_)
            if t_.dtype.is_floating_point or t_.dtype.is_complex or t_.dtype == torch.bool:
                raise TypeError(f"samples[{i}] must hold integer row indices, got dtype "
                                f"{t_.dtype} (a float index is not truncated)")
            given.append(t_.long().reshape(-1))
        if not given or any(s.numel() < 2 for s in given):
            raise ValueError("samples must be a non-empty list of index tensors (>= 2 rows each)")
    check_sampling(repeats, per_class, n_samples, null_permutations)
    if given is not None:
        repeats = len(given)
    check_flag(progress, "progress")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    device = check_device(device)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike), got "
                        f"{type(checkpoint).__name__}: {checkpoint!r}")
    if graph is None:
        graph = GraphSpec()
    if not isinstance(graph, GraphSpec):
        raise TypeError(f"graph must be a dg.GraphSpec, got {type(graph).__name__}")
    feats = as_layer_features(features, y)
    ms = resolve(measures, "layer")
    opts = check_measure_options(measure_options, ms)
    need_graph = any(m.graph for m in ms)
    null_ms = [m for m in ms if m.labels] if null_permutations else []
    if null_permutations and not null_ms:
        raise ValueError(f"null_permutations={null_permutations}: none of {[m.name for m in ms]} "
                         f"reads the labels, so a label-permutation null means nothing")
    base = [name for m in ms for name in m.metrics]
    null_names = [f"{name}:{part}" for m in null_ms for name in m.metrics
                  for part in ("null_mean", "null_std", "z")]
    names = feats.names
    meta: Dict[str, Any] = {
        "measures": [m.name for m in ms], "graph": graph.to_dict() if need_graph else None,
        "repeats": repeats, "per_class": per_class, "n_samples": feats.n_samples, "seed": seed,
        "null_permutations": null_permutations,
        "measure_options": jsonable(opts) if opts else {}}
    if given is not None:
        meta["given_rows"] = [s.tolist() for s in given]
    shape = (repeats, len(names), len(base) + len(null_names))
    ckpt = None if checkpoint is None else Path(checkpoint)
    fingerprint = _fingerprint(feats, {**meta, "layers": names}) if ckpt else ""
    # recorded, not fingerprinted: the thread count can change the last bits of a result
    meta["environment"] = run_environment()
    out, done = (_load_checkpoint(ckpt, fingerprint, shape) if ckpt else
                 (torch.full(shape, float("nan"), dtype=torch.float64),
                  torch.zeros(shape[:2], dtype=torch.bool)))
    bar = progress_counter(repeats * len(names), desc="profile", disable=not progress)
    bar.update(int(done.sum()))
    try:
        for r in range(repeats):
            sub = feats
            if given is not None:
                idx = given[r]
                if int(idx.min()) < 0 or int(idx.max()) >= feats.n_samples:
                    raise ValueError(f"samples[{r}] holds rows outside the features' "
                                     f"{feats.n_samples} samples")
                sub = feats.subset(idx)
                meta["n_samples"] = int(idx.numel())
            elif per_class is not None or n_samples is not None:
                idx = balanced_indices(feats.y, per_class, n_samples, seed + r)
                sub = feats.subset(idx)
                meta["n_samples"] = int(idx.numel())
            if bool(done[r].all()):
                continue
            yy = sub.y if device is None else sub.y.to(device)
            check_labels(yy, sub.n_samples, "y", min_classes=2 if need_graph else 1)
            perms: List[Tensor] = []
            if null_ms:
                gen = torch.Generator().manual_seed(int(seed + r))
                perms = [torch.randperm(sub.n_samples, generator=gen).to(yy.device)
                         for _ in range(null_permutations)]
            nulls = {m.name: torch.empty(null_permutations, len(names), len(m.metrics),
                                         dtype=torch.float64) for m in null_ms}
            for li, name in enumerate(names):
                if bool(done[r, li]):  # (with nulls a repeat is saved whole, never in part)
                    continue
                stored = sub.stored(name)
                x = sub[name]
                x = x.reshape(x.shape[0], -1)
                if device is not None:
                    x = x.to(device)
                yy = yy.to(x.device)
                g = None
                if need_graph:
                    src = stored if graph.out_of_core and is_row_source(stored) else x
                    try:  # (the finite check is the kNN's own, on the row norms: no extra pass)
                        g = graph.build(src, yy, layer_name=name, layer_index=li,
                                        progress=progress and repeats == 1)
                    except ValueError as exc:
                        if f"layer {name!r}" in str(exc):
                            raise
                        raise type(exc)(f"layer {name!r}: {exc}") from exc
                col = 0
                for m in ms:
                    for v in _call(m, name, x, yy, g, opts.get(m.name, {})):
                        out[r, li, col] = v
                        col += 1
                for m in null_ms:  # [P, outputs] per measure, stats once the repeat is done
                    if m.null is not None:  # the measure's batched form: one pass, same values
                        ys = torch.stack([yy[p] for p in perms])
                        nulls[m.name][:, li] = _call_null(m, name, x, ys, g,
                                                          opts.get(m.name, {}))
                        continue
                    nulls[m.name][:, li] = torch.tensor(
                        [_call(m, name, x, yy[p], g, opts.get(m.name, {})) for p in perms],
                        dtype=torch.float64)
                bar.update(1)
                if not null_ms:
                    done[r, li] = True
                    if ckpt:
                        _save_checkpoint(ckpt, fingerprint, out, done)
            if null_ms:
                col = len(base)
                for m in null_ms:
                    mu, sd = nulls[m.name].mean(0), nulls[m.name].std(0)  # [L, outputs]
                    for j, metric in enumerate(m.metrics):
                        obs = out[r, :, base.index(metric)]
                        out[r, :, col:col + 3] = torch.stack([mu[:, j], sd[:, j],
                                                              (obs - mu[:, j]) / sd[:, j]], 1)
                        col += 3
                done[r] = True
                if ckpt:
                    _save_checkpoint(ckpt, fingerprint, out, done)
    finally:
        bar.close()
    meta.update({k: v for k, v in feats.meta.items() if k not in meta})
    return DepthProfile(names, base + null_names, out, meta)


def prepare_layers(feats: LayerFeatures, m: Measure, y: Optional[Tensor], opts: Dict[str, Any],
                   device: Any = None, tag: str = "", progress: bool = False) -> Dict[str, Any]:
    """``{layer: state}``: pair measure ``m``'s per-layer preparation, one layer in memory at a
    time (the layer itself when the measure has no ``prepare``)."""
    prep = m.prepare
    out = {}
    for name in progress_bar(feats.names, desc=f"{m.name} {tag}", disable=not progress):
        x = feats[name]
        x = x.reshape(x.shape[0], -1)
        if device is not None:
            x = x.to(device)
        lab = None if y is None else y.to(x.device)
        out[name] = x if prep is None else prep(x, lab, **opts)
    return out


def score_layers(sa: Dict[str, Any], sb: Dict[str, Any], fa: LayerFeatures, fb: LayerFeatures,
                 m: Measure, y: Optional[Tensor], opts: Dict[str, Any], permutations: int = 0,
                 seed: int = 0, symmetric: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """``[La, Lb]`` values (and permutation p-values) of pair measure ``m`` from prepared states.

    Built-in measures (their states are ``RepresentationSummary``) fill the matrix with their
    permutation test, using symmetry when ``symmetric``; a user's measure scores every cell, and
    its permutations re-prepare B's rows permuted (``seed + 7919 i + j`` per cell).
    """
    if isinstance(next(iter(sa.values())), RepresentationSummary):
        return fill_matrix(sa, sb, m.name, permutations=permutations, seed=seed,
                           symmetric=symmetric)
    la, lb = list(sa), list(sb)
    vals = torch.empty(len(la), len(lb), dtype=torch.float64)
    ps = torch.empty_like(vals) if permutations else None
    for i, a in enumerate(la):
        for j, b in enumerate(lb):
            v = _as_floats(m, m.fn(sa[a], sb[b]))[0]
            vals[i, j] = v
            if ps is not None:
                gen = torch.Generator().manual_seed(int(seed + 7919 * i + j))
                xb = fb[b].reshape(fb.n_samples, -1)
                null = []
                for _ in range(permutations):
                    perm = torch.randperm(xb.shape[0], generator=gen)
                    state = xb[perm] if m.prepare is None else m.prepare(xb[perm], y, **opts)
                    null.append(_as_floats(m, m.fn(sa[a], state))[0])
                t = torch.tensor(null, dtype=torch.float64)
                extreme = (t <= v).sum() if m.distance else (t >= v).sum()
                ps[i, j] = (1 + int(extreme)) / (permutations + 1)
    return vals, ps


def layer_matrix(features_a: Any, features_b: Any = None,
                 measures: Union[str, Sequence[str]] = ("cka",), *, y: Optional[Tensor] = None,
                 permutations: int = 0, seed: int = 0, measure_options: Options = None,
                 device: Optional[Union[str, torch.device]] = None,
                 progress: bool = False) -> LayerMatrix:
    """A pair measure between every layer of A and every layer of B (or of A again).

    Each layer is prepared once per measure (its CKA state, kNN lists, graph rows...), then every
    cell is scored from the prepared states. With ``permutations = P`` each cell also gets a
    permutation p-value ``(1 + #{null as extreme}) / (P + 1)`` as metric ``'<measure>:p'``; its
    resolution is ``1/(P + 1)``.

    Args:
        features_a: :class:`~dyngraph.LayerFeatures` or ``{layer: Tensor[N, ...]}``.
        features_b: The same inputs through another model, or ``None`` for A × A.
        measures: Registered pair measure names (``dg.measures.available('pair')``).
        y: ``[N]`` labels (for label-reading measures such as ``'modularity_distance'``;
            default ``features_a.y``).
        permutations: Permutations per cell for p-values (``0``: none).
        seed: Seed of the permutations.
        measure_options: ``{measure: {option: value}}`` (e.g. ``{'mutual_knn': {'k': 5}}``).
        device: Where to compute.
        progress: Progress bars over layers.

    Returns:
        A :class:`~dyngraph.LayerMatrix` with values ``[La, Lb, M]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(100, 8, generator=g)
        >>> f = {'l1': x, 'l2': 2 * x, 'l3': torch.randn(100, 4, generator=g)}
        >>> m = dg.layer_matrix(f, measures=['cka', 'mutual_knn'],
        ...                     measure_options={'mutual_knn': {'k': 5}})
        >>> [round(v, 6) for v in m['cka'].diagonal().tolist()], bool(m['cka'][0, 2] < 0.3)
        ([1.0, 1.0, 1.0], True)
    """
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 0:
        raise ValueError(f"permutations must be an integer >= 0, got {permutations!r}")
    check_flag(progress, "progress")
    ms = resolve(measures, "pair")
    opts = check_measure_options(measure_options, ms)
    labels = y if y is not None else getattr(features_a, "y", None)
    fa = _pair_features(features_a, labels, "features_a")
    fb = fa if features_b is None else _pair_features(features_b, labels, "features_b")
    if fb.n_samples != fa.n_samples:
        raise ValueError(f"features_a has {fa.n_samples} samples and features_b "
                         f"{fb.n_samples}: a layer matrix needs the same inputs")
    if labels is not None:
        labels = check_labels(labels, fa.n_samples, "y")
    for m in ms:
        if m.labels and labels is None:
            raise ValueError(f"measure {m.name!r} needs labels: pass y= or LayerFeatures")
    metrics: List[str] = []
    blocks: List[Tensor] = []
    for m in ms:
        o = opts.get(m.name, {})
        lab = labels if m.labels else None
        sa = prepare_layers(fa, m, lab, o, device, "A", progress)
        sb = sa if features_b is None else prepare_layers(fb, m, lab, o, device, "B", progress)
        vals, ps = score_layers(sa, sb, fa, fb, m, lab, o, permutations, seed,
                                symmetric=features_b is None)
        metrics.append(m.name)
        blocks.append(vals)
        if ps is not None:
            metrics.append(f"{m.name}:p")
            blocks.append(ps)
    meta = {"measures": [m.name for m in ms], "permutations": permutations, "seed": seed,
            "p_resolution": 1.0 / (permutations + 1) if permutations else None,
            "n_samples": fa.n_samples, "same_model": features_b is None,
            "distance": {m.name: m.distance for m in ms},
            "measure_options": jsonable(opts) if opts else {}}
    return LayerMatrix(fa.names, fb.names, metrics, torch.stack(blocks, -1), meta)


def _pair_features(features: Any, labels: Optional[Tensor], name: str) -> LayerFeatures:
    if isinstance(features, LayerFeatures):
        return features
    names = layer_names(features, name)
    n = features[names[0]].shape[0]
    y = labels if labels is not None else torch.zeros(n, dtype=torch.long)
    return LayerFeatures(dict(features), check_labels(y, n, "y"))
