"""``LayerTaps``: the one hook mechanism. Every part of dyngraph that runs a model forward and
reads (or edits) a layer's output goes through it."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from .._validate import check_model
from ._layers import LayerSpec, resolve_layers

Pool = Union[None, str, int]
POOLS = (None, "avg", "max")
Edit = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------- batch helpers
def to_device(obj: Any, device: Union[str, torch.device]) -> Any:
    """Moves tensors inside nested tuples, lists and dicts to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def take_rows(obj: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of every tensor inside nested tuples, lists and dicts (a sub-batch)."""
    if isinstance(obj, Tensor):
        return obj[idx.to(obj.device)]
    if isinstance(obj, (tuple, list)):
        return type(obj)(take_rows(o, idx) for o in obj)
    if isinstance(obj, Mapping):
        return {k: take_rows(v, idx) for k, v in obj.items()}
    raise TypeError(f"cannot subsample inputs of type {type(obj).__name__}")


def split_batch(batch: Any, batch_fn: Optional[Callable[[Any], Tuple[Any, Any]]] = None
                ) -> Tuple[Any, Any]:
    """``batch -> (inputs, labels)``: ``(x, y, ...)`` tuples, or dicts with an input key
    (``x``, ``input(s)``, ``image(s)``, ``pixel_values``) and a label key (``y``, ``label(s)``,
    ``target(s)``); ``batch_fn`` for anything else."""
    if batch_fn is not None:
        return batch_fn(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        xk = next((k for k in ("x", "input", "inputs", "image", "images", "pixel_values")
                   if k in batch), None)
        yk = next((k for k in ("y", "label", "labels", "target", "targets") if k in batch), None)
        if xk and yk:
            return batch[xk], batch[yk]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__} into (inputs, labels); "
                    f"pass batch_fn=lambda b: (inputs, labels)")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple or list, ``model(**inputs)`` for a dict, else
    ``model(inputs)``."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def first_tensor(value: Any) -> Optional[Tensor]:
    """The representation inside a module's output: the tensor itself, the first tensor of a
    tuple or list, or of a dict / Hugging Face ``ModelOutput`` (``last_hidden_state`` or
    ``logits`` first when present)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        for key in ("last_hidden_state", "hidden_states", "logits"):
            v = value.get(key)
            if isinstance(v, Tensor):
                return v
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for v in value:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def logits_of(output: Any) -> Tensor:
    """A classifier's logits ``[B, C]`` from its output: a tensor, a dict / Hugging Face
    ``ModelOutput`` (its ``'logits'``), or a tuple (its first tensor)."""
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        out: Optional[Tensor] = output["logits"]
    else:
        out = first_tensor(output)
    if out is None or out.dim() != 2:
        shape = None if out is None else tuple(out.shape)
        raise ValueError(f"the model's output ({type(output).__name__}"
                         f"{'' if shape is None else f' with logits of shape {shape}'}) has no "
                         f"[batch, classes] logits: return a tensor, a tuple whose first tensor "
                         f"is the logits, or a dict with 'logits'")
    return out


def check_pool(pool: Pool) -> Pool:
    """Validates a ``pool`` option (``None``, ``'avg'``, ``'max'`` or a positive int)."""
    if isinstance(pool, bool) or not (pool in POOLS or (isinstance(pool, int) and pool >= 1)):
        raise ValueError(f"pool must be None, 'avg', 'max' or a positive int, got {pool!r}")
    return pool


def reduce_output(out: Tensor, pool: Pool) -> Tensor:
    """``[B, C, *spatial]`` → ``[B, D]``: flattened (``pool=None``), or averaged / maxed over the
    spatial axes, or adaptively average-pooled to an ``int`` spatial size."""
    if pool is None or out.dim() <= 2:
        return out.reshape(out.shape[0], -1)
    spatial = tuple(range(2, out.dim()))
    if pool == "avg":
        return out.mean(spatial)
    if pool == "max":
        return out.amax(spatial)
    if isinstance(pool, int) and out.dim() in (3, 4, 5):
        fn = {3: nn.functional.adaptive_avg_pool1d, 4: nn.functional.adaptive_avg_pool2d,
              5: nn.functional.adaptive_avg_pool3d}[out.dim()]
        return fn(out, pool).reshape(out.shape[0], -1)
    raise ValueError(f"pool={pool!r} does not fit an output of shape {tuple(out.shape)}")


# ---------------------------------------------------------------------------- the taps
class LayerTaps:
    """Hooks on chosen layers of a model, as a context manager.

    On entry the hooks are registered and (with ``eval=True``) the model is put in eval mode; on
    exit, also after an error, every hook is removed and the training mode restored. Calling the
    taps runs one forward pass (under ``torch.no_grad()`` unless ``grad=True``) and returns the
    captured representations; :attr:`outputs` holds them too, and :attr:`order` the names in the
    order they ran. A layer may also be tapped while the model is run by other code (a training
    loop): read :attr:`outputs` after each forward; every forward of the model starts afresh.

    Args:
        model: Any ``nn.Module``.
        layers: Names (``'layer1.0'``, ``'fc:input'`` for a module's input, ``''`` for the
            model's own output), a dict ``{name: alias}``, a module type or tuple of types,
            ``None`` for :func:`~dyngraph.capture.default_layers` (no taps when only ``edits``
            are given), or ``[]`` for no taps.
        pool: How a layer's output becomes ``[B, D]``: ``None`` flattens it (the reference),
            ``'avg'``/``'max'`` pool the spatial axes of ``[B, C, *spatial]``, an int
            adaptively average-pools to that spatial size.
        eval: Put the model in eval mode inside the context.
        grad: Keep the autograd graph (``outputs`` then are not detached or copied).
        edits: ``{name: fn}``: replace that module's output by ``fn(output)`` (lesions,
            interventions); names are module names, ``''`` the model itself.
        reduce: With ``False``, outputs are kept as the layer returned them (``[B, ...]``).
        allow_repeat: Accept a module that runs several times in one forward instead of
            raising: :attr:`outputs` holds its last call, :attr:`calls` every call in order.
        strict: With ``False``, a tapped value that holds no tensor is recorded in
            :attr:`empty` (and :attr:`order`) instead of raising.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> with dg.LayerTaps(m, ['0', '3']) as taps:
        ...     outs = taps(torch.randn(5, 1, 8, 8))
        >>> {k: tuple(v.shape) for k, v in outs.items()}, len(m[0]._forward_hooks)
        ({'0': (5, 144), '3': (5, 2)}, 0)
    """

    def __init__(self, model: nn.Module, layers: LayerSpec = None, pool: Pool = None, *,
                 eval: bool = True, grad: bool = False,
                 edits: Optional[Dict[str, Edit]] = None, reduce: bool = True,
                 allow_repeat: bool = False, strict: bool = True) -> None:
        check_model(model)
        self.model = model
        self.pool = check_pool(pool)
        self.spec = (OrderedDict() if layers is None and edits is not None
                     else resolve_layers(model, layers, allow_empty=True))
        self.eval, self.grad, self.reduce, self.allow_repeat = eval, grad, reduce, allow_repeat
        self.strict = strict
        modules = dict(model.named_modules())
        self.edits: Dict[str, Edit] = {}
        for name, fn in (edits or {}).items():
            if name not in modules:
                raise ValueError(f"edits: unknown module {name!r} of {type(model).__name__} "
                                 f"(see dg.list_layers(model); '' is the model itself)")
            if not callable(fn):
                raise TypeError(f"edits[{name!r}] must be callable, got {type(fn).__name__}")
            self.edits[name] = fn
        self.outputs: Dict[str, Tensor] = {}
        self.calls: Dict[str, List[Tensor]] = {}
        self.empty: Set[str] = set()
        self.order: List[str] = []
        self._calls: Dict[str, int] = {}
        self._handles: List[Any] = []
        self._was_training: Optional[bool] = None
        self._active = False

    @property
    def names(self) -> List[str]:
        """The aliases of the tapped layers, in the order given."""
        return list(self.spec)

    def _capture(self, alias: str, mod: nn.Module, value: Any) -> None:
        val = first_tensor(value)
        if val is None and not self.strict:
            self._calls[alias] = self._calls.get(alias, 0) + 1
            self.order.append(alias)
            self.empty.add(alias)
            return
        if val is None:
            raise ValueError(f"layer {alias!r} ({type(mod).__name__}) returned "
                             f"{type(value).__name__} with no tensor in it; hook one of its "
                             f"submodules instead (see dg.list_layers(model))")
        self._calls[alias] = self._calls.get(alias, 0) + 1
        if self._calls[alias] > 1 and not self.allow_repeat:
            raise ValueError(f"layer {alias!r} ran {self._calls[alias]} times in one forward pass "
                             f"(a module reused in forward); hook a module that runs once, or "
                             f"'<next layer>:input'")
        self.order.append(alias)
        if not self.grad:
            val = val.detach()
        if self.reduce:
            val = reduce_output(val, self.pool)
        # Copy now: a later in-place op (ReLU(inplace=True)) would overwrite the output.
        val = val if self.grad else val.clone()
        self.outputs[alias] = val
        if self.allow_repeat:
            self.calls.setdefault(alias, []).append(val)

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        # Each forward of the model starts afresh, also when other code (a training loop) runs
        # the model: outputs always hold the latest forward pass.
        self._handles.append(self.model.register_forward_pre_hook(
            lambda m, args: self.clear(), prepend=True))
        for alias, (name, where) in self.spec.items():
            mod = modules[name]
            if where == "input":
                def pre(m: nn.Module, args: Any, kwargs: Any, alias: str = alias) -> None:
                    # the first positional argument, or (keyword-only calls) the first kwarg
                    self._capture(alias, m, args[0] if args else list((kwargs or {}).values()))
                self._handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            else:
                def post(m: nn.Module, args: Any, out: Any, alias: str = alias) -> None:
                    self._capture(alias, m, out)
                self._handles.append(mod.register_forward_hook(post))
        for name, fn in self.edits.items():
            def edit(m: nn.Module, args: Any, out: Any, fn: Edit = fn) -> Any:
                return fn(out)
            # prepend: the edit runs before any tap on the same module sees the output
            self._handles.append(modules[name].register_forward_hook(edit, prepend=True))

    def __enter__(self) -> "LayerTaps":
        if self._active:
            raise RuntimeError("these LayerTaps are already active")
        self._was_training = self.model.training
        try:
            self._register()
        except BaseException:
            self.remove()
            raise
        if self.eval:
            self.model.eval()
        self._active = True
        return self

    def remove(self) -> None:
        """Removes every hook and restores the training mode (what ``__exit__`` does)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._active = False
        if self._was_training is not None:
            self.model.train(self._was_training)
            self._was_training = None

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def clear(self) -> None:
        """Forgets the last forward pass's outputs."""
        self.outputs = {}
        self.calls = {}
        self.empty = set()
        self.order = []
        self._calls = {}

    def check_complete(self) -> None:
        """Raises when a tapped layer did not run in the last forward pass."""
        missing = [a for a in self.spec if a not in self.outputs and a not in self.empty]
        if missing:
            raise ValueError(f"layers {missing} did not run in the forward pass (not used by "
                             f"{type(self.model).__name__}.forward?)")

    def run(self, inputs: Any) -> Any:
        """One forward pass (``model(*inputs)``, ``model(**inputs)`` or ``model(inputs)``);
        returns the model's own output and leaves the taps' in :attr:`outputs`."""
        if not self._active:
            raise RuntimeError("LayerTaps must be entered first: `with dg.LayerTaps(...) as taps:`")
        self.clear()
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            out = call_model(self.model, inputs)
        self.check_complete()
        return out

    def __call__(self, inputs: Any) -> Dict[str, Tensor]:
        """Runs one forward pass; returns ``{alias: Tensor[B, D]}`` in the order of the layers."""
        self.run(inputs)
        return {a: self.outputs[a] for a in self.spec}
