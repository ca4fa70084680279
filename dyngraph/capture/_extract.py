"""Class-balanced, streaming extraction of layer representations, built on :class:`LayerTaps`."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    IterableDataset,
    SequentialSampler,
    Subset,
)

from .._io import (
    CHECKSUM_KEY,
    CorruptFileError,
    PathLike,
    atomic_torch_save,
    atomic_write_json,
    payload_digest,
    read_json_file,
    run_environment,
    sha256_file,
    verify_payload,
)
from .._progress import progress_bar
from .._validate import check_labels, check_model, check_positive_int, model_device
from ._features import (
    LayerFeatures,
    SpilledArray,
    make_spill_dir,
    remove_spill_dir,
    resume_file,
)
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
        base = n_samples // classes.numel()
        order = torch.randperm(classes.numel(), generator=gen)
        # Classes too small for an even share give their remainder to the others.
        avail = {int(c): int(k) for c, k in zip(classes, counts)}
        want = {c: min(base, avail[c]) for c in avail}
        budget = n_samples - sum(want.values())
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


#: With ``checkpoint_every=None``, a progress record is written once this many seconds have
#: passed since the last one, and at least ``CHECKPOINT_COST_RATIO`` times as long as the last
#: one took to write (so records cost at most about 1/ratio of the run).
CHECKPOINT_SECONDS = 1.0
CHECKPOINT_COST_RATIO = 50


def extract_features(model: nn.Module, loader, layers: LayerSpec = None, *,
                     per_class: Optional[int] = None, n_samples: Optional[int] = None,
                     seed: int = 0, pool: Union[None, str, int] = None,
                     device: Optional[Union[str, torch.device]] = None,
                     spill_dir: Optional[str] = None, spill_dtype: str = "float32",
                     num_classes: Optional[int] = None, batch_fn: Optional[Callable] = None,
                     progress: bool = True, tokens_per_class: Optional[int] = None,
                     layout: Optional[str] = None, checkpoint: Optional[PathLike] = None,
                     checkpoint_every: Optional[int] = None) -> LayerFeatures:
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

    Resuming (``checkpoint=FOLDER``): the layers are spilled into that folder (as with
    ``spill_dir``), with the labels, and after every block of batches a progress record is
    written atomically (the rows of every file and their sha256, the batches done, the
    streaming selection's class counts and random generator, ...). A rerun with the same folder
    and the same settings skips the batches already done (a plain ``DataLoader`` without even
    loading them), cuts off what was written after the last record, and continues: the result
    is bitwise the one of an uninterrupted run. Once extraction is finished the features stay
    in the folder and a rerun returns them without running the model; :meth:`LayerFeatures.close`
    leaves the folder in place (delete it when you no longer need it). The settings compared are
    the layers, ``pool``, ``layout``, ``seed``, ``per_class``, ``n_samples``, ``num_classes``,
    ``tokens_per_class``, ``spill_dtype``, the dataset's length, the selected indices, a sha256
    of the model's ``state_dict``, the batch size and the device type; another folder's settings
    are a ``ValueError`` naming those that differ, a damaged record or file a
    :class:`~dyngraph.errors.CorruptFileError` naming it. The loader must give the same batches
    in the same order on the rerun: a shuffled loader is refused (``batch_fn`` is trusted to be
    the same). The folder is created (or must be empty) and carries dyngraph's marker; a
    non-empty folder without it is refused, and nothing but extraction's own files in it is ever
    changed.

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
        checkpoint: A folder where a resumable extraction keeps its layers, labels and progress
            (see above); not together with ``spill_dir``.
        checkpoint_every: Batches between two progress records: a killed run loses at most
            this many. Each record syncs the files to disk (``fsync``), which costs some
            milliseconds; ``None``: a record once a second has passed since the last one and
            50 times as long as it took to write (at most ~2% of the run).

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

        A resumable extraction; the rerun finds it finished and returns it from the folder:

        >>> import tempfile
        >>> ck = tempfile.mkdtemp() + '/feats'
        >>> f = dg.extract_features(m, DataLoader(ds, batch_size=16), checkpoint=ck,
        ...                         progress=False)
        >>> g = dg.extract_features(m, DataLoader(ds, batch_size=16), checkpoint=ck,
        ...                         progress=False)
        >>> g.on_disk, torch.equal(g['2'], f['2']), str(g.stored('2').path.parent) == ck
        (True, True, True)
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
    if num_classes is not None:
        check_positive_int(num_classes, "num_classes")
    if checkpoint is not None:
        if spill_dir is not None:
            raise ValueError(f"give spill_dir or checkpoint, not both: checkpoint={checkpoint!r} "
                             f"keeps the layers on disk in its own folder "
                             f"(spill_dir={spill_dir!r})")
        if checkpoint_every is not None:
            check_positive_int(checkpoint_every, "checkpoint_every")
        if spill_dtype not in ("float32", "float16"):
            raise ValueError(f"spill dtype must be one of ['float32', 'float16'], got "
                             f"{spill_dtype!r}")
    device = model_device(model) if device is None else torch.device(device)
    asked = {"per_class": per_class, "n_samples": n_samples}

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

    points = {alias: f"{name} ({where})" for alias, (name, where) in spec.items()}
    ck = None
    if checkpoint is not None:
        if run_loader is loader and _is_shuffled(loader):
            sampler = type(getattr(loader, "sampler", None)).__name__
            raise ValueError(f"checkpoint={str(checkpoint)!r} needs the loader to give the same "
                             f"batches in the same order on a rerun, but its sampler is a "
                             f"{sampler} (shuffled); use DataLoader(..., shuffle=False)")
        ck = _Checkpoint(checkpoint, {
            "layers": points, "pool": pool, "layout": layout, "seed": seed, **asked,
            "num_classes": num_classes, "tokens_per_class": tokens_per_class,
            "spill_dtype": spill_dtype, "model": _model_digest(model),
            "model_type": type(model).__name__, "device": device.type,
            "dataset_length": _length(dataset),
            "indices": None if indices is None else payload_digest({"indices": indices}),
            "batch_size": getattr(run_loader, "batch_size", None)})
        if ck.state == "done":
            return ck.result()

    store: Dict[str, Any] = {}
    tmp_dir = str(make_spill_dir(spill_dir)) if spill_dir is not None else None
    gen = torch.Generator().manual_seed(int(seed))
    counts: Dict[int, int] = {}
    dims: Dict[str, int] = {}
    dataset_indices = indices is not None
    names = ("y", "sources", "positions") if pool == "tokens" else ("y",)
    columns: Dict[str, Union[_Column, _MemColumn]]
    n_inputs, done, extracted = 0, 0, False
    if ck is None:
        columns = {name: _MemColumn() for name in names}
    elif ck.state is None:
        columns = {name: _Column(ck.folder / f"{name}.bin") for name in names}
    else:
        store, columns, counts, state = ck.restore(spill_dtype, names)
        n_inputs, done, extracted = state["n_inputs"], state["batches"], state["extracted"]
        dims = {alias: a.dim for alias, a in store.items()}
        if state["generator"] is not None:
            gen.set_state(state["generator"])
    folder = tmp_dir if ck is None else str(ck.folder)

    def run(batch: Any) -> bool:
        """Runs one batch and stores its rows; ``True`` once the stream may stop."""
        nonlocal n_inputs
        if batch_fn is None and isinstance(batch, (tuple, list)) and len(batch) > 2:
            raise ValueError(f"the loader yields {len(batch)} items per batch; say which are "
                             f"the inputs and the labels with batch_fn=lambda b: (b[0], b[2])")
        inputs, yb = split_batch(batch, batch_fn)
        yb = check_labels(yb, torch.as_tensor(yb).numel(), "labels", check_min=False)
        if stream_quota is not None:
            keep = _stream_select(yb.cpu(), counts, stream_quota, gen)
            if keep.numel() == 0:
                return _all_full(counts, stream_quota, num_classes)
            inputs, yb = take_rows(inputs, keep), yb[keep.to(yb.device)]
        try:
            outs = taps(to_device(inputs, device))
        except RuntimeError as exc:  # the usual cause: inputs of the wrong shape for the model
            raise ValueError(f"the model failed on a batch of inputs of shape "
                             f"{_shapes(inputs)}: {exc}") from exc
        n_batch = yb.numel()
        src = (indices[n_inputs:n_inputs + n_batch] if indices is not None
               else torch.arange(n_inputs, n_inputs + n_batch))
        n_inputs += n_batch
        if pool == "tokens":
            assert taps.tokens is not None
            rows, pos = (t.cpu() for t in taps.tokens)
            yb = yb.cpu()[rows]
            columns["sources"].append(src[rows])
            columns["positions"].append(pos)
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
                store[alias] = (SpilledArray(f"{folder}/layer_{len(store):03d}.bin",
                                             val.shape[1], spill_dtype)
                                if folder else [])
            store[alias].append(val if folder else val.cpu())
        columns["y"].append(yb.cpu())
        return stream_quota is not None and _all_full(counts, stream_quota, num_classes)

    def record(state: str) -> None:
        assert ck is not None
        ck.save(state, done, n_inputs, store, columns, counts,
                gen if stream_quota is not None else None)

    with taps, _removed_on_error(tmp_dir, store, columns):
        if not extracted:
            batches, total = _skip_batches(run_loader, done)
            for batch in progress_bar(batches, desc="extract", total=total,
                                      disable=not progress):
                stop = run(batch)
                done += 1
                if stop:
                    break
                if ck is not None and (done % checkpoint_every == 0 if checkpoint_every
                                       else ck.due()):
                    record("running")
            if ck is not None:
                record("extracted")
    if not store:
        raise ValueError("the loader produced no samples")
    y = columns["y"].read()
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
        indices, token_pos = columns["sources"].read(), columns["positions"].read()
        if tokens_per_class is not None:
            keep = balanced_indices(y, per_class=tokens_per_class, seed=seed)
            y, indices, token_pos = y[keep], indices[keep], token_pos[keep]
            feats = {alias: _take(v, keep, remove=ck is None) for alias, v in feats.items()}
    meta = {"points": points, "pool": pool, "seed": seed, "per_class": per_class,
            "n_samples": int(y.numel()), "model": type(model).__name__,
            "spill_dir": tmp_dir, "spill_dtype": spill_dtype if folder else None}
    if layout is not None:
        meta["layout"] = layout
    if pool == "tokens":
        meta.update(n_inputs=n_inputs, tokens_per_class=tokens_per_class,
                    indices="dataset" if dataset_indices else "extraction order")
    if ck is not None:
        meta["checkpoint"] = str(ck.folder)
        return ck.finish(feats, y, indices, token_pos, meta)
    return LayerFeatures(feats, y, indices, meta, token_pos)


@contextlib.contextmanager
def _removed_on_error(folder: Optional[str], store: Dict[str, Any],
                      columns: "Mapping[str, Union[_Column, _MemColumn]]") -> Iterator[None]:
    """On an error (or an interrupt), closes the files of the layers and labels and removes the
    spill folder this extraction made, and only it (a checkpoint folder is kept: a rerun
    resumes from it)."""
    try:
        yield
    except BaseException:
        for stored in (*store.values(), *columns.values()):
            if isinstance(stored, (SpilledArray, _Column)):
                stored.close()
        if folder is not None:
            remove_spill_dir(folder)
        raise


def _take(stored: Union[Tensor, SpilledArray], rows: Tensor,
          remove: bool = True) -> Union[Tensor, SpilledArray]:
    """Rows ``rows`` (sorted) of a layer; a spilled layer is rewritten beside itself, in blocks,
    and its old file (written by this extraction) removed when ``remove``."""
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
    if remove:
        os.remove(stored.path)
    return out


def _is_shuffled(loader) -> bool:
    if isinstance(getattr(loader, "dataset", None), IterableDataset):
        return False  # its own order (the DataLoader's sampler is a placeholder)
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


def _shapes(inputs: Any) -> str:
    """The shape of a batch of inputs, for an error: ``[10, 4]``, or a dict of them."""
    if isinstance(inputs, torch.Tensor):
        return str(list(inputs.shape))
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k!r}: {_shapes(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(_shapes(v) for v in inputs) + ")"
    return type(inputs).__name__


def _all_full(counts: Dict[int, int], quota: int, num_classes: Optional[int]) -> bool:
    return num_classes is not None and len(counts) >= num_classes and \
        all(v >= quota for v in counts.values())


# ------------------------------------------------------------------------------ resuming
CHECKPOINT_MARKER = ".dyngraph-extract.json"
CHECKPOINT_FORMAT = "dyngraph.extract.checkpoint/1"
PROGRESS_FILE = "progress.json"
PROGRESS_FORMAT = "dyngraph.extract.progress/1"
RESULT_FILE = "result.pt"
# the files extraction writes in a checkpoint folder, and the temporary ones of its atomic writes
_CHECKPOINT_FILES = re.compile(r"layer_\d{3,}(_tokens)?\.bin|(y|sources|positions)\.bin|"
                               r"progress\.json|result\.pt|\.(progress\.json|result\.pt)\..+\.tmp")
_MARKER_TMP = re.compile(r"\.\.dyngraph-extract\.json\..+\.tmp")


def _length(dataset: Any) -> Optional[int]:
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset without __len__
        return None


def _model_digest(model: nn.Module) -> str:
    """``'sha256:<hex>'`` over the model's ``state_dict`` (names, dtypes, shapes, bytes)."""
    try:
        return payload_digest(dict(model.state_dict()))
    except TypeError as exc:
        raise TypeError(f"checkpoint= compares a sha256 of the model's state_dict, which cannot "
                        f"be computed here: {exc}") from None


