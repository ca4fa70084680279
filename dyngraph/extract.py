"""Layer discovery and hook-based, class-balanced, streaming extraction of representations."""
from __future__ import annotations

import re
import tempfile
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from ._progress import progress_bar
from ._validate import check_choice, check_positive_int
from .features import LayerFeatures, SpilledArray

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid,
               nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.PReLU, nn.SELU, nn.CELU, nn.Softplus,
               nn.GLU)
_PASSTHROUGH = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm,
                nn.modules.instancenorm._InstanceNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                nn.Dropout3d, nn.Identity)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BLOCK_NAME = re.compile(r"(block|bottleneck|residual|resunit)", re.IGNORECASE)
_BLOCK_ATTRS = ("downsample", "shortcut", "skip", "residual")

LayerSpec = Union[None, str, Sequence[str], Dict[str, str], Type[nn.Module],
                  Tuple[Type[nn.Module], ...]]


# ---------------------------------------------------------------------------- discovery
def list_layers(model: nn.Module, types: Optional[Union[type, Tuple[type, ...]]] = None,
                leaves_only: bool = False) -> List[str]:
    """Dotted names of a model's submodules, in registration order.

    Args:
        model: Any ``nn.Module``.
        types: Keep only modules that are instances of these classes.
        leaves_only: Keep only modules without children.

    Returns:
        Names usable in ``extract_features(layers=...)``.

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> dg.list_layers(m, types=nn.Linear)
        ['0', '2']
    """
    _check_model(model)
    names = []
    for name, mod in model.named_modules():
        if not name:
            continue
        if leaves_only and next(mod.children(), None) is not None:
            continue
        if types is not None and not isinstance(mod, types):
            continue
        names.append(name)
    return names


def _is_block(mod: nn.Module) -> bool:
    if next(mod.children(), None) is None or isinstance(mod, (nn.Sequential, nn.ModuleList)):
        return False
    has_weights = any(isinstance(m, CONVS + (nn.Linear,)) for m in mod.modules())
    named = bool(_BLOCK_NAME.search(type(mod).__name__)) or any(hasattr(mod, a)
                                                                 for a in _BLOCK_ATTRS)
    return has_weights and named


def residual_blocks(model: nn.Module) -> List[str]:
    """Names of residual blocks: block-like modules that sit directly in an ``nn.Sequential`` stage
    (torchvision ResNets, CIFAR ResNet20/56/110, and user classes built the same way)."""
    blocks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Sequential, nn.ModuleList)):
            for child_name, child in mod.named_children():
                if _is_block(child):
                    blocks.append(f"{name}.{child_name}" if name else child_name)
    # Outermost blocks only (a block nested in another block's Sequential is part of it).
    return [b for b in blocks if not any(b.startswith(o + ".") for o in blocks if o != b)]


def _activation_after(model: nn.Module, name: str) -> Optional[str]:
    """The activation module that follows ``name`` in registration order (skipping norm/dropout)."""
    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    pos = next((i for i, (n, _) in enumerate(leaves) if n == name), None)
    if pos is None:  # a container (e.g. a block): its output is already what it returns
        return None
    found = None
    for n, m in leaves[pos + 1:]:
        if isinstance(m, ACTIVATIONS):
            found = n
            break
        if not isinstance(m, _PASSTHROUGH):
            break
    return found


def default_layers(model: nn.Module, point: str = "pre") -> List[str]:
    """The preset hook points of the reference paper, or a sensible choice for other models.

    * ResNet-like (residual blocks found): the stem conv, then every residual block's output.
    * VGG-like (convolutions, no blocks): every convolution.
    * MLP-like: every ``nn.Linear``.
    * Anything else: every top-level child that has parameters.

    Args:
        model: The network.
        point: ``'pre'``: the layer's own output (for a conv, before BN and ReLU — the reference);
            ``'post'``: the activation module that follows it (after BN and ReLU), where one
            exists. Block outputs are the same for both.

    Returns:
        Layer names in depth order. With ``point='post'``, a layer with no activation module after
        it keeps its own output; :func:`extract_features` records the points used in
        ``features.meta['points']``.

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                   nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> dg.default_layers(m), dg.default_layers(m, point='post')
        (['0', '3'], ['2', '4'])
    """
    _check_model(model)
    check_choice(point, "point", ("pre", "post"))
    blocks = residual_blocks(model)
    if blocks:
        inside = tuple(b + "." for b in blocks)
        stem = [n for n in list_layers(model, CONVS) if not n.startswith(inside)][:1]
        base = stem + blocks
    else:
        base = list_layers(model, CONVS) or list_layers(model, nn.Linear)
        if not base:
            base = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    if not base:
        raise ValueError(f"default_layers found no layers in {type(model).__name__}; pass layer "
                         f"names (see dg.list_layers(model))")
    if point == "post":
        base = [_activation_after(model, n) or n for n in base]
    return base


