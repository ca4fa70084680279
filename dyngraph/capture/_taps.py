"""``LayerTaps``: the one hook mechanism. Every part of dyngraph that runs a model forward and
reads (or edits) a layer's output goes through it."""
from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

import torch
from torch import Tensor, nn

from .._validate import check_model
from ._layers import ACTIVATIONS, PASSTHROUGH, LayerSpec, resolve_layers

Pool = Union[None, str, int]
#: Pools of conv maps ``[B, C, *spatial]`` (channels first); an int pool is one too.
CONV_POOLS = ("avg", "max")
#: Pools of token sequences ``[B, T, H]`` and channels-last maps ``[B, H, W, C]``.
TOKEN_POOLS = ("mean", "cls", "last", "tokens")
POOLS = (None, *CONV_POOLS, *TOKEN_POOLS)
LAYOUTS = (None, "channels_first", "channels_last")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")
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
    """``batch -> (inputs, labels)``.

    Understands ``(x, y, ...)`` tuples; dicts with an input key (``x``, ``input(s)``,
    ``image(s)``, ``pixel_values``) and a label key (``y``, ``label(s)``, ``target(s)``); and
    Hugging Face batches (a dict or ``BatchEncoding`` with ``input_ids``, ``attention_mask``,
    ..., and one label key): the inputs are then the dict without its label key, which the model
    receives as ``model(**inputs)``. To give the labels to the model too, pass
    ``batch_fn=lambda b: (b, b['labels'])``; ``batch_fn`` for any other batch.

    Example:
        >>> import torch
        >>> from dyngraph.capture._taps import split_batch
        >>> b = {'input_ids': torch.ones(2, 3), 'attention_mask': torch.ones(2, 3),
        ...      'labels': torch.tensor([0, 1])}
        >>> inputs, y = split_batch(b)
        >>> sorted(inputs), y.tolist()
        (['attention_mask', 'input_ids'], [0, 1])
    """
    if batch_fn is not None:
        return batch_fn(batch)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        xk = next((k for k in ("x", "input", "inputs", "image", "images", "pixel_values")
                   if k in batch), None)
        yks = [k for k in LABEL_KEYS if k in batch]
        if xk and yks:
            return batch[xk], batch[yks[0]]
        if yks:  # a Hugging Face batch: every other key is an input of the model
            if len(yks) > 1:
                raise TypeError(f"the batch has several label keys {yks}; say which with "
                                f"batch_fn=lambda b: ({{k: v for k, v in b.items() if k not in "
                                f"{yks}}}, b[{yks[0]!r}])")
            inputs = {k: v for k, v in batch.items() if k != yks[0]}
            if inputs:
                return inputs, batch[yks[0]]
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
    """Validates a ``pool`` option: ``None``, a conv pool (``'avg'``, ``'max'``, a positive int)
    or a token pool (``'mean'``, ``'cls'``, ``'last'``, ``'tokens'``)."""
    if isinstance(pool, bool) or not (pool in POOLS or (isinstance(pool, int) and pool >= 1)):
        raise ValueError(f"pool must be None, 'avg', 'max' or a positive int (conv maps "
                         f"[B, C, *spatial]), or 'mean', 'cls', 'last' or 'tokens' (token "
                         f"sequences [B, T, H], channels-last maps [B, H, W, C]), got {pool!r}")
    return pool


def is_token_pool(pool: Pool) -> bool:
    """Whether ``pool`` is one of the token pools (``'mean'``, ``'cls'``, ``'last'``,
    ``'tokens'``)."""
    return isinstance(pool, str) and pool in TOKEN_POOLS