def _skip_batches(loader: Any, done: int) -> Tuple[Any, Optional[int]]:
    """``(batches, how many)``: the batches of ``loader`` after its first ``done``. A plain
    ``DataLoader`` over a map-style dataset in order restarts at the first sample not yet run
    (the skipped batches are not even loaded); any other iterable is read past them."""
    try:
        total: Optional[int] = len(loader) - done
    except TypeError:  # an iterable without a length (a DataLoader of an IterableDataset)
        total = None
    if done == 0:
        return loader, total
    if (type(loader) is DataLoader and type(loader.batch_sampler) is BatchSampler
            and type(loader.sampler) is SequentialSampler
            and not isinstance(loader.dataset, IterableDataset)):
        bs = loader.batch_size
        assert bs is not None
        n = len(loader.dataset)  # type: ignore[arg-type]
        rest = Subset(loader.dataset, range(min(done * bs, n), n))
        extra: Dict[str, Any] = {}
        if loader.num_workers > 0:
            extra.update(prefetch_factor=loader.prefetch_factor,
                         persistent_workers=loader.persistent_workers)
        return DataLoader(rest, batch_size=bs, shuffle=False, drop_last=loader.drop_last,
                          collate_fn=loader.collate_fn, num_workers=loader.num_workers,
                          pin_memory=loader.pin_memory, timeout=loader.timeout,
                          worker_init_fn=loader.worker_init_fn,
                          multiprocessing_context=loader.multiprocessing_context,
                          generator=loader.generator, **extra), total
    return itertools.islice(loader, done, None), total