# ---------------------------------------------------------------------------- extraction
def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _resolve_layers(model: nn.Module, layers: LayerSpec) -> "OrderedDict[str, Tuple[str, str]]":
    """Returns ``{alias: (module name, 'output' | 'input')}``."""
    if layers is None:
        layers = default_layers(model)
    if isinstance(layers, type) or (isinstance(layers, tuple) and layers
                                    and all(isinstance(t, type) for t in layers)):
        found = list_layers(model, layers)
        if not found:
            raise ValueError(f"layers={layers!r}: the model has no module of that type")
        layers = found
    if isinstance(layers, str):
        layers = [layers]
    if isinstance(layers, dict):
        pairs = list(layers.items())
    else:
        pairs = [(n, n) for n in layers]
    if not pairs:
        raise ValueError("layers is empty: choose at least one layer (see dg.list_layers(model) "
                         "or dg.default_layers(model))")
    modules = dict(model.named_modules())
    out: "OrderedDict[str, Tuple[str, str]]" = OrderedDict()
    for spec, alias in pairs:
        if not isinstance(spec, str):
            raise TypeError(f"layer names must be strings, got {type(spec).__name__}: {spec!r}")
        name, _, where = spec.partition(":")
        where = where or "output"
        if where not in ("output", "input"):
            raise ValueError(f"layer {spec!r}: the point after ':' must be 'input' or 'output'")
        if name not in modules or name == "":
            close = [n for n in modules if n and (name in n or n in name)][:5]
            hint = f" Did you mean one of {close}?" if close else ""
            raise ValueError(f"unknown layer {name!r} in layers.{hint} See dg.list_layers(model) "
                             f"for the {len(modules) - 1} available names.")
        alias = alias if isinstance(layers, dict) else spec
        if alias in out:
            raise ValueError(f"layer {alias!r} is listed twice")
        out[alias] = (name, where)
    return out