def check_layout(layout: Optional[str], pool: Pool) -> Optional[str]:
    """Validates ``layout`` (``None``, ``'channels_first'`` or ``'channels_last'``) against
    ``pool``: conv pools read channels-first maps, token pools token sequences and
    channels-last maps."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be None (detected per layer), 'channels_first' "
                         f"([B, C, *spatial]) or 'channels_last' ([B, T, H], [B, H, W, C]), got "
                         f"{layout!r}")
    if layout == "channels_first" and is_token_pool(pool):
        raise ValueError(f"pool={pool!r} pools tokens, which layout='channels_first' "
                         f"([B, C, *spatial]) does not have; use pool='avg', 'max' or an int")
    if layout == "channels_last" and pool is not None and not is_token_pool(pool):
        raise ValueError(f"pool={pool!r} pools the spatial axes of channels-first maps, but "
                         f"layout='channels_last'; use pool='mean', 'cls', 'last' or 'tokens'")
    return layout


_CHANNELS_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm,
                   nn.modules.instancenorm._InstanceNorm, nn.modules.pooling._MaxPoolNd,
                   nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                   nn.modules.pooling._AdaptiveMaxPoolNd)
_SEQUENCE = (nn.Embedding, nn.MultiheadAttention, nn.TransformerEncoderLayer,
             nn.TransformerDecoderLayer, nn.TransformerEncoder, nn.TransformerDecoder,
             nn.Transformer)
# torchvision's Swin modules, which return channels-last maps [B, H, W, C]
_CHANNELS_LAST_NAMES = frozenset({"SwinTransformerBlock", "SwinTransformerBlockV2",
                                  "PatchMerging", "PatchMergingV2"})


def _attention_like(mod: nn.Module) -> bool:
    name = type(mod).__name__
    return (isinstance(mod, (nn.MultiheadAttention, nn.Embedding)) or "Attention" in name
            or name in _CHANNELS_LAST_NAMES)


def module_layout(mod: nn.Module) -> Optional[str]:
    """What a module's output is known to be: ``'channels_first'`` (a conv map
    ``[B, C, *spatial]``), ``'channels_last'`` (a token sequence ``[B, T, H]`` or a
    channels-last map ``[B, H, W, C]``), or ``None`` (unknown).

    Convolutions, batch/instance norms and spatial pools are channels-first; embeddings,
    attention, ``nn.Transformer*`` layers, a ``LayerNorm`` over one (the last) axis, torchvision's
    Swin blocks and patch merging, and a ``Permute`` that moves the channels last are
    channels-last. An ``nn.Sequential`` is what its last known child is; another container is
    channels-last when it holds attention or embeddings and no convolution, channels-first when
    it holds convolutions and no attention.

    Example:
        >>> import torch.nn as nn
        >>> from dyngraph.capture._taps import module_layout
        >>> enc = nn.TransformerEncoderLayer(8, 2, batch_first=True)
        >>> module_layout(nn.Conv1d(3, 4, 3)), module_layout(enc), module_layout(nn.ReLU())
        ('channels_first', 'channels_last', None)
    """
    name = type(mod).__name__
    if isinstance(mod, _CHANNELS_FIRST):
        return "channels_first"
    if isinstance(mod, _SEQUENCE) or name in _CHANNELS_LAST_NAMES:
        return "channels_last"
    if isinstance(mod, nn.LayerNorm):
        return "channels_last" if len(mod.normalized_shape) == 1 else None
    if name == "Permute":  # torchvision.ops.misc.Permute
        dims = list(getattr(mod, "dims", None) or [])
        if len(dims) >= 3 and dims[0] == 0:
            if dims[-1] == 1:
                return "channels_last"
            if dims[1] == len(dims) - 1:
                return "channels_first"
        return None
    if isinstance(mod, nn.Sequential):
        return next(filter(None, map(module_layout, reversed(list(mod)))), None)
    subs = list(mod.modules())[1:]
    attn = any(_attention_like(m) for m in subs)
    conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in subs)
    if attn != conv:
        return "channels_last" if attn else "channels_first"
    return None


def module_input_layout(mod: nn.Module) -> Optional[str]:
    """What a module's (first) input is known to be, in the terms of :func:`module_layout`: a
    module that keeps the layout (a transformer block, a conv, a norm) takes what it returns; a
    ``Permute`` takes the other layout; an ``nn.Sequential`` takes what its first known child
    takes; an embedding takes ids (``None``).

    Example:
        >>> import torch.nn as nn
        >>> from dyngraph.capture._taps import module_input_layout
        >>> enc = nn.TransformerEncoderLayer(8, 2, batch_first=True)
        >>> module_input_layout(enc), module_input_layout(nn.Sequential(nn.ReLU(), enc))
        ('channels_last', 'channels_last')
    """
    if isinstance(mod, nn.Embedding):
        return None
    if type(mod).__name__ == "Permute":
        flip = {"channels_last": "channels_first", "channels_first": "channels_last"}
        found = module_layout(mod)
        return None if found is None else flip[found]
    if isinstance(mod, nn.Sequential):
        return next(filter(None, map(module_input_layout, mod)), None)
    return module_layout(mod)


def layout_in_model(model: nn.Module, name: str, where: str = "output") -> Optional[str]:
    """:func:`module_layout` (``where='output'``) or :func:`module_input_layout`
    (``where='input'``) of module ``name``; an activation, dropout or identity (which keeps its
    input's layout) inside an ``nn.Sequential`` takes the layout of the modules before it
    (``features.2``, the ReLU after a conv, is channels-first)."""
    mod = model.get_submodule(name)
    found = module_layout(mod) if where == "output" else module_input_layout(mod)
    if found is not None or not name or not isinstance(mod, ACTIVATIONS + PASSTHROUGH):
        return found
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if not isinstance(parent, nn.Sequential):
        return None
    names = [n for n, _ in parent.named_children()]
    return module_layout(nn.Sequential(*[parent.get_submodule(n)
                                         for n in names[:names.index(child)]]))


def _batch_first_problem(mod: nn.Module) -> Optional[str]:
    """A message when ``mod`` is a torch transformer module that returns ``[T, B, H]``."""
    if not isinstance(mod, _SEQUENCE) or isinstance(mod, nn.Embedding):
        return None
    mha = next((m for m in mod.modules() if isinstance(m, nn.MultiheadAttention)), None)
    if mha is not None and not mha.batch_first:
        return (f"{type(mod).__name__} was built with batch_first=False: its output is "
                f"[T, B, H], not [B, T, H]; build it with batch_first=True or tap a module "
                f"that returns batch-first tensors")
    return None


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


def pool_tokens(seq: Tensor, mask: Optional[Tensor], pool: str
                ) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
    """Pools a token sequence ``[B, T, H]`` over its non-padding tokens.

    Args:
        seq: ``[B, T, H]`` hidden states.
        mask: ``[B, T]`` bool, ``True`` on real tokens (``None``: every token is real).
        pool: ``'mean'`` (mean of the real tokens), ``'cls'`` (the first real token: the class
            token of a BERT or ViT, also with left padding), ``'last'`` (the last real token) or
            ``'tokens'`` (every real token is a row).

    Returns:
        ``([B, H], None)``, or for ``'tokens'`` ``([N, H], (rows, positions))``: each row's
        input (``[N]``, in ``0..B-1``) and token position (``[N]``), in row-major order.

    Example:
        >>> import torch
        >>> from dyngraph.capture._taps import pool_tokens
        >>> h = torch.arange(12.).reshape(2, 3, 2)
        >>> mask = torch.tensor([[True, True, True], [True, True, False]])
        >>> pool_tokens(h, mask, 'mean')[0].tolist(), pool_tokens(h, mask, 'last')[0].tolist()
        ([[2.0, 3.0], [7.0, 8.0]], [[4.0, 5.0], [8.0, 9.0]])
        >>> _, (rows, pos) = pool_tokens(h, mask, 'tokens'); rows.tolist(), pos.tolist()
        ([0, 0, 0, 1, 1], [0, 1, 2, 0, 1])
    """
    B, T = seq.shape[0], seq.shape[1]
    if mask is None:
        if pool == "mean":
            return seq.mean(1), None
        if pool in ("cls", "last"):
            return seq[:, 0 if pool == "cls" else -1], None
        rows = torch.arange(B, device=seq.device).repeat_interleave(T)
        pos = torch.arange(T, device=seq.device).repeat(B)
        return seq.reshape(B * T, *seq.shape[2:]), (rows, pos)
    mask = mask.to(seq.device)
    counts = mask.sum(1)
    if not bool((counts > 0).all()):
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {empty} have no tokens (all padding): they have "
                         f"no representation")
    if pool == "mean":
        total = torch.where(mask.unsqueeze(-1), seq, seq.new_zeros(())).sum(1)
        return total / counts.unsqueeze(-1).to(seq.dtype), None
    if pool in ("cls", "last"):
        # padding positions before the first (after the last) real token
        idx = ((mask.cumsum(1) == 0).sum(1) if pool == "cls"
               else T - 1 - (mask.flip(1).cumsum(1) == 0).sum(1))
        return seq[torch.arange(B, device=seq.device), idx], None
    rows, pos = mask.nonzero(as_tuple=True)
    return seq[rows, pos], (rows, pos)


# ---------------------------------------------------------------------------- the taps
class LayerTaps:
    """Hooks on chosen layers of a model, as a context manager.

    On entry the hooks are registered and (with ``eval=True``) the model is put in eval mode; on
    exit, also after an error, every hook is removed and the training mode restored. Calling the
    taps runs one forward pass (under ``torch.no_grad()`` unless ``grad=True``) and returns the
    captured representations; :attr:`outputs` holds them too, and :attr:`order` the names in the
    order they ran. A layer may also be tapped while the model is run by other code (a training
    loop): read :attr:`outputs` after each forward; every forward of the model starts afresh.

    What a layer returns is read as: a tensor, the first tensor of a tuple or list, or the
    ``last_hidden_state`` (else first tensor) of a dict or Hugging Face ``ModelOutput``.

    **Which axes a pool reduces** -- the pool's name says what the output is:

    * ``None``, ``'avg'``, ``'max'``, an int: a conv map ``[B, C, *spatial]`` (a 3-D output is
      ``[B, C, L]``); ``None`` flattens, the others pool the spatial axes.
    * ``'mean'``, ``'cls'``, ``'last'``, ``'tokens'``: a token sequence ``[B, T, H]`` (any 3-D
      output) or a channels-last map ``[B, H, W, C]`` (a 4-D output, read as ``H·W`` tokens;
      ``'cls'``/``'last'`` do not apply to it). ``'mean'`` averages the real tokens, ``'cls'``
      takes the first real token, ``'last'`` the last real token, ``'tokens'`` makes every real
      token a row (:attr:`tokens` says whose and where).
    * A 2-D output ``[B, D]`` (logits, a pooler) is kept as it is by every pool but
      ``'tokens'``, which needs tokens.

    Real tokens: the model's ``attention_mask`` argument (``[B, T]``, 1 on real tokens, as a
    Hugging Face tokenizer makes it; found in the keyword arguments, in the positional ones by
    ``model.forward``'s signature, or in a dict passed as the input) marks them, for every 3-D
    output with the same ``[B, T]``; without a mask every token is real. Padding never enters a
    feature.

    A pool that does not fit what a layer is known to return is a ``ValueError`` naming the
    layer, the pool and the shape, never a reduction of the wrong axis: ``'avg'`` on the
    ``[B, T, H]`` of a transformer block (recognised by its module type -- embeddings, attention,
    ``nn.Transformer*``, a last-axis ``LayerNorm``, Swin blocks -- or because its ``[B, T]``
    matches the attention mask) would average hidden units; ``'mean'`` on a ``Conv1d``'s
    ``[B, C, L]`` would average channels; ``pool=None`` on a padded sequence would flatten
    padding. A 4-D output takes a token pool only from a module known to be channels-last
    (torchvision's Swin stages, a last-axis ``LayerNorm``, a channels-last ``Permute``). A
    ``'name:input'`` point is what that module takes (a block's input is a sequence too).
    ``layout`` overrides the detection for modules dyngraph does not know.

    Args:
        model: Any ``nn.Module``.
        layers: Names (``'layer1.0'``, ``'fc:input'`` for a module's input, ``''`` for the
            model's own output), a dict ``{name: alias}``, a module type or tuple of types,
            ``None`` for :func:`~dyngraph.capture.default_layers` (no taps when only ``edits``
            are given), or ``[]`` for no taps.
        pool: How a layer's output becomes ``[B, D]`` (``[N_tokens, D]`` for ``'tokens'``):
            ``None`` flattens it (the reference for CNNs), ``'avg'``/``'max'`` pool the spatial
            axes of ``[B, C, *spatial]``, an int adaptively average-pools to that spatial size;
            ``'mean'``, ``'cls'``, ``'last'``, ``'tokens'`` pool tokens (see above).
        eval: Put the model in eval mode inside the context.
        grad: Keep the autograd graph (``outputs`` then are not detached or copied).
        edits: ``{name: fn}``: replace that module's output by ``fn(output)`` (lesions,
            interventions); names are module names, ``''`` the model itself.
        reduce: With ``False``, outputs are kept as the layer returned them (``[B, ...]``).
        allow_repeat: Accept a module that runs several times in one forward instead of
            raising: :attr:`outputs` holds its last call, :attr:`calls` every call in order.
        strict: With ``False``, a tapped value that holds no tensor is recorded in
            :attr:`empty` (and :attr:`order`) instead of raising.
        layout: ``None`` detects each layer's layout from its module type and the attention
            mask; ``'channels_first'`` or ``'channels_last'`` states it for every tapped output
            of three or more axes (it must agree with ``pool``).
        sink: ``sink(alias, value)`` is called with each captured value as the layer runs,
            instead of keeping it in :attr:`outputs` (streaming statistics over many layers with
            one layer's output in memory; the value is not copied, so use it before returning).
            Every tapped layer must still run (:meth:`check_complete`).

    Attributes:
        tokens: With ``pool='tokens'``, ``(rows, positions)`` of the last forward: the input
            (``0..B-1``) and the token position of each output row, the same for every layer.
        attention_mask: The attention mask of the last forward, as the model received it.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> with dg.LayerTaps(m, ['0', '3']) as taps:
        ...     outs = taps(torch.randn(5, 1, 8, 8))
        >>> {k: tuple(v.shape) for k, v in outs.items()}, len(m[0]._forward_hooks)
        ({'0': (5, 144), '3': (5, 2)}, 0)

        Token sequences: the attention mask drives the pooling.

        >>> class Encoder(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(10, 8)
        ...         self.block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        ...     def forward(self, input_ids, attention_mask):
        ...         return self.block(self.emb(input_ids),
        ...                           src_key_padding_mask=attention_mask == 0)
        >>> batch = {'input_ids': torch.tensor([[1, 2, 3], [4, 5, 0]]),
        ...          'attention_mask': torch.tensor([[1, 1, 1], [1, 1, 0]])}
        >>> with dg.LayerTaps(Encoder(), ['emb', 'block'], pool='tokens') as taps:
        ...     outs = taps(batch)
        >>> tuple(outs['block'].shape), taps.tokens[0].tolist(), taps.tokens[1].tolist()
        ((5, 8), [0, 0, 0, 1, 1], [0, 1, 2, 0, 1])
        >>> with dg.LayerTaps(Encoder(), ['emb'], pool='avg') as taps:
        ...     taps(batch)
        Traceback (most recent call last):
        ...
        ValueError: pool='avg' pools the spatial axes ... gives a token sequence [B, T, H] ...
    """

    def __init__(self, model: nn.Module, layers: LayerSpec = None, pool: Pool = None, *,
                 eval: bool = True, grad: bool = False,
                 edits: Optional[Dict[str, Edit]] = None, reduce: bool = True,
                 allow_repeat: bool = False, strict: bool = True,
                 layout: Optional[str] = None,
                 sink: Optional[Callable[[str, Tensor], None]] = None) -> None:
        check_model(model)
        self.model = model
        self.pool = check_pool(pool)
        self.layout = check_layout(layout, self.pool)
        self.spec = (OrderedDict() if layers is None and edits is not None
                     else resolve_layers(model, layers, allow_empty=True))
        for flag, value in (("eval", eval), ("grad", grad), ("allow_repeat", allow_repeat)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {type(value).__name__} "
                                f"{value!r}")
        self.eval, self.grad, self.reduce, self.allow_repeat = eval, grad, reduce, allow_repeat
        self.strict = strict
        if sink is not None and not callable(sink):
            raise TypeError(f"sink must be callable sink(alias, value), got {type(sink).__name__}")
        self.sink = sink
        modules = dict(model.named_modules())
        self.edits: Dict[str, Edit] = {}
        for name, fn in (edits or {}).items():
            if name not in modules:
                raise ValueError(f"edits: unknown module {name!r} of {type(model).__name__} "
                                 f"(see dg.list_layers(model); '' is the model itself)")
            if not callable(fn):
                raise TypeError(f"edits[{name!r}] must be callable, got {type(fn).__name__}")
            self.edits[name] = fn
        # what each tapped module is known to return (or, for 'name:input', to take)
        self._layouts: Dict[str, Optional[str]] = {
            alias: layout_in_model(model, name, where)
            for alias, (name, where) in self.spec.items()}
        self._order_problem: Dict[str, Optional[str]] = {
            alias: _batch_first_problem(modules[name]) if where == "output" else None
            for alias, (name, where) in self.spec.items()}
        self.clear()
        self._signature: Optional[inspect.Signature] = None
        self._handles: List[Any] = []
        self._was_training: Optional[bool] = None
        self._active = False

    def clear(self) -> None:
        """Forgets the last forward pass's outputs."""
        self.outputs: Dict[str, Tensor] = {}
        self.calls: Dict[str, List[Tensor]] = {}
        self.empty: Set[str] = set()
        self.order: List[str] = []
        self.tokens: Optional[Tuple[Tensor, Tensor]] = None
        self._tokens_from: Optional[str] = None
        self.attention_mask: Optional[Tensor] = None
        self._mask: Optional[Tensor] = None
        self._calls: Dict[str, int] = {}

    @property
    def names(self) -> List[str]:
        """The aliases of the tapped layers, in the order given."""
        return list(self.spec)

    # ------------------------------------------------------------------ the attention mask
    def _find_mask(self, args: Any, kwargs: Any) -> Optional[Tensor]:
        """The ``attention_mask`` the model is called with, if any."""
        mask = (kwargs or {}).get("attention_mask")
        if mask is None and args:
            if self._signature is None:
                try:
                    self._signature = inspect.signature(self.model.forward)
                except (TypeError, ValueError):
                    self._signature = inspect.Signature()
            try:
                bound = self._signature.bind_partial(*args, **(kwargs or {})).arguments
                mask = bound.get("attention_mask")
            except TypeError:
                mask = None
            if mask is None:
                mask = next((a["attention_mask"] for a in args
                             if isinstance(a, Mapping) and "attention_mask" in a), None)
        return mask if isinstance(mask, Tensor) else None

    def _real_tokens(self, alias: str, out: Tensor) -> Optional[Tensor]:
        """``[B, T]`` bool mask of the real tokens of a 3-D output, or ``None`` (no mask)."""
        raw = self.attention_mask
        if raw is None:
            return None
        if raw.dim() != 2 or tuple(raw.shape) != tuple(out.shape[:2]):
            raise ValueError(f"layer {alias!r} gives a sequence of shape {tuple(out.shape)} but "
                             f"the attention_mask has shape {tuple(raw.shape)}: its tokens are "
                             f"not the input's tokens, so padding cannot be told apart (tap a "
                             f"layer whose output is [B, T, H] with the mask's B and T)")
        if self._mask is None:
            if raw.dtype != torch.bool and not bool(((raw == 0) | (raw == 1)).all()):
                raise ValueError("attention_mask must hold 0 (padding) and 1 (real tokens) only "
                                 "to pool tokens")
            self._mask = raw != 0
        return self._mask

    def _aligned(self, out: Tensor) -> bool:
        """Whether a 3-D output is a sequence over the attention mask's tokens."""
        raw = self.attention_mask
        return (raw is not None and raw.dim() == 2 and out.dim() == 3
                and tuple(raw.shape) == tuple(out.shape[:2]))

    # ------------------------------------------------------------------ pooling
    def _pool(self, alias: str, mod: nn.Module, out: Tensor
              ) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
        pool, shape, what = self.pool, tuple(out.shape), f"layer {alias!r} ({type(mod).__name__})"
        token_pool = is_token_pool(pool)
        if out.dim() <= 2:
            if pool == "tokens":
                raise ValueError(f"pool='tokens' makes every token a sample, but {what} gives "
                                 f"shape {shape}, which has no token axis; tap layers that "
                                 f"return [B, T, H]")
            return out.reshape(out.shape[0], -1), None
        if (token_pool or pool is None) and self._order_problem[alias] and out.dim() == 3:
            raise ValueError(f"{what}: {self._order_problem[alias]}")
        aligned = self._aligned(out)
        layout = self.layout or ("channels_last" if aligned else self._layouts[alias])
        if pool is None:
            if aligned:
                raise ValueError(f"pool=None would flatten the padding of {what}'s token "
                                 f"sequence of shape {shape} into its features (and inputs of "
                                 f"different lengths into different widths); use pool='mean', "
                                 f"'cls', 'last' or 'tokens'")
            return out.reshape(out.shape[0], -1), None
        if not token_pool:
            if layout == "channels_last":
                kind = ("a token sequence [B, T, H]" if out.dim() == 3
                        else "a channels-last map [B, H, W, C]")
                raise ValueError(f"pool={pool!r} pools the spatial axes of a conv map "
                                 f"[B, C, *spatial], but {what} gives {kind} of shape {shape}: "
                                 f"it would average the hidden units. Use pool='mean', 'cls', "
                                 f"'last' or 'tokens'")
            return reduce_output(out, pool), None
        assert isinstance(pool, str)
        if layout == "channels_first":
            raise ValueError(f"pool={pool!r} pools token sequences [B, T, H], but {what} gives "
                             f"a conv map [B, C, *spatial] of shape {shape}: it would pool the "
                             f"channels. Use pool='avg', 'max' or an int (or layout="
                             f"'channels_last' if it really is [B, T, H] / [B, H, W, C])")
        if out.dim() == 3:
            return pool_tokens(out, self._real_tokens(alias, out), pool)
        if out.dim() == 4:
            if layout != "channels_last":
                raise ValueError(f"pool={pool!r} on {what}'s 4-D output of shape {shape}: "
                                 f"dyngraph cannot tell a conv map [B, C, H, W] (use pool='avg') "
                                 f"from a channels-last map [B, H, W, C] (pass "
                                 f"layout='channels_last')")
            if pool in ("cls", "last"):
                raise ValueError(f"pool={pool!r}: {what} gives a channels-last map of shape "
                                 f"{shape}, which has no class or last token; use pool='mean' "
                                 f"or 'tokens'")
            return pool_tokens(out.reshape(out.shape[0], -1, out.shape[-1]), None, pool)
        raise ValueError(f"pool={pool!r} does not fit {what}'s output of shape {shape}: token "
                         f"pools take [B, T, H] or a channels-last [B, H, W, C]")

    def _record_tokens(self, alias: str, tok: Tuple[Tensor, Tensor]) -> None:
        if self.tokens is None:
            self.tokens, self._tokens_from = tok, alias
            return
        if not all(a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
                   for a, b in zip(self.tokens, tok)):
            raise ValueError(f"pool='tokens': layer {alias!r} has {tok[0].numel()} tokens, not "
                             f"the {self.tokens[0].numel()} tokens at the positions of layer "
                             f"{self._tokens_from!r}; every tapped layer must have the same "
                             f"tokens (tap layers of one sequence length)")

    def _capture(self, alias: str, mod: nn.Module, value: Any) -> None:
        val = first_tensor(value)
        if val is None and self.strict:
            raise ValueError(f"layer {alias!r} ({type(mod).__name__}) returned "
                             f"{type(value).__name__} with no tensor in it; hook one of its "
                             f"submodules instead (see dg.list_layers(model))")
        self._calls[alias] = self._calls.get(alias, 0) + 1
        if val is None:
            self.order.append(alias)
            self.empty.add(alias)
            return
        if self._calls[alias] > 1 and not self.allow_repeat:
            raise ValueError(f"layer {alias!r} ran {self._calls[alias]} times in one forward pass "
                             f"(a module reused in forward); hook a module that runs once, or "
                             f"'<next layer>:input'")
        self.order.append(alias)
        if not self.grad:
            val = val.detach()
        if self.reduce:
            val, tok = self._pool(alias, mod, val)
            if tok is not None:
                self._record_tokens(alias, tok)
        if self.sink is not None:
            self.sink(alias, val)
            return
        # Copy now: a later in-place op (ReLU(inplace=True)) would overwrite the output.
        val = val if self.grad else val.clone()
        self.outputs[alias] = val
        if self.allow_repeat:
            self.calls.setdefault(alias, []).append(val)

    def _start_forward(self, args: Any, kwargs: Any) -> None:
        # Each forward of the model starts afresh, also when other code (a training loop) runs
        # the model: outputs always hold the latest forward pass.
        self.clear()
        self.attention_mask = self._find_mask(args, kwargs)

    def _register(self) -> None:
        modules = dict(self.model.named_modules())
        self._handles.append(self.model.register_forward_pre_hook(
            lambda m, args, kwargs: self._start_forward(args, kwargs), prepend=True,
            with_kwargs=True))
        for alias, (name, where) in self.spec.items():
            mod = modules[name]
            if where == "input":
                def pre(m: nn.Module, args: Any, kwargs: Any, alias: str = alias) -> None:
                    # the first positional argument, or (keyword-only calls) the kwargs:
                    # ``hidden_states`` when there is one, else the first tensor
                    self._capture(alias, m, args[0] if args else dict(kwargs or {}))
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

    def check_complete(self) -> None:
        """Raises when a tapped layer did not run in the last forward pass."""
        missing = [a for a in self.spec if a not in self._calls]
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
        """Runs one forward pass; returns ``{alias: Tensor[B, D]}`` in the order of the layers
        (``[N_tokens, D]`` with ``pool='tokens'``, rows described by :attr:`tokens`)."""
        self.run(inputs)
        return {a: self.outputs[a] for a in self.spec}
