"""Class-balanced, streaming extraction of layer representations, built on :class:`LayerTaps`."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from .._progress import progress_bar
from .._validate import check_labels, check_model, check_positive_int
from ._features import LayerFeatures, SpilledArray, make_spill_dir, remove_spill_dir
from ._layers import LayerSpec
from ._taps import LayerTaps, split_batch, take_rows, to_device


def dataset_labels(dataset: Any) -> Optional[Tensor]:
    """Labels of a dataset without running it, when it exposes them unambiguously (the second
    tensor of a two-tensor ``TensorDataset``, or ``.targets``/``.labels``/``.y``); integer labels
    only (float labels are an error, never truncated)."""
    if isinstance(dataset, Subset):
        base = dataset_labels(dataset.dataset)
        if base is None:
            return None
        idx = torch.as_tensor(dataset.indices)
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"the Subset's indices must be integers, got dtype={idx.dtype}")
        idx = idx.long().reshape(-1)
        if idx.numel() and not (-base.numel() <= int(idx.min()) and
                                int(idx.max()) < base.numel()):
            raise ValueError(f"the Subset's indices must lie in [0, {base.numel()}) (the size "
                             f"of its dataset), got values in [{int(idx.min())}, "
                             f"{int(idx.max())}]")
        return base[idx]
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) == 2:
        return check_labels(tensors[1], len(tensors[1]), "the dataset's labels (tensors[1])")
    for attr in ("targets", "labels", "y"):
        val = getattr(dataset, attr, None)
        if val is None:
            continue
        try:
            t = torch.as_tensor(val)
        except (TypeError, ValueError, RuntimeError):
            continue
        if t.numel() == len(dataset):
            return check_labels(t.reshape(-1), t.numel(), f"the dataset's .{attr}")
    return None


def balanced_indices(labels: Tensor, per_class: Optional[int] = None,
                     n_samples: Optional[int] = None, seed: int = 0) -> Tensor:
    """Seeded class-balanced sample of positions into ``labels``.

    Args:
        labels: ``[M]`` integer labels of the whole pool.
        per_class: Exactly this many from every class.
        n_samples: This many in total, split as evenly as possible over the classes.
        seed: Random seed.

    Returns:
        Sorted ``[N]`` positions.

    Example:
        >>> import torch, dyngraph as dg
        >>> y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
        >>> y[dg.capture.balanced_indices(y, per_class=2, seed=0)].bincount().tolist()
        [2, 2, 2]
    """
    if (per_class is None) == (n_samples is None):
        raise ValueError("give exactly one of per_class or n_samples, got "
                         f"per_class={per_class!r}, n_samples={n_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}: {seed!r}")
    labels = check_labels(labels, torch.as_tensor(labels).numel(), "labels").cpu()
    if labels.numel() == 0:
        raise ValueError("labels is empty: there is nothing to sample")
    # (time and memory O(M log M), whatever the label values: {0, 1, 10**9} are three classes)
    classes, counts = labels.unique(return_counts=True)
    gen = torch.Generator().manual_seed(int(seed))
    if per_class is not None:
        check_positive_int(per_class, "per_class")
        want = {int(c): per_class for c in classes}
    else:
        n_samples = check_positive_int(n_samples, "n_samples")
        if n_samples > labels.numel():
            raise ValueError(f"n_samples={n_samples} exceeds the {labels.numel()} samples "
                             f"available")
        base, extra = divmod(n_samples, classes.numel())
        order = torch.randperm(classes.numel(), generator=gen)
        want = {int(c): base for c in classes}
        # Classes too small for an even share give their remainder to the others.
        budget = n_samples
        avail = {int(c): int(k) for c, k in zip(classes, counts)}
        for c in want:
            want[c] = min(want[c], avail[c])
        budget -= sum(want.values())
        i = 0
        while budget > 0:
            c = int(classes[order[i % classes.numel()]])
            if want[c] < avail[c]:
                want[c] += 1
                budget -= 1
            i += 1
    short = {c: cnt for c, cnt in zip(classes.tolist(), counts.tolist()) if want[c] > cnt}
    if short:  # every short class at once
        listing = ", ".join(f"class {c} has only {cnt}" for c, cnt in short.items())
        raise ValueError(f"{listing} samples, fewer than per_class={max(want.values())} "
                         f"({len(short)} of {len(want)} classes short)")
    # Each class's positions in ascending order, from one stable sort (not one pass per class).
    groups = torch.argsort(labels, stable=True).split(counts.tolist())
    picked = [pos[torch.randperm(cnt, generator=gen)[:want[c]]]
              for c, cnt, pos in zip(classes.tolist(), counts.tolist(), groups)]
    return torch.cat(picked).sort().values


def extract_features(model: nn.Module, loader, layers: LayerSpec = None, *,
                     per_class: Optional[int] = None, n_samples: Optional[int] = None,
                     seed: int = 0, pool: Union[None, str, int] = None,
                     device: Optional[Union[str, torch.device]] = None,
                     spill_dir: Optional[str] = None, spill_dtype: str = "float32",
                     num_classes: Optional[int] = None, batch_fn: Optional[Callable] = None,
                     progress: bool = True, tokens_per_class: Optional[int] = None,
                     layout: Optional[str] = None) -> LayerFeatures:
    """Runs ``model`` over ``loader`` and records the representations of the chosen layers.

    Forward hooks (:class:`LayerTaps`) capture each layer's output (or input, with
    ``'name:input'``); the model is put in ``eval()`` mode under ``torch.no_grad()``, and its
    training mode is restored and every hook removed in ``finally``, also on error.

    Sampling: with ``per_class`` (or ``n_samples``, split evenly over classes) and a ``seed``. When
    the dataset exposes its labels (``TensorDataset``, torchvision's ``.targets``, a ``.labels``
    attribute, ``Subset``), the sample is drawn up front and only those inputs run through the
    model. Otherwise the loader is streamed and each batch contributes, in seeded random order,
    the samples whose class is not yet full; with ``num_classes`` the stream stops as soon as
    every class is full.

    Batches: ``(inputs, labels)`` tuples, dicts with an input and a label key, or Hugging Face
    batches (a dict or ``BatchEncoding`` of ``input_ids``, ``attention_mask``, ... and
    ``labels``/``label``), which run as ``model(**inputs)`` without the label key (see
    :func:`~dyngraph.capture._taps.split_batch`). Batches may be padded to different lengths:
    a pooled layer has the same width in every batch.

    Transformers: ``pool='mean'|'cls'|'last'`` turns each input's ``[T, H]`` hidden states into
    one ``[H]`` row using only its real tokens (the ``attention_mask``); ``pool='tokens'`` makes
    every real token a sample with its input's label. Its rows are then grouped by input:
    ``indices`` is the source input of each token (its dataset index when known, else its
    running number among the inputs extracted) and ``positions`` its token position.
    ``per_class``/``n_samples`` still choose the *inputs*; ``tokens_per_class`` then draws that
    many tokens of every class among their tokens (seeded by ``seed``), so that long inputs do not
    outweigh short ones by accident of length. :class:`LayerTaps` documents which pool fits which
    output and the errors for those that do not.

    Args:
        model: Any ``nn.Module`` (torchvision and Hugging Face models included).
        loader: A ``DataLoader`` (or any iterable of batches) yielding ``(inputs, labels)`` or
            dict batches.
        layers: Names (``'layer1.0'``, ``'fc:input'``), a dict ``{name: alias}``, a module type or
            tuple of types, or ``None`` for :func:`default_layers`.
        per_class: Samples (inputs) per class.
        n_samples: Total samples, class-balanced. ``None`` for both: every sample.
        seed: Seed of the sampling.
        pool: ``None`` (flatten the whole map, the reference), ``'avg'``, ``'max'``, or an int for
            adaptive average pooling to that spatial size, for conv maps ``[B, C, *spatial]``;
            ``'mean'``, ``'cls'``, ``'last'``, ``'tokens'`` for token sequences ``[B, T, H]`` and
            channels-last maps ``[B, H, W, C]``.
        device: Where to run the model (default: where its parameters are).
        spill_dir: When given, each layer is appended to a file there as it streams and read back
            as a memory map: memory stays bounded by one batch, not by ``N × D``.
        spill_dtype: ``'float32'`` or ``'float16'`` on disk.
        num_classes: Lets streaming selection stop early.
        batch_fn: ``batch -> (inputs, labels)`` for batches of another shape.
        progress: Show a progress bar.
        tokens_per_class: With ``pool='tokens'``: keep this many tokens of every class (a
            class with fewer tokens is an error). ``None``: every token of the chosen inputs.
        layout: ``None`` (detected per layer), ``'channels_first'`` or ``'channels_last'``: see
            :class:`LayerTaps`.

    Returns:
        :class:`LayerFeatures` with ``[N, D]`` float32 per layer, labels ``y``, dataset
        ``indices`` when known (with ``pool='tokens'``: always, the source input of each token),
        ``positions`` (``pool='tokens'``) and ``meta`` (points, pooling, sampling, seed).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.randn(60, 4), torch.arange(60) % 3)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> f = dg.extract_features(m, DataLoader(ds, batch_size=16), per_class=5, progress=False)
        >>> f.names, f.n_samples, f.y.bincount().tolist()
        (['0', '2'], 15, [5, 5, 5])

        Dict batches padded per batch, every real token a sample:

        >>> class Encoder(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(10, 8)
        ...     def forward(self, input_ids, attention_mask):
        ...         return self.emb(input_ids)
        >>> batches = [{'input_ids': torch.tensor([[1, 2, 3], [4, 5, 0]]),
        ...             'attention_mask': torch.tensor([[1, 1, 1], [1, 1, 0]]),
        ...             'labels': torch.tensor([0, 1])},
        ...            {'input_ids': torch.tensor([[6, 7]]), 'attention_mask': torch.ones(1, 2),
        ...             'labels': torch.tensor([1])}]
        >>> f = dg.extract_features(Encoder(), batches, ['emb'], pool='tokens', progress=False)
        >>> f.y.tolist(), f.indices.tolist(), f.positions.tolist()
        ([0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 0, 1])
        >>> dg.extract_features(Encoder(), batches, ['emb'], pool='mean', progress=False).dims
        {'emb': 8}
    """
    check_model(model)
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}")
    taps = LayerTaps(model, layers, pool=pool, layout=layout)
    spec = taps.spec
    if tokens_per_class is not None:
        if pool != "tokens":
            raise ValueError(f"tokens_per_class={tokens_per_class!r} draws tokens, which only "
                             f"pool='tokens' makes samples (pool={pool!r})")
        check_positive_int(tokens_per_class, "tokens_per_class")
    if not spec:
        raise ValueError("layers is empty: choose at least one layer (see dg.list_layers(model) "
                         "or dg.default_layers(model))")
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)

    # Up-front selection when the labels are known.
    indices = None
    dataset = getattr(loader, "dataset", None)
    # batch_fn defines the labels: the dataset's own attributes are then not used
    labels_known = dataset_labels(dataset) if dataset is not None and batch_fn is None else None
    run_loader = loader
    stream_quota = None
    if (per_class is not None or n_samples is not None) and labels_known is not None:
        indices = balanced_indices(labels_known, per_class, n_samples, seed)
        assert dataset is not None
        run_loader = DataLoader(Subset(dataset, indices.tolist()),
                                batch_size=getattr(loader, "batch_size", None) or 64,
                                shuffle=False, num_workers=getattr(loader, "num_workers", 0),
                                collate_fn=getattr(loader, "collate_fn", None),
                                pin_memory=getattr(loader, "pin_memory", False))
    elif per_class is not None or n_samples is not None:
        if per_class is not None:
            check_positive_int(per_class, "per_class")
        else:
            n_samples = check_positive_int(n_samples, "n_samples")
            if num_classes is None:
                raise ValueError("n_samples with a loader whose dataset does not expose its labels "
                                 "needs num_classes (to balance the classes), or use per_class")
            per_class = -(-n_samples // num_classes)
        stream_quota = per_class
    elif labels_known is not None and dataset is not None and not _is_shuffled(loader):
        indices = torch.arange(len(labels_known))

    store: Dict[str, Any] = {}
    tmp_dir = None
    if spill_dir is not None:
        tmp_dir = str(make_spill_dir(spill_dir))
    gen = torch.Generator().manual_seed(int(seed))
    counts: Dict[int, int] = {}
    ys: List[Tensor] = []
    dims: Dict[str, int] = {}
    dataset_indices = indices is not None
    sources: List[Tensor] = []  # pool='tokens': the source input of each token
    positions: List[Tensor] = []
    n_inputs = 0
    total = len(run_loader) if hasattr(run_loader, "__len__") else None
    with taps, _removed_on_error(tmp_dir, store):
        for batch in progress_bar(run_loader, desc="extract", total=total, disable=not progress):
            if batch_fn is None and isinstance(batch, (tuple, list)) and len(batch) > 2:
                raise ValueError(f"the loader yields {len(batch)} items per batch; say which are "
                                 f"the inputs and the labels with batch_fn=lambda b: (b[0], b[2])")
            inputs, yb = split_batch(batch, batch_fn)
            yb = check_labels(yb, torch.as_tensor(yb).numel(), "labels", check_min=False)
            if stream_quota is not None:
                keep = _stream_select(yb.cpu(), counts, stream_quota, gen)
                if keep.numel() == 0:
                    if _all_full(counts, stream_quota, num_classes):
                        break
                    continue
                inputs, yb = take_rows(inputs, keep), yb[keep.to(yb.device)]
            outs = taps(to_device(inputs, device))
            n_batch = yb.numel()
            if indices is not None:
                src = indices[n_inputs:n_inputs + n_batch]
            else:
                src = torch.arange(n_inputs, n_inputs + n_batch)
            n_inputs += n_batch
            if pool == "tokens":
                assert taps.tokens is not None
                rows, pos = (t.cpu() for t in taps.tokens)
                yb = yb.cpu()[rows]
                sources.append(src[rows])
                positions.append(pos)
            for alias, val in outs.items():
                val = val.float()
                if val.shape[0] != yb.numel():
                    raise ValueError(f"layer {alias!r} gave {val.shape[0]} rows for a batch of "
                                     f"{yb.numel()} samples")
                if alias in dims and val.shape[1] != dims[alias]:
                    raise ValueError(f"layer {alias!r} gave {val.shape[1]} features in this batch "
                                     f"but {dims[alias]} in the ones before: inputs of different "
                                     f"sizes (padding to each batch's length?) need a pool "
                                     f"(pool='mean', 'cls', 'last', 'tokens', or 'avg' for conv "
                                     f"maps), got pool={pool!r}")
                dims[alias] = int(val.shape[1])
                if alias not in store:
                    store[alias] = (SpilledArray(f"{tmp_dir}/layer_{len(store):03d}.bin",
                                                 val.shape[1], spill_dtype)
                                    if tmp_dir else [])
                store[alias].append(val if tmp_dir else val.cpu())
            ys.append(yb.cpu())
            if stream_quota is not None and _all_full(counts, stream_quota, num_classes):
                break
    if not ys:
        raise ValueError("the loader produced no samples")
    y = torch.cat(ys)
    if stream_quota is not None:
        short = {c: v for c, v in counts.items() if v < stream_quota}
        if short:
            warnings.warn(f"the loader ran out before every class reached {stream_quota} samples: "
                          f"{short}", stacklevel=2)
    feats: Dict[str, Union[Tensor, SpilledArray]] = {}
    for alias in spec:
        s = store[alias]
        feats[alias] = s if isinstance(s, SpilledArray) else torch.cat(s)
        if isinstance(s, SpilledArray):
            s.close()
    token_pos = None
    if pool == "tokens":
        indices, token_pos = torch.cat(sources), torch.cat(positions)
        if tokens_per_class is not None:
            keep = balanced_indices(y, per_class=tokens_per_class, seed=seed)
            y, indices, token_pos = y[keep], indices[keep], token_pos[keep]
            feats = {alias: _take(v, keep) for alias, v in feats.items()}
    points = {alias: f"{name} ({where})" for alias, (name, where) in spec.items()}
    meta = {"points": points, "pool": pool, "seed": seed, "per_class": per_class,
            "n_samples": int(y.numel()), "model": type(model).__name__,
            "spill_dir": tmp_dir, "spill_dtype": spill_dtype if tmp_dir else None}
    if layout is not None:
        meta["layout"] = layout
    if pool == "tokens":
        meta.update(n_inputs=n_inputs, tokens_per_class=tokens_per_class,
                    indices="dataset" if dataset_indices else "extraction order")
    return LayerFeatures(feats, y, indices, meta, token_pos)


@contextlib.contextmanager
def _removed_on_error(folder: Optional[str], store: Dict[str, Any]) -> Iterator[None]:
    """On an error (or an interrupt), closes the spilled layers and removes the spill folder this
    extraction made, and only it."""
    try:
        yield
    except BaseException:
        for stored in store.values():
            if isinstance(stored, SpilledArray):
                stored.close()
        if folder is not None:
            remove_spill_dir(folder)
        raise


def _take(stored: Union[Tensor, SpilledArray], rows: Tensor) -> Union[Tensor, SpilledArray]:
    """Rows ``rows`` (sorted) of a layer; a spilled layer is rewritten beside itself, in blocks,
    and its old file (written by this extraction) removed."""
    if isinstance(stored, Tensor):
        return stored[rows]
    out = SpilledArray(stored.path.with_name(stored.path.stem + "_tokens.bin"), stored.dim,
                       stored.dtype)
    mm = stored.memmap()
    block = 8192
    for start in range(0, rows.numel(), block):
        out.append(torch.from_numpy(np.asarray(mm[rows[start:start + block].numpy()],
                                               dtype=np.float32)))
    out.close()
    del mm
    os.remove(stored.path)
    return out


def _is_shuffled(loader) -> bool:
    sampler = getattr(loader, "sampler", None)
    return sampler is not None and not isinstance(sampler, torch.utils.data.SequentialSampler)


def _stream_select(y: Tensor, counts: Dict[int, int], quota: int, gen: torch.Generator) -> Tensor:
    """Positions of a batch to keep: seeded random order, classes filled up to ``quota``."""
    order = torch.randperm(y.numel(), generator=gen)
    keep = []
    for pos in order.tolist():
        c = int(y[pos])
        if counts.get(c, 0) < quota:
            counts[c] = counts.get(c, 0) + 1
            keep.append(pos)
    return torch.tensor(sorted(keep), dtype=torch.long)


def _all_full(counts: Dict[int, int], quota: int, num_classes: Optional[int]) -> bool:
    return num_classes is not None and len(counts) >= num_classes and \
        all(v >= quota for v in counts.values())