def _dataset_labels(dataset) -> Optional[Tensor]:
    """Labels of a dataset without running it, when it exposes them."""
    if isinstance(dataset, Subset):
        base = _dataset_labels(dataset.dataset)
        return None if base is None else base[torch.as_tensor(dataset.indices).long()]
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, (tuple, list)) and len(tensors) >= 2:
        return torch.as_tensor(tensors[1]).long().reshape(-1)
    for attr in ("targets", "labels", "y"):
        val = getattr(dataset, attr, None)
        if val is not None:
            try:
                t = torch.as_tensor(val).long().reshape(-1)
            except Exception:
                continue
            if t.numel() == len(dataset):
                return t
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
        >>> y[dg.balanced_indices(y, per_class=2, seed=0)].bincount().tolist()
        [2, 2, 2]
    """
    if (per_class is None) == (n_samples is None):
        raise ValueError("give exactly one of per_class or n_samples, got "
                         f"per_class={per_class!r}, n_samples={n_samples!r}")
    labels = torch.as_tensor(labels).long().cpu()
    classes, counts = labels.unique(return_counts=True)
    gen = torch.Generator().manual_seed(int(seed))
    if per_class is not None:
        check_positive_int(per_class, "per_class")
        want = {int(c): per_class for c in classes}
    else:
        check_positive_int(n_samples, "n_samples")
        if n_samples > labels.numel():
            raise ValueError(f"n_samples={n_samples} exceeds the {labels.numel()} samples available")
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
    picked = []
    for c, cnt in zip(classes.tolist(), counts.tolist()):
        if want[c] > cnt:
            raise ValueError(f"class {c} has only {cnt} samples, fewer than per_class={want[c]}")
        pos = (labels == c).nonzero().flatten()
        picked.append(pos[torch.randperm(cnt, generator=gen)[:want[c]]])
    return torch.cat(picked).sort().values


def _split_batch(batch, batch_fn: Optional[Callable]) -> Tuple[Any, Tensor]:
    if batch_fn is not None:
        return batch_fn(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        xk = next((k for k in ("x", "input", "inputs", "image", "images", "pixel_values")
                   if k in batch), None)
        yk = next((k for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
        if xk and yk:
            return batch[xk], batch[yk]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} into (inputs, labels); "
                    f"pass batch_fn=lambda b: (inputs, labels)")


def _to(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _take(obj, idx: Tensor):
    if isinstance(obj, Tensor):
        return obj[idx.to(obj.device)]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take(o, idx) for o in obj)
    if isinstance(obj, dict):
        return {k: _take(v, idx) for k, v in obj.items()}
    raise TypeError(f"cannot subsample inputs of type {type(obj).__name__}")


def _reduce(out: Tensor, pool: Union[None, str, int]) -> Tensor:
    """``[B, C, *spatial]`` → ``[B, D]``: flattened (default) or pooled over the spatial axes."""
    if pool is None or out.dim() <= 2:
        return out.reshape(out.shape[0], -1)
    spatial = tuple(range(2, out.dim()))
    if pool == "avg":
        return out.mean(spatial)
    if pool == "max":
        return out.amax(spatial)
    if isinstance(pool, int):
        fn = {3: nn.functional.adaptive_avg_pool1d, 4: nn.functional.adaptive_avg_pool2d,
              5: nn.functional.adaptive_avg_pool3d}[out.dim()]
        return fn(out, pool).reshape(out.shape[0], -1)
    raise ValueError(f"pool must be None, 'avg', 'max' or an int output size, got {pool!r}")


def extract_features(model: nn.Module, loader, layers: LayerSpec = None, *,
                     per_class: Optional[int] = None, n_samples: Optional[int] = None,
                     seed: int = 0, pool: Union[None, str, int] = None,
                     device: Optional[Union[str, torch.device]] = None,
                     spill_dir: Optional[str] = None, spill_dtype: str = "float32",
                     num_classes: Optional[int] = None, batch_fn: Optional[Callable] = None,
                     progress: bool = True) -> LayerFeatures:
    """Runs ``model`` over ``loader`` and records the representations of the chosen layers.

    Forward hooks capture each layer's output (or input, with ``'name:input'``); the model is put
    in ``eval()`` mode under ``torch.no_grad()``, and its training mode is restored and every hook
    removed in ``finally``, also on error.

    Sampling: with ``per_class`` (or ``n_samples``, split evenly over classes) and a ``seed``. When
    the dataset exposes its labels (``TensorDataset``, torchvision's ``.targets``, ``Subset``), the
    sample is drawn up front and only those inputs run through the model. Otherwise the loader is
    streamed and each batch contributes, in seeded random order, the samples whose class is not
    yet full; with ``num_classes`` the stream stops as soon as every class is full.

    Args:
        model: Any ``nn.Module`` (torchvision models included).
        loader: A ``DataLoader`` (or any iterable of batches) yielding ``(inputs, labels)``.
        layers: Names (``'layer1.0'``, ``'fc:input'``), a dict ``{name: alias}``, a module type or
            tuple of types, or ``None`` for :func:`default_layers`.
        per_class: Samples per class.
        n_samples: Total samples, class-balanced. ``None`` for both: every sample.
        seed: Seed of the sampling.
        pool: ``None`` (flatten the whole map, the reference), ``'avg'``, ``'max'``, or an int for
            adaptive average pooling to that spatial size.
        device: Where to run the model (default: where its parameters are).
        spill_dir: When given, each layer is appended to a file there as it streams and read back
            as a memory map: memory stays bounded by one batch, not by ``N × D``.
        spill_dtype: ``'float32'`` or ``'float16'`` on disk.
        num_classes: Lets streaming selection stop early.
        batch_fn: ``batch -> (inputs, labels)`` for batches of another shape.
        progress: Show a progress bar.

    Returns:
        :class:`LayerFeatures` with ``[N, D]`` float32 per layer, labels ``y``, dataset
        ``indices`` when known, and ``meta`` (points, pooling, sampling, seed).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.randn(60, 4), torch.arange(60) % 3)
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> f = dg.extract_features(m, DataLoader(ds, batch_size=16), per_class=5, progress=False)
        >>> f.names, f.n_samples, f.y.bincount().tolist()
        (['0', '2'], 15, [5, 5, 5])
    """
    _check_model(model)
    if not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (a DataLoader), got "
                        f"{type(loader).__name__}")
    if pool is not None and pool not in ("avg", "max") and not (isinstance(pool, int)
                                                              and pool >= 1):
        raise ValueError(f"pool must be None, 'avg', 'max' or a positive int, got {pool!r}")
    spec = _resolve_layers(model, layers)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)

    # Up-front selection when the labels are known.
    indices = None
    dataset = getattr(loader, "dataset", None)
    labels_known = _dataset_labels(dataset) if dataset is not None else None
    run_loader = loader
    stream_quota = None
    if (per_class is not None or n_samples is not None) and labels_known is not None:
        indices = balanced_indices(labels_known, per_class, n_samples, seed)
        run_loader = DataLoader(Subset(dataset, indices.tolist()),
                                batch_size=getattr(loader, "batch_size", None) or 64,
                                shuffle=False, num_workers=getattr(loader, "num_workers", 0),
                                collate_fn=getattr(loader, "collate_fn", None),
                                pin_memory=getattr(loader, "pin_memory", False))
    elif per_class is not None or n_samples is not None:
        if per_class is not None:
            check_positive_int(per_class, "per_class")
        else:
            check_positive_int(n_samples, "n_samples")
            if num_classes is None:
                raise ValueError("n_samples with a loader whose dataset does not expose its labels "
                                 "needs num_classes (to balance the classes), or use per_class")
            per_class = -(-n_samples // num_classes)
        stream_quota = per_class
    elif labels_known is not None and dataset is not None and not _is_shuffled(loader):
        indices = torch.arange(len(labels_known))

    modules = dict(model.named_modules())
    store: Dict[str, Any] = {}
    calls: Dict[str, int] = {}
    current: Dict[str, Tensor] = {}
    handles = []
    tmp_dir = None
    if spill_dir is not None:
        tmp_dir = tempfile.mkdtemp(prefix="dyngraph-features-", dir=spill_dir)

    def make_hook(alias: str, where: str):
        def hook(mod, inputs, output=None):
            val = inputs[0] if where == "input" else output
            if where == "input" and not isinstance(inputs, tuple):
                val = inputs
            if not isinstance(val, Tensor):
                raise ValueError(f"layer {alias!r} ({type(mod).__name__}) returned "
                                 f"{type(val).__name__}, not a Tensor; hook one of its submodules "
                                 f"instead (see dg.list_layers(model))")
            calls[alias] = calls.get(alias, 0) + 1
            if calls[alias] > 1:
                raise ValueError(f"layer {alias!r} ran {calls[alias]} times in one forward pass (a "
                                 f"module reused in forward); hook a module that runs once, or "
                                 f"'<next layer>:input'")
            # Copy now: a later in-place op (ReLU(inplace=True)) would overwrite the output.
            current[alias] = _reduce(val.detach(), pool).float().clone()
        return hook

    was_training = model.training
    gen = torch.Generator().manual_seed(int(seed))
    counts: Dict[int, int] = {}
    ys: List[Tensor] = []
    n_seen = 0
    try:
        for alias, (name, where) in spec.items():
            mod = modules[name]
            if where == "input":
                handles.append(mod.register_forward_pre_hook(make_hook(alias, where)))
            else:
                handles.append(mod.register_forward_hook(make_hook(alias, where)))
        model.eval()
        total = len(run_loader) if hasattr(run_loader, "__len__") else None
        with torch.no_grad():
            for batch in progress_bar(run_loader, desc="extract", total=total,
                                      disable=not progress):
                inputs, yb = _split_batch(batch, batch_fn)
                yb = torch.as_tensor(yb).reshape(-1).long()
                if stream_quota is not None:
                    keep = _stream_select(yb.cpu(), counts, stream_quota, gen)
                    if keep.numel() == 0:
                        if num_classes is not None and len(counts) >= num_classes and \
                                all(v >= stream_quota for v in counts.values()):
                            break
                        continue
                    inputs, yb = _take(inputs, keep), yb[keep.to(yb.device)]
                calls.clear()
                current.clear()
                inputs = _to(inputs, device)
                model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)
                missing = [a for a in spec if a not in current]
                if missing:
                    raise ValueError(f"layers {missing} did not run in the forward pass (not used "
                                     f"by {type(model).__name__}.forward?)")
                for alias in spec:
                    val = current[alias]
                    if alias not in store:
                        store[alias] = (SpilledArray(f"{tmp_dir}/layer_{len(store):03d}.bin",
                                                     val.shape[1], spill_dtype)
                                        if tmp_dir else [])
                    if tmp_dir:
                        store[alias].append(val)
                    else:
                        store[alias].append(val.cpu())
                ys.append(yb.cpu())
                n_seen += yb.numel()
                if stream_quota is not None and num_classes is not None and \
                        len(counts) >= num_classes and all(v >= stream_quota
                                                           for v in counts.values()):
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not ys:
        raise ValueError("the loader produced no samples")
    y = torch.cat(ys)
    if stream_quota is not None:
        short = {c: v for c, v in counts.items() if v < stream_quota}
        if short:
            warnings.warn(f"the loader ran out before every class reached {stream_quota} samples: "
                          f"{short}", stacklevel=2)
    feats = {}
    for alias in spec:
        s = store[alias]
        feats[alias] = s if isinstance(s, SpilledArray) else torch.cat(s)
        if isinstance(s, SpilledArray):
            s.close()
    points = {alias: f"{name} ({where})" for alias, (name, where) in spec.items()}
    meta = {"points": points, "pool": pool, "seed": seed, "per_class": per_class,
            "n_samples": int(y.numel()), "model": type(model).__name__,
            "spill_dir": tmp_dir, "spill_dtype": spill_dtype if tmp_dir else None}
    return LayerFeatures(feats, y, indices, meta)


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