class _MemColumn(List[Tensor]):
    """Integer labels (or token sources, positions) of the batches, in memory."""

    def read(self) -> Tensor:
        return torch.cat(self)


class _Column:
    """An append-only file of int64 values (labels, token sources, positions) with a running
    sha256 of its bytes, like :class:`SpilledArray`'s."""

    def __init__(self, path: Path, rows: int = 0, hasher: Any = None) -> None:
        self.path, self.rows = path, rows
        self._hash = hasher if hasher is not None else hashlib.sha256()
        self._fh: Optional[Any] = None

    def append(self, values: Tensor) -> None:
        data = values.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
        if self._fh is None:
            self._fh = open(self.path, "ab")
        self._fh.write(data)
        self._hash.update(data)
        self.rows += values.numel()

    def sync(self) -> str:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return str(self._hash.copy().hexdigest())

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None

    def read(self) -> Tensor:
        """Every value, the file checked against the running checksum first."""
        self.close()
        if self.rows == 0:
            return torch.zeros(0, dtype=torch.long)
        fix = f"delete the checkpoint folder {str(self.path.parent)!r} and extract again"
        resume_file(self.path, self.rows * 8, str(self._hash.hexdigest()), fix)
        return torch.from_numpy(np.fromfile(self.path, dtype=np.int64, count=self.rows))


def _read_record(path: Path, what: str, fix: str) -> Dict[str, Any]:
    """A JSON file of a checkpoint folder, whose checksum must be there and match."""
    with warnings.catch_warnings():  # a file without a checksum is an error below
        warnings.simplefilter("ignore", UserWarning)
        d = read_json_file(path, keep_checksum=True, fix=fix, what=what)
    if not isinstance(d, dict) or CHECKSUM_KEY not in d:
        raise CorruptFileError(path, "it has no checksum (edited by hand, or not written by "
                               "dyngraph)", fix)
    return {k: v for k, v in d.items() if k != CHECKSUM_KEY}


def _short(value: Any) -> str:
    if isinstance(value, str) and value.startswith("sha256:"):
        return value[:19] + "..."  # a digest: enough to tell two apart
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checkpoint:
    """The folder of a resumable extraction (see :func:`extract_features`): dyngraph's marker,
    the progress record ``progress.json``, the spilled layers, the label columns and, once
    finished, ``result.pt`` (labels, indices, positions)."""

    def __init__(self, folder: PathLike, settings: Dict[str, Any]) -> None:
        self.folder = Path(folder).absolute()  # the result lives there: not cwd-relative
        self.settings = json.loads(json.dumps(settings))
        self.fix = f"delete the checkpoint folder {str(self.folder)!r} and extract again"
        self._last = self._started = time.monotonic()
        self._cost = 0.0
        self._claim()
        self.progress = self.folder / PROGRESS_FILE
        self.record = self._read()
        self.state: Optional[str] = None if self.record is None else self.record["state"]
        if self.record is None:  # nothing recorded: a run killed before its first record
            self._tidy(set())

    def _claim(self) -> None:
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"checkpoint must be a folder, got {str(folder)!r}, which is a file")
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / CHECKPOINT_MARKER
        if marker.exists():
            d = _read_record(marker, "dyngraph's checkpoint marker", self.fix)
            if d.get("format") != CHECKPOINT_FORMAT:
                raise CorruptFileError(marker, f"it is not an extraction checkpoint's marker "
                                       f"(format {d.get('format')!r})", self.fix)
            return
        theirs = sorted(p.name for p in folder.iterdir() if not _MARKER_TMP.fullmatch(p.name))
        if theirs:
            raise ValueError(f"checkpoint={str(folder)!r} holds files and no dyngraph checkpoint "
                             f"marker ({', '.join(theirs[:5])}{', ...' if len(theirs) > 5 else ''})"
                             f": refusing to write there (dyngraph never changes what it did not "
                             f"write); give a new or empty folder")
        for p in folder.iterdir():  # the temporary file of a marker whose write was killed
            p.unlink()
        atomic_write_json(marker, {"format": CHECKPOINT_FORMAT, "created": time.time()})

    def _read(self) -> Optional[Dict[str, Any]]:
        if not self.progress.exists():
            return None
        d = _read_record(self.progress, "an extraction progress record", self.fix)
        if d.get("format") != PROGRESS_FORMAT or not isinstance(d.get("settings"), dict) \
                or d.get("state") not in ("running", "extracted", "done"):
            raise CorruptFileError(self.progress, "it is not an extraction progress record",
                                   self.fix)
        old, new = d["settings"], self.settings
        diff = [k for k in list(new) + [k for k in old if k not in new]
                if old.get(k) != new.get(k)]
        if diff:
            listing = "; ".join(f"{k}: {_short(old.get(k))} there, {_short(new.get(k))} now"
                                for k in diff)
            raise ValueError(f"checkpoint={str(self.folder)!r} holds an extraction with other "
                             f"settings ({listing}); rerun with its settings, or give another "
                             f"(new or empty) checkpoint folder")
        return d

    def _file(self, name: Any) -> Path:
        """A file named by the progress record: a plain name of extraction's, in the folder."""
        if not (isinstance(name, str) and _CHECKPOINT_FILES.fullmatch(name)
                and not name.startswith(".")):
            raise CorruptFileError(self.progress, f"it names the file {name!r}, which is not "
                                   f"one extraction writes", self.fix)
        return self.folder / name

    def _tidy(self, keep: Set[str]) -> None:
        """Removes extraction's files that the progress record does not name (written after
        it, or superseded); any other file is left as it is."""
        for p in self.folder.iterdir():
            if p.name not in keep and _CHECKPOINT_FILES.fullmatch(p.name) and p.is_file() \
                    and not p.is_symlink() and p.name != PROGRESS_FILE:
                p.unlink()

    def _entries(self) -> Tuple[List[Tuple[str, Dict[str, Any]]], Dict[str, Dict[str, Any]]]:
        rec = self.record
        assert rec is not None
        try:
            layers = [(str(alias), dict(e)) for alias, e in rec["layers"]]
            for _, e in layers:
                self._file(e["file"])
                if not all(isinstance(e[k], int) and e[k] >= 0 for k in ("rows", "dim")) \
                        or not isinstance(e["sha256"], str):
                    raise TypeError("a layer entry")
            cols = {str(k): dict(v) for k, v in rec.get("columns", {}).items()}
            for e in cols.values():
                self._file(e["file"])
                if not (isinstance(e["rows"], int) and e["rows"] >= 0
                        and isinstance(e["sha256"], str)):
                    raise TypeError("a column entry")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CorruptFileError):
                raise
            raise CorruptFileError(self.progress, f"its entries are malformed ({exc})",
                                   self.fix) from None
        return layers, cols

    def restore(self, spill_dtype: str, names: Sequence[str]
                ) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[int, int], Dict[str, Any]]:
        """``(layers, columns, class counts, state)`` as of the last progress record: each file
        checked against its recorded checksum and cut back to the rows recorded."""
        rec = self.record
        assert rec is not None
        layers, cols = self._entries()
        if sorted(cols) != sorted(names) or len({e["rows"] for e in cols.values()}) > 1:
            raise CorruptFileError(self.progress, f"it records the columns {sorted(cols)} where "
                                   f"this extraction writes {sorted(names)}", self.fix)
        self._tidy({e["file"] for _, e in layers} | {e["file"] for e in cols.values()})
        try:
            batches, n_inputs = int(rec["batches"]), int(rec["n_inputs"])
            counts = {int(c): int(n) for c, n in rec["counts"]}
            gen = rec.get("generator")
            state = torch.frombuffer(bytearray(base64.b64decode(gen, validate=True)),
                                     dtype=torch.uint8) if gen is not None else None
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(self.progress, f"its entries are malformed ({exc})",
                                   self.fix) from None
        if state is not None and state.numel() != torch.Generator().get_state().numel():
            raise CorruptFileError(self.progress, "its random generator state has the wrong "
                                   "size", self.fix)
        env, now = rec.get("environment") or {}, run_environment()
        if env.get("threads") != now["threads"]:
            warnings.warn(f"the extraction in {str(self.folder)!r} ran with {env.get('threads')} "
                          f"threads, this one with {now['threads']}: the rows extracted from here "
                          f"on may differ in the last bits from those of an uninterrupted run",
                          UserWarning, stacklevel=3)
        store: Dict[str, Any] = {}
        for alias, e in layers:
            if e["rows"] != cols["y"]["rows"]:
                raise CorruptFileError(self.progress, f"layer {alias!r} has {e['rows']} rows "
                                       f"and the labels {cols['y']['rows']}", self.fix)
            store[alias] = SpilledArray.resume(self._file(e["file"]), e["dim"], spill_dtype,
                                               e["rows"], e["sha256"], self.fix)
        columns = {name: _Column(self._file(e["file"]), e["rows"],
                                 resume_file(self._file(e["file"]), 8 * e["rows"], e["sha256"],
                                             self.fix))
                   for name, e in cols.items()}
        return store, columns, counts, {"batches": batches, "n_inputs": n_inputs,
                                        "generator": state,
                                        "extracted": rec["state"] == "extracted"}

    def due(self) -> bool:
        """Whether a record is due under the default timing (see ``checkpoint_every=None``)."""
        since = time.monotonic() - self._last
        return since >= max(CHECKPOINT_SECONDS, CHECKPOINT_COST_RATIO * self._cost)

    def _write(self, record: Dict[str, Any]) -> None:
        record = {"format": PROGRESS_FORMAT, "settings": self.settings, **record,
                  "environment": run_environment()}
        atomic_write_json(self.progress, record)
        self._last = time.monotonic()
        self._cost = self._last - self._started
        self.record = json.loads(json.dumps(record))
        self.state = record["state"]

    def save(self, state: str, batches: int, n_inputs: int, store: Dict[str, Any],
             columns: "Mapping[str, Any]", counts: Dict[int, int],
             gen: Optional[torch.Generator]) -> None:
        """Writes the progress record after the files are on disk (``fsync``)."""
        self._started = time.monotonic()
        self._write({
            "state": state, "batches": batches, "n_inputs": n_inputs,
            "layers": [[alias, {"file": a.path.name, "rows": a.rows, "dim": a.dim,
                                "sha256": a.sync()}] for alias, a in store.items()],
            "columns": {name: {"file": c.path.name, "rows": c.rows, "sha256": c.sync()}
                        for name, c in columns.items()},
            "counts": [[c, n] for c, n in counts.items()],
            "generator": None if gen is None else
            base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")})

    def finish(self, feats: Dict[str, Any], y: Tensor, indices: Optional[Tensor],
               positions: Optional[Tensor], meta: Dict[str, Any]) -> LayerFeatures:
        """Records the finished extraction (labels in ``result.pt``, then the record naming the
        final layer files), removes the files it no longer needs and returns the features."""
        meta = json.loads(json.dumps(meta))
        atomic_torch_save({"y": y, "indices": indices, "positions": positions},
                          self.folder / RESULT_FILE, checksum=True)
        for a in feats.values():
            a.close()
        layers = [[alias, {"file": a.path.name, "rows": a.rows, "dim": a.dim, "sha256": a.sha256}]
                  for alias, a in feats.items()]
        self._write({"state": "done", "layers": layers, "meta": meta,
                     "result": sha256_file(self.folder / RESULT_FILE)})
        return self.result()

    def result(self) -> LayerFeatures:
        """The finished extraction from the folder; each layer file is checked against its
        checksum on its first read, ``result.pt`` here."""
        rec = self.record
        assert rec is not None and rec["state"] == "done"
        layers, _ = self._entries()
        if not isinstance(rec.get("meta"), dict):
            raise CorruptFileError(self.progress, "it records no meta", self.fix)
        self._tidy({e["file"] for _, e in layers} | {RESULT_FILE})
        path = self.folder / RESULT_FILE
        if not path.is_file():
            raise CorruptFileError(path, "it is missing", self.fix)
        if sha256_file(path) != rec.get("result"):
            raise CorruptFileError(path, "its bytes do not match the checksum recorded for it",
                                   self.fix)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptFileError.unreadable(path, "a file of labels", exc, self.fix) from None
        saved = verify_payload(saved, path, self.fix, required=True)
        feats: Dict[str, Union[Tensor, SpilledArray]] = {}
        dtype = self.settings["spill_dtype"]
        for alias, e in layers:
            a = SpilledArray(self._file(e["file"]), e["dim"], dtype, sha256=e["sha256"])
            a.rows, a._readonly = e["rows"], True
            want = a.rows * a.dim * a.np_dtype.itemsize  # its size now, its bytes when first read
            size = a.path.stat().st_size if a.path.is_file() else None
            if size != want:
                raise CorruptFileError(a.path, "it is missing" if size is None else
                                       f"it holds {size} bytes where its {a.rows} rows of "
                                       f"{a.dim} {dtype} take {want}", self.fix)
            feats[alias] = a
        try:
            return LayerFeatures(feats, saved["y"], saved["indices"], rec["meta"],
                                 saved["positions"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(path, f"its labels do not fit the layers ({exc})",
                                   self.fix) from None
