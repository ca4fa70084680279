"""Depth pruning of transformers: which blocks to remove, the surgery, healing and evaluation, and
the study that compares every criterion at the same budget.

The pipeline (Lu et al., "Reassessing Layer Pruning in LLMs", ICLR 2026, asked the question this
answers on your own model: does any criterion beat simply removing the last blocks?):

1. :func:`block_states` runs calibration texts once and keeps, per block, what every criterion
   reads: Block Influence (ShortGPT), each sample's last-token and masked-mean hidden states.
2. :func:`select_blocks` turns them into the blocks to remove for one criterion and budget:
   ``'block_influence'`` (lowest BI), ``'angular'`` (Gromov et al.: the ``n`` consecutive blocks
   whose input and output are closest in angle at the last token), ``'reverse'`` (the last
   ``n``), ``'random'`` (seeded), ``'cka'`` (highest linear CKA between a block's input and
   output) and ``'modularity'`` (lowest ΔQ of the block outputs with the texts' labels, the seed
   paper's rule).
3. :func:`remove_blocks` cuts them out of the model's block list (Hugging Face ``model.layers``,
   ``transformer.h``, ``encoder.layer``; ``nn.TransformerEncoder``; torchvision ViT) and keeps
   the config's layer count, per-layer config lists and the attention modules' ``layer_idx``
   (the KV-cache slot) right, so ``generate`` works.
4. :func:`heal` fine-tunes the last ``k`` kept blocks and the head (``mode='partial'``, the
   recipe Lu et al. found best) or everything, with atomic, resumable checkpoints.
5. :func:`perplexity` (token-weighted, padding masked) or accuracy, parameters, FLOPs and
   latency; :func:`transformer_prune_study` runs it all and writes ``transformer_prune.json`` and
   ``transformer_prune.md`` atomically, resuming finished rows.

``transformers`` is imported only to load a model folder.
"""
from __future__ import annotations

import copy
import inspect
import math
import re
import statistics
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .._io import PathLike, atomic_torch_save, atomic_write_json, atomic_write_text, file_in
from .._progress import progress_bar
from .._validate import check_choice, check_model, check_positive_int, model_device
from ..capture._layers import BlockStack, block_stack
from ..capture._taps import LayerTaps, first_tensor, logits_of, to_device
from ..graphs._spec import GraphSpec
from ..measures._criteria import cosine_sum, last_token, row_angles
from ..profiles._runner import depth_profile
from ._baselines import adjacent_cka
from ._cost import count_flops, count_params, measure_latency
from ._detect import redundant_layers
from ._finetune import check_rates, evaluate, settings_changed
from ._surgery import eval_mode

__all__ = ["CRITERIA", "BlockSelection", "BlockStates", "block_states", "heal",
           "lm_batches", "perplexity", "remove_blocks", "select_blocks", "transformer_blocks",
           "transformer_prune_study"]

CRITERIA = ("block_influence", "angular", "reverse", "random", "cka", "modularity")
HEAL_MODES = ("partial", "all", "none")
TASKS = ("lm", "classify")
_INDEX_ATTRS = ("layer_idx", "layer_id", "layer_index", "block_idx")
_HEAL_FORMAT = "dyngraph.heal/1"
REPORT = "transformer_prune.json"
TABLE = "transformer_prune.md"
FORMAT = "dyngraph.transformer_prune/1"

Batch = Dict[str, Tensor]


# ============================================================================ the block stack
def transformer_blocks(model: nn.Module, stack: Optional[str] = None) -> Tuple[str, BlockStack]:
    """The model's list of blocks and its dotted path: ``stack`` when given, else
    :func:`~dyngraph.capture._layers.block_stack` (the longest list of one block class).

    Example:
        >>> import torch.nn as nn
        >>> from dyngraph.prune._transformer import transformer_blocks
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
        ...                             num_layers=3, enable_nested_tensor=False)
        >>> path, blocks = transformer_blocks(enc)
        >>> path, len(blocks)
        ('layers', 3)
    """
    check_model(model)
    if stack is None:
        return block_stack(model)
    if not isinstance(stack, str):
        raise TypeError(f"stack must be a dotted module name (str), got {type(stack).__name__}")
    mod = dict(model.named_modules()).get(stack)
    if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
        what = "no module" if mod is None else f"a {type(mod).__name__}"
        raise ValueError(f"stack={stack!r} names {what} in {type(model).__name__}; it must name "
                         f"the nn.ModuleList / nn.Sequential of blocks (e.g. 'model.layers')")
    if len(mod) == 0:
        raise ValueError(f"stack={stack!r} is empty")
    return stack, mod


def _block_indices(blocks: Any, n: int, path: str) -> List[int]:
    """Block indices from ints or names ``'<path>.<i>'``, checked, sorted, unique."""
    if isinstance(blocks, (int, str)):
        blocks = [blocks]
    try:
        items = list(blocks)
    except TypeError:
        raise TypeError(f"blocks must be block indices or names, got "
                        f"{type(blocks).__name__}") from None
    out = []
    for b in items:
        if isinstance(b, str):
            head, _, tail = b.rpartition(".")
            if head != path or not tail.isdigit():
                raise ValueError(f"blocks: {b!r} is not a block of the stack {path!r} (names are "
                                 f"'{path}.<i>')")
            b = int(tail)
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"blocks must be ints or names, got {type(b).__name__}: {b!r}")
        if not 0 <= b < n:
            raise ValueError(f"blocks: {b} is out of range for a stack of {n} blocks")
        out.append(b)
    if len(set(out)) != len(out):
        raise ValueError(f"blocks lists a block twice: {items}")
    if not out:
        raise ValueError("blocks is empty: name at least one block to remove")
    if len(out) >= n:
        raise ValueError(f"blocks would remove all {n} blocks of {path!r}; keep at least one")
    return sorted(out)


def _configs(model: nn.Module) -> List[Any]:
    """The model's config objects (the config, and its text config when it is another)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return []
    out = [cfg]
    get_text = getattr(cfg, "get_text_config", None)
    if callable(get_text):
        try:
            text = get_text()
        except Exception:  # some configs need arguments; the main config is enough then
            text = None
        if text is not None and text is not cfg:
            out.append(text)
    return out


def _rename_sequential(stack: nn.Sequential, kept: List[int]) -> nn.Sequential:
    """A Sequential of the kept children; names ``<prefix><i>`` renumbered (torchvision ViT's
    ``encoder_layer_<i>``), other names kept."""
    names = [n for n, _ in stack.named_children()]
    mods = list(stack.children())
    pat = [re.fullmatch(r"(.*?)(\d+)", n) for n in names]
    numbered = all(m is not None and int(m.group(2)) == i for i, m in enumerate(pat))
    new = OrderedDict()
    for j, i in enumerate(kept):
        m = pat[i]
        key = f"{m.group(1)}{j}" if numbered and m is not None else names[i]
        new[key] = mods[i]
    return nn.Sequential(new)


def remove_blocks(model: nn.Module, blocks: Union[int, str, Sequence[Union[int, str]]], *,
                  stack: Optional[str] = None, inplace: bool = False,
                  return_log: bool = False) -> Any:
    """Removes blocks from a transformer's block list and returns a working model.

    What is kept right: the list itself (an ``nn.ModuleList`` stays one; an ``nn.Sequential``'s
    numbered names are renumbered, so a pruned torchvision ViT has the state-dict keys of one
    built with fewer layers); a Hugging Face config's ``num_hidden_layers`` (GPT-2's ``n_layer``
    is the same setting) and every top-level per-layer list of the old length
    (``layer_types``, ...); the ``layer_idx`` of the kept blocks' modules (the slot each
    attention reads and writes in the KV cache), so that incremental decoding and ``generate``
    run; ``nn.TransformerEncoder.num_layers``.

    Args:
        model: The network (not modified unless ``inplace``).
        blocks: Indices into the block list, or names ``'<stack>.<i>'``.
        stack: Dotted path of the block list (default: found by ``block_stack``).
        inplace: Edit ``model`` itself (saves a copy of a large model).
        return_log: Also return ``{'stack', 'removed', 'kept', 'config', 'renumbered'}``.

    Returns:
        The pruned model (and the log).

    Raises:
        ValueError: a block index out of range, all blocks, or an attention whose arithmetic
            depends on its layer index (GPT-2 with ``scale_attn_by_inverse_layer_idx`` on an
            old ``transformers``).

    Example:
        >>> import torch, torch.nn as nn
        >>> from dyngraph.prune._transformer import remove_blocks
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
        ...                             num_layers=4, enable_nested_tensor=False)
        >>> small, log = remove_blocks(enc, [1, 2], return_log=True)
        >>> len(small.layers), small.num_layers, log['kept'], len(enc.layers)
        (2, 2, [0, 3], 4)
        >>> small.eval()(torch.zeros(1, 5, 8)).shape
        torch.Size([1, 5, 8])
    """
    check_model(model)
    path, container = transformer_blocks(model, stack)
    n = len(container)
    drop = _block_indices(blocks, n, path)
    for i, blk in enumerate(container):
        for m in blk.modules():
            if getattr(m, "scale_attn_by_inverse_layer_idx", False) and \
                    not hasattr(m, "scaling"):
                raise ValueError(f"block {i} of {path!r} ({type(m).__name__}) scales attention "
                                 f"by its layer index at run time "
                                 f"(scale_attn_by_inverse_layer_idx): renumbering would change "
                                 f"it; upgrade transformers (it precomputes the scale)")
    if not inplace:
        model = copy.deepcopy(model)
        path, container = transformer_blocks(model, path)
    kept = [i for i in range(n) if i not in set(drop)]
    items = list(container)
    new: BlockStack = (_rename_sequential(container, kept) if isinstance(container, nn.Sequential)
                       else nn.ModuleList([items[i] for i in kept]))
    parent_name, _, attr = path.rpartition(".")
    if path == "":
        raise ValueError("the model is itself the block list; remove items from it directly")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    renumbered = 0
    for j, i in enumerate(kept):
        for m in items[i].modules():
            for a in _INDEX_ATTRS:
                v = getattr(m, a, None)
                if isinstance(v, int) and not isinstance(v, bool) and v == i and i != j:
                    setattr(m, a, j)
                    renumbered += 1
    if isinstance(parent, nn.TransformerEncoder) and attr == "layers":
        parent.num_layers = len(kept)
    changed: Dict[str, Any] = {}
    for cfg in _configs(model):
        if getattr(cfg, "num_hidden_layers", None) != n:
            continue
        cfg.num_hidden_layers = len(kept)
        changed["num_hidden_layers"] = [n, len(kept)]
        try:
            keys = list(cfg.to_dict())
        except Exception:
            keys = list(vars(cfg))
        for key in keys:
            val = getattr(cfg, key, None)
            if isinstance(val, (list, tuple)) and len(val) == n and not key.startswith("_"):
                setattr(cfg, key, type(val)(val[i] for i in kept))
                changed[key] = "kept entries " + str(kept)
    log = {"stack": path, "removed": drop, "kept": kept, "config": changed,
           "renumbered": renumbered}
    return (model, log) if return_log else model


# ============================================================================ texts → batches
def _encode(tokenizer: Any, text: str) -> List[int]:
    if not isinstance(text, str):
        raise TypeError(f"texts must be strings, got {type(text).__name__}: {text!r:.60}")
    out = tokenizer(text)
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        out = out["input_ids"]
    if isinstance(out, Tensor):
        out = out.reshape(-1).tolist()
    ids = list(out)
    if ids and not all(isinstance(i, int) for i in ids):
        raise TypeError("the tokenizer must return token ids (ints) or a dict with 'input_ids'")
    return ids


def lm_batches(tokenizer: Any, texts: Sequence[str], *, max_length: int = 128,
               batch_size: int = 8, labels: Optional[Sequence[int]] = None,
               chunk: bool = True, max_windows: Optional[int] = None,
               min_tokens: int = 2) -> List[Batch]:
    """Tokenised batches ``{'input_ids', 'attention_mask'[, 'labels']}`` (right-padded per
    batch) of texts, each text cut into windows of ``max_length`` tokens.

    Args:
        tokenizer: A Hugging Face tokenizer, or any ``str -> list[int]`` (or ``-> {'input_ids':
            ...}``) callable; padding uses its ``pad_token_id`` (else ``eos_token_id``, else 0),
            which the attention mask hides.
        texts: The texts.
        max_length: Tokens per window.
        batch_size: Windows per batch.
        labels: One integer label per text (kept per window, as ``'labels'``).
        chunk: Cut a long text into consecutive windows (``False``: keep only its first).
        max_windows: Keep at most this many windows (the first ones).
        min_tokens: Windows shorter than this are left out (2: a causal LM predicts nothing
            in one token; use 1 for classification).

    Returns:
        A list of batches (CPU tensors).

    Example:
        >>> from dyngraph.prune._transformer import lm_batches
        >>> tok = lambda s: [ord(c) % 50 for c in s]
        >>> b = lm_batches(tok, ['hello world', 'hi'], max_length=4, batch_size=8)
        >>> b[0]['input_ids'].shape, b[0]['attention_mask'].sum(1).tolist()
        (torch.Size([4, 4]), [4, 4, 3, 2])
    """
    check_positive_int(max_length, "max_length", minimum=2)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(min_tokens, "min_tokens")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty")
    if labels is not None:
        labels = [int(v) for v in labels]
        if len(labels) != len(texts):
            raise ValueError(f"labels has {len(labels)} entries for {len(texts)} texts")
        if min(labels) < 0:
            raise ValueError(f"labels must be >= 0, got min(labels)={min(labels)}")
    windows: List[Tuple[List[int], int]] = []
    for k, text in enumerate(texts):
        ids = _encode(tokenizer, text)
        starts = range(0, len(ids), max_length) if chunk else range(0, min(len(ids), 1))
        for s in starts:
            w = ids[s:s + max_length]
            if len(w) >= min_tokens:
                windows.append((w, -1 if labels is None else labels[k]))
    if max_windows is not None:
        windows = windows[:check_positive_int(max_windows, "max_windows")]
    if not windows:
        raise ValueError(f"no text has {min_tokens} tokens or more")
    pad_ids = (getattr(tokenizer, key, None) for key in ("pad_token_id", "eos_token_id"))
    pad = next((v for v in pad_ids if isinstance(v, int)), 0)
    out = []
    for s in range(0, len(windows), batch_size):
        part = windows[s:s + batch_size]
        t = max(len(w) for w, _ in part)
        ids_t = torch.full((len(part), t), pad, dtype=torch.long)
        mask = torch.zeros(len(part), t, dtype=torch.long)
        for r, (w, _) in enumerate(part):
            ids_t[r, :len(w)] = torch.tensor(w, dtype=torch.long)
            mask[r, :len(w)] = 1
        b: Batch = {"input_ids": ids_t, "attention_mask": mask}
        if labels is not None:
            b["labels"] = torch.tensor([lab for _, lab in part], dtype=torch.long)
        out.append(b)
    return out


def _check_batches(batches: Any, name: str = "batches") -> List[Batch]:
    if isinstance(batches, Mapping):
        batches = [batches]
    try:
        out = list(batches)
    except TypeError:
        raise TypeError(f"{name} must be a list of dict batches (see lm_batches), got "
                        f"{type(batches).__name__}") from None
    if not out:
        raise ValueError(f"{name} is empty")
    for b in out:
        if not isinstance(b, Mapping) or "input_ids" not in b:
            raise TypeError(f"{name} must hold dict batches with 'input_ids' (see lm_batches), "
                            f"got {type(b).__name__}")
    return out


def _inputs(model: nn.Module, batch: Batch, device: torch.device) -> Dict[str, Any]:
    """The model's keyword inputs of a batch (without labels), on ``device``; no KV cache."""
    inp: Dict[str, Any] = {k: v for k, v in batch.items() if k != "labels"}
    try:
        if "use_cache" in inspect.signature(model.forward).parameters:
            inp["use_cache"] = False
    except (TypeError, ValueError):
        pass
    return to_device(inp, device)


def _attention_mask(batch: Batch, ids: Tensor) -> Tensor:
    """The batch's attention mask as bool, on the device of ``ids`` (all ones when absent)."""
    mask = batch.get("attention_mask")
    return torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(ids.device).bool()


# ============================================================================ hidden states
@dataclass
class BlockStates:
    """What the criteria read from one pass of calibration texts through the blocks.

    Attributes:
        layers: ``L + 1`` names: ``'embeddings'`` (the input of block 0), then ``'<stack>.<i>'``
            (block ``i``'s output).
        block_influence: ``[L]`` float64, block ``i``'s Block Influence over all non-padding
            tokens.
        last: ``[N, L + 1, H]`` float32 (CPU): each window's last non-padding token.
        mean: ``[N, L + 1, H]`` float32 (CPU): each window's masked mean over its tokens.
        y: ``[N]`` labels of the windows, or ``None``.
        tokens: Non-padding tokens seen.
        stack: The block list's path.
        meta: Settings (default ``{}``).

    Returned by :func:`block_states`; ``n_blocks`` is ``L``, ``features(kind)`` gives the states
    as :class:`~dyngraph.LayerFeatures`.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> class Tiny(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(10, 8)
        ...         self.layers = nn.ModuleList(
        ...             nn.TransformerEncoderLayer(8, 2, 16, batch_first=True) for _ in range(3))
        ...     def forward(self, input_ids, attention_mask=None):
        ...         h = self.emb(input_ids)
        ...         for blk in self.layers:
        ...             h = blk(h)
        ...         return h
        >>> _ = torch.manual_seed(0)
        >>> batch = {'input_ids': torch.randint(0, 10, (4, 6)), 'labels': torch.arange(4) % 2}
        >>> s = dg.prune.block_states(Tiny(), [batch])
        >>> s.n_blocks, s.stack, s.block_influence.shape, tuple(s.mean.shape), s.y.tolist()
        (3, 'layers', torch.Size([3]), (4, 4, 8), [0, 1, 0, 1])
        >>> f = s.features('last')
        >>> f.names, f['layers.2'].shape
        (['embeddings', 'layers.0', 'layers.1', 'layers.2'], torch.Size([4, 8]))
    """

    layers: List[str]
    block_influence: Tensor
    last: Tensor
    mean: Tensor
    y: Optional[Tensor]
    tokens: int
    stack: str
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return len(self.layers) - 1

    def features(self, kind: str = "mean") -> Any:
        """The states as :class:`~dyngraph.LayerFeatures` (``kind``: ``'mean'`` or ``'last'``),
        labelled with :attr:`y` (zeros when there are no labels)."""
        from ..capture._features import LayerFeatures
        x = {"mean": self.mean, "last": self.last}[check_choice(kind, "kind", ("mean", "last"))]
        y = self.y if self.y is not None else torch.zeros(x.shape[0], dtype=torch.long)
        return LayerFeatures({name: x[:, i] for i, name in enumerate(self.layers)}, y)


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


@torch.no_grad()
def block_states(model: nn.Module, batches: Iterable[Batch], *, stack: Optional[str] = None,
                 device: Optional[Union[str, torch.device]] = None,
                 progress: bool = False) -> BlockStates:
    """Runs the batches once and keeps, per block, Block Influence (streamed over tokens) and
    the last-token and masked-mean hidden states of every window.

    Hooks on the blocks read each block's input (block 0) and output (the residual stream, before
    any final norm); padding (``attention_mask == 0``) never enters. Memory: two layers' hidden
    states of one batch on the device, and ``2 × N × (L + 1) × H`` floats on the CPU.

    Args:
        model: The transformer (eval mode during the pass, restored after).
        batches: Dict batches with ``'input_ids'`` (``'attention_mask'``, ``'labels'``
            optional), e.g. from :func:`lm_batches`.
        stack: The block list's path (default: found).
        device: Where to run (default: the model's device).
        progress: A progress bar over batches.

    Returns:
        :class:`BlockStates`.

    Example:
        >>> import torch, torch.nn as nn
        >>> from dyngraph.prune._transformer import block_states
        >>> class Tiny(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(10, 8)
        ...         self.layers = nn.TransformerEncoder(nn.TransformerEncoderLayer(
        ...             8, 2, 16, batch_first=True), 3, enable_nested_tensor=False).layers
        ...     def forward(self, input_ids, attention_mask=None):
        ...         h = self.emb(input_ids)
        ...         for blk in self.layers:
        ...             h = blk(h)
        ...         return h
        >>> _ = torch.manual_seed(0)
        >>> s = block_states(Tiny(), [{'input_ids': torch.randint(0, 10, (4, 6))}])
        >>> s.layers, tuple(s.last.shape), s.tokens
        (['embeddings', 'layers.0', 'layers.1', 'layers.2'], (4, 4, 8), 24)
    """
    check_model(model)
    batches = _check_batches(batches)
    path, container = transformer_blocks(model, stack)
    n_blocks = len(container)
    dev = torch.device(device) if device is not None else model_device(model)
    state: Dict[str, Any] = {}
    bi_sum = torch.zeros(n_blocks, dtype=torch.float64, device=dev)
    lasts: List[Tensor] = []
    means: List[Tensor] = []
    ys: List[Tensor] = []
    tokens = torch.zeros((), dtype=torch.long, device=dev)

    def take(h: Any, where: str) -> Tensor:
        t = first_tensor(h)
        ids = state["ids"]
        if t is None or t.dim() != 3 or tuple(t.shape[:2]) != tuple(ids.shape):
            shape = None if t is None else tuple(t.shape)
            raise ValueError(f"{where} gives {shape}, not hidden states [B, T, H] matching the "
                             f"batch {tuple(ids.shape)} (a batch_first=False torch layer gives "
                             f"[T, B, H])")
        return t

    def record(pos: int, h: Tensor) -> None:
        mask = state["mask"]
        state["last"][pos] = last_token(h, mask).float()
        state["mean"][pos] = _masked_mean(h.float(), mask)
        if pos > 0:
            s, _ = cosine_sum(state["prev"], h, mask)
            bi_sum[pos - 1] += s
        state["prev"] = h

    # the input of block 0 and every block's output, streamed into record() as the blocks run
    layers = ["embeddings"] + [f"{path}.{i}" for i in range(n_blocks)]
    points = dict(zip([f"{path}.0:input"] + layers[1:], layers))

    index = {alias: pos for pos, alias in enumerate(layers)}

    def sink(alias: str, h: Tensor) -> None:
        pos = index[alias]
        record(pos, take(h, f"block {pos - 1} of {path!r}" if pos else
                         f"the input of block 0 of {path!r}"))

    with LayerTaps(model, points, reduce=False, sink=sink) as taps:
        for batch in progress_bar(batches, desc="block states", disable=not progress):
            ids = batch["input_ids"]
            mask = _attention_mask(batch, ids)
            if not bool(mask.any(1).all()):
                raise ValueError("a window in batches has no tokens (attention_mask all 0)")
            state.update(ids=ids, mask=mask.to(dev), last=[None] * (n_blocks + 1),
                         mean=[None] * (n_blocks + 1), prev=None)
            taps.run(_inputs(model, batch, dev))
            tokens += state["mask"].sum()
            lasts.append(torch.stack(state["last"], 1).cpu())
            means.append(torch.stack(state["mean"], 1).cpu())
            if "labels" in batch:
                ys.append(batch["labels"].reshape(-1).cpu().long())
    state.clear()
    n_tok = int(tokens)
    y = torch.cat(ys) if ys and len(ys) == len(batches) else None
    return BlockStates(layers, 1.0 - bi_sum.cpu() / n_tok, torch.cat(lasts), torch.cat(means),
                       y, n_tok, path)


# ============================================================================ criteria
@dataclass
class BlockSelection:
    """The blocks one criterion removes at one budget, and why.

    Attributes:
        criterion: The criterion's name (``'random'`` rows carry their seed in ``params``).
        blocks: Block indices to remove, sorted.
        scores: The per-block (or per-start, for ``'angular'``) scores the criterion read.
        reason: One sentence.
        params: The criterion's settings (default ``{}``).

    Returned by :func:`select_blocks`; ``to_dict()`` gives a JSON-ready copy.

    Example:
        >>> import torch, dyngraph as dg
        >>> g = torch.Generator().manual_seed(0)
        >>> s = dg.prune.BlockStates(['embeddings', 'b.0', 'b.1', 'b.2'],
        ...                          torch.tensor([.3, .05, .2], dtype=torch.float64),
        ...                          torch.randn(6, 4, 4, generator=g),
        ...                          torch.randn(6, 4, 4, generator=g), None, 36, 'b')
        >>> sel = dg.prune.select_blocks(s, 'block_influence', 1)
        >>> sel.criterion, sel.blocks, sel.scores
        ('block_influence', [1], [0.3, 0.05, 0.2])
        >>> sorted(sel.to_dict())
        ['blocks', 'criterion', 'params', 'reason', 'scores']
    """

    criterion: str
    blocks: List[int]
    scores: List[float]
    reason: str
    params: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"criterion": self.criterion, "blocks": list(self.blocks),
                "scores": [float(s) for s in self.scores], "reason": self.reason,
                "params": dict(self.params)}


def _lowest(scores: Tensor, n: int) -> List[int]:
    """Indices of the ``n`` lowest scores (ties to the smaller index), sorted."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:n])


def angular_starts(states: BlockStates, n: int) -> Tensor:
    """``[L − n + 1]``: for each start ``ℓ``, the angular distance between the last-token states
    before block ``ℓ`` and after block ``ℓ + n − 1`` (Gromov et al.'s ``d(h_ℓ, h_{ℓ+n})``)."""
    last = states.last
    return torch.tensor([float(row_angles(last[:, s], last[:, s + n]).mean())
                         for s in range(states.n_blocks - n + 1)], dtype=torch.float64)


def select_blocks(states: BlockStates, criterion: str, n: int, *, seed: int = 0,
                  k: int = 10, metric: str = "euclidean", per_class: Optional[int] = None,
                  repeats: int = 1) -> BlockSelection:
    """The ``n`` blocks one criterion removes.

    Args:
        states: From :func:`block_states` on calibration texts.
        criterion: ``'block_influence'`` (the ``n`` lowest BI), ``'angular'`` (blocks
            ``ℓ*..ℓ*+n−1`` with ``ℓ* = argmin_ℓ d(h_ℓ, h_{ℓ+n})`` at the last token),
            ``'reverse'`` (the last ``n``), ``'random'`` (``torch.randperm`` seeded ``seed``),
            ``'cka'`` (the ``n`` highest linear CKA between a block's input and output, mean
            pooled: :func:`dg.prune.adjacent_cka <dyngraph.prune.adjacent_cka>`) or
            ``'modularity'`` (the ``n`` lowest ``ΔQ = Q_out − Q_in`` of the mean-pooled block
            outputs with the windows' labels, kNN graphs with ``k`` neighbours:
            :func:`dg.prune.redundant_layers <dyngraph.prune.redundant_layers>`).
        n: Blocks to remove (``1 ≤ n < L``).
        seed: Seed of ``'random'`` and of the modularity resampling.
        k, metric: The modularity kNN graphs: ``k`` neighbours, ``'euclidean'`` (default: unit
            weights, defined for any hidden states) or ``'cosine'`` (the CNN reference's
            weights; refused by modularity when a neighbour's cosine is negative, which
            hidden states with a few outlier dimensions often give).
        per_class, repeats: The modularity profile's resampling (default: all windows, once).

    Returns:
        A :class:`BlockSelection`.

    Example:
        >>> import torch
        >>> from dyngraph.prune._transformer import BlockStates, select_blocks
        >>> g = torch.Generator().manual_seed(0)
        >>> s = BlockStates(['embeddings', 'b.0', 'b.1', 'b.2', 'b.3'],
        ...                 torch.tensor([.3, .05, .2, .01], dtype=torch.float64),
        ...                 torch.randn(6, 5, 4, generator=g), torch.randn(6, 5, 4, generator=g),
        ...                 None, 36, 'b')
        >>> select_blocks(s, 'block_influence', 2).blocks, select_blocks(s, 'reverse', 2).blocks
        ([1, 3], [2, 3])
    """
    if not isinstance(states, BlockStates):
        raise TypeError(f"states must be BlockStates (from block_states), got "
                        f"{type(states).__name__}")
    check_choice(criterion, "criterion", CRITERIA)
    L = states.n_blocks
    check_positive_int(n, "n")
    if n >= L:
        raise ValueError(f"n={n} must be smaller than the number of blocks ({L})")
    if criterion == "block_influence":
        bi = states.block_influence
        blocks = _lowest(bi, n)
        return BlockSelection(criterion, blocks, bi.tolist(),
                              f"the {n} lowest Block Influence: " + ", ".join(
                                  f"{i}: {float(bi[i]):.4f}" for i in blocks))
    if criterion == "angular":
        d = angular_starts(states, n)
        s = int(_lowest(d, 1)[0])
        return BlockSelection(criterion, list(range(s, s + n)), d.tolist(),
                              f"d(h_{s}, h_{s + n}) = {float(d[s]):.4f} is the smallest angular "
                              f"distance over {n} consecutive blocks", {"start": s})
    if criterion == "reverse":
        return BlockSelection(criterion, list(range(L - n, L)), [], f"the last {n} blocks")
    if criterion == "random":
        gen = torch.Generator().manual_seed(int(seed))
        blocks = sorted(torch.randperm(L, generator=gen)[:n].tolist())
        return BlockSelection(criterion, blocks, [], f"{n} blocks drawn at random (seed {seed})",
                              {"seed": int(seed)})
    feats = states.features("mean")
    if criterion == "cka":
        cka = adjacent_cka(feats).values.double()
        blocks = _lowest(-cka, n)
        return BlockSelection(criterion, blocks, cka.tolist(),
                              f"the {n} highest CKA(input, output): " + ", ".join(
                                  f"{i}: {float(cka[i]):.4f}" for i in blocks))
    # modularity
    if states.y is None:
        raise ValueError("criterion 'modularity' needs labelled texts (labels= in the study, "
                         "'labels' in the batches)")
    if int(torch.unique(states.y).numel()) < 2:
        raise ValueError("criterion 'modularity' needs at least 2 label classes")
    prof = depth_profile(feats, "modularity", graph=GraphSpec(k=k, metric=metric),
                         per_class=per_class,
                         repeats=repeats, seed=seed, progress=False)["modularity"]
    red = redundant_layers(prof, "delta", n_remove=n)
    pos = {name: i for i, name in enumerate(states.layers)}
    blocks = sorted(pos[name] - 1 for name in red.layers)
    q = prof.values.double()
    return BlockSelection(criterion, blocks, q.tolist(),
                          f"the {n} lowest ΔQ of the block outputs: " + ", ".join(
                              f"{i}: {float(q[i + 1] - q[i]):+.4f}" for i in blocks),
                          {"k": k, "metric": metric, "per_class": per_class,
                           "repeats": repeats})


# ============================================================================ evaluation
def _lm_loss_terms(out: Any, batch: Batch, dev: torch.device) -> Tuple[Tensor, Tensor]:
    """Summed next-token NLL (float64) and the number of predicted tokens of a causal LM's
    output on ``batch``: position ``t`` predicts token ``t + 1`` when both are real tokens."""
    logits = _lm_logits(out)
    ids = batch["input_ids"].to(dev)
    mask = _attention_mask(batch, ids)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(ids.shape):
        raise ValueError(f"a causal LM's logits must be [B, T, V] for input_ids "
                         f"{tuple(ids.shape)}, got {tuple(logits.shape)}")
    pred = logits[:, :-1].float()
    tgt = ids[:, 1:]
    valid = (mask[:, 1:] & mask[:, :-1]).reshape(-1)
    nll = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1),
                                      reduction="none")
    return (nll.double() * valid).sum(), valid.sum()


def _lm_logits(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        return out["logits"]
    t = first_tensor(out)
    if t is None:
        raise ValueError(f"the model's output ({type(out).__name__}) holds no logits")
    return t


@torch.no_grad()
def perplexity(model: nn.Module, batches: Iterable[Batch],
               device: Optional[Union[str, torch.device]] = None) -> Dict[str, float]:
    """Token-weighted perplexity of a causal LM: ``exp(Σ NLL / #tokens)`` over every batch, each
    position predicting the next token, padding left out (eval mode, restored after).

    Args:
        model: Returns logits ``[B, T, V]`` (a tensor, or a dict / ``ModelOutput`` with
            ``'logits'``) for ``model(input_ids=..., attention_mask=...)``.
        batches: Dict batches (:func:`lm_batches`).
        device: Where to run (default: the model's device).

    Returns:
        ``{'perplexity', 'nll' (mean per token, nats), 'tokens'}``.

    Example:
        >>> import math, torch, torch.nn as nn
        >>> from dyngraph.prune._transformer import perplexity
        >>> class Uniform(nn.Module):  # every next token equally likely among 7
        ...     def __init__(self):
        ...         super().__init__(); self.w = nn.Parameter(torch.zeros(()))
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return torch.zeros(*input_ids.shape, 7) + self.w
        >>> b = {'input_ids': torch.tensor([[1, 2, 3], [4, 5, 0]]),
        ...      'attention_mask': torch.tensor([[1, 1, 1], [1, 1, 0]])}
        >>> r = perplexity(Uniform(), [b])
        >>> round(r['perplexity'], 6), r['tokens']
        (7.0, 3)
    """
    check_model(model)
    batches = _check_batches(batches)
    dev = torch.device(device) if device is not None else model_device(model)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    count = torch.zeros((), dtype=torch.long, device=dev)
    with eval_mode(model):
        for b in batches:
            s, c = _lm_loss_terms(model(**_inputs(model, b, dev)), b, dev)
            total += s
            count += c
    n = int(count)
    if n == 0:
        raise ValueError("perplexity: the batches have no token to predict")
    nll = float(total) / n
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": n}


def _accuracy(model: nn.Module, batches: List[Batch], dev: torch.device) -> float:
    if any("labels" not in b for b in batches):
        raise ValueError("task='classify' needs batches with 'labels'")
    return evaluate(model, batches, dev, batch_fn=lambda b: (
        {k: v for k, v in b.items() if k != "labels"}, b["labels"]))


# ============================================================================ healing
def head_modules(model: nn.Module, stack: Optional[str] = None) -> List[str]:
    """Names of the modules after the block list: at every level from the list up to the root,
    the siblings registered after it (Llama ``model.norm`` and ``lm_head``, GPT-2
    ``transformer.ln_f`` and ``lm_head``, BERT ``pooler`` and ``classifier``, ViT
    ``encoder.ln`` and ``heads``), those with parameters."""
    path, _ = transformer_blocks(model, stack)
    out: List[str] = []
    parts = path.split(".")
    for depth in range(len(parts), 0, -1):
        parent_name = ".".join(parts[:depth - 1])
        parent = model.get_submodule(parent_name) if parent_name else model
        names = [n for n, _ in parent.named_children()]
        out += [f"{parent_name}.{n}" if parent_name else n
                for n in names[names.index(parts[depth - 1]) + 1:]
                if any(True for _ in parent.get_submodule(n).parameters())]
    return out


def _trainable_names(model: nn.Module, mode: str, last_k: Optional[int],
                     stack: Optional[str]) -> Tuple[List[str], Dict[str, Any]]:
    named = dict(model.named_parameters())  # shared tensors once, under their first name
    if mode == "all":
        return list(named), {"modules": ["(all)"]}
    path, container = transformer_blocks(model, stack)
    L = len(container)
    k = max(1, L // 4) if last_k is None else check_positive_int(last_k, "last_k")
    if k > L:
        raise ValueError(f"last_k={k} exceeds the {L} blocks of the model")
    modules = [f"{path}.{i}" for i in range(L - k, L)] + head_modules(model, path)
    ids = {id(p) for m in modules for p in model.get_submodule(m).parameters()}
    return [n for n, p in named.items() if id(p) in ids], {"modules": modules, "last_k": k}


def heal(model: nn.Module, batches: Sequence[Batch], *, mode: str = "partial",
         last_k: Optional[int] = None, steps: int = 100, lr: float = 1e-4,
         weight_decay: float = 0.0, grad_clip: Optional[float] = 1.0, task: str = "lm",
         seed: int = 0, device: Optional[Union[str, torch.device]] = None,
         stack: Optional[str] = None, checkpoint: Optional[PathLike] = None,
         checkpoint_every: int = 50, resume: bool = True,
         on_step: Optional[Callable[[int, float], None]] = None,
         progress: bool = False) -> Dict[str, Any]:
    """Fine-tunes a (pruned) transformer in place: AdamW with a per-step cosine schedule.

    ``mode='partial'`` trains only the last ``last_k`` blocks and the head (every module after
    the block list: final norm, ``lm_head`` or classifier; with tied embeddings the head is the
    embedding matrix, so it is trained too): the "partial-layer" fine-tuning of Lu et al.
    ``mode='all'`` trains everything. The batch order is a seeded permutation per epoch of
    ``batches``, so a run resumed from its checkpoint (written atomically every
    ``checkpoint_every`` steps: the trained tensors, the optimizer, schedule and RNG states) ends
    with exactly the weights of an uninterrupted run. ``requires_grad`` flags are restored after.

    Args:
        model: The model (trained in place; left in eval mode).
        batches: Dict batches (:func:`lm_batches`); for ``task='classify'`` with ``'labels'``.
        mode: ``'partial'``, ``'all'`` or ``'none'`` (nothing is trained).
        last_k: Blocks trained by ``'partial'`` (default: a quarter of the blocks, at least 1).
        steps: Optimizer steps (cycling through ``batches``).
        lr, weight_decay, grad_clip: AdamW's peak learning rate and decay; gradient-norm clip.
        task: ``'lm'`` (next-token cross-entropy over real tokens) or ``'classify'``
            (cross-entropy of the logits ``[B, C]`` against ``'labels'``).
        seed: Seeds the batch order and torch's RNG (dropout) at the start of a fresh run.
        device: Where to train (default: the model's device).
        stack: The block list's path (default: found).
        checkpoint: ``.pt`` path of the checkpoint; an existing one is resumed (its settings
            must match) when ``resume``.
        checkpoint_every: Steps between checkpoints (and after the last step).
        on_step: ``callback(step, loss)`` after every step.
        progress: A progress bar over steps.

    Returns:
        ``{'loss': [...] per step, 'trainable_params', 'modules', 'steps', 'resumed_from',
        'seconds'}``.

    Example:
        >>> import torch, torch.nn as nn
        >>> from dyngraph.prune._transformer import heal, lm_batches, perplexity
        >>> class LM(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = nn.Embedding(8, 16)
        ...         self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))
        ...         self.head = nn.Linear(16, 8)
        ...     def forward(self, input_ids, attention_mask=None):
        ...         h = self.emb(input_ids)
        ...         for blk in self.layers:
        ...             h = h + torch.relu(blk(h))
        ...         return self.head(h)
        >>> _ = torch.manual_seed(0)
        >>> lm, data = LM(), lm_batches(lambda s: [int(c) for c in s], ['01234567' * 4],
        ...                             max_length=8)
        >>> before = perplexity(lm, data)['perplexity']
        >>> h = heal(lm, data, steps=30, lr=1e-2, last_k=1, stack='layers')
        >>> h['modules'], perplexity(lm, data)['perplexity'] < before / 2
        (['layers.1', 'head'], True)
    """
    check_model(model)
    check_choice(mode, "mode", HEAL_MODES)
    check_choice(task, "task", TASKS)
    batches = _check_batches(batches)
    check_positive_int(steps, "steps")
    check_positive_int(checkpoint_every, "checkpoint_every")
    check_rates(grad_clip, lr=lr, weight_decay=weight_decay)
    if mode == "none":
        return {"loss": [], "trainable_params": 0, "modules": [], "steps": 0,
                "resumed_from": 0, "seconds": 0.0}
    dev = torch.device(device) if device is not None else model_device(model)
    model.to(dev)
    names, info = _trainable_names(model, mode, last_k, stack)
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    train_set = set(names)
    config = {"mode": mode, "last_k": info.get("last_k"), "steps": steps, "lr": float(lr),
              "weight_decay": float(weight_decay), "grad_clip": grad_clip, "task": task,
              "seed": seed, "batches": len(batches), "trainable": names}
    t0 = time.perf_counter()
    try:
        for n, p in params.items():
            p.requires_grad_(n in train_set)
        trained = [params[n] for n in names]
        opt = torch.optim.AdamW(trained, lr=float(lr), weight_decay=float(weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        hist: Dict[str, Any] = {"loss": []}
        start = 0
        ckpt = Path(checkpoint) if checkpoint is not None else None
        if ckpt is not None and resume and ckpt.exists():
            not_ours = f"checkpoint {str(ckpt)!r} is not a dyngraph healing checkpoint"
            try:
                saved = torch.load(ckpt, map_location=dev, weights_only=True)
            except Exception as exc:
                raise ValueError(f"{not_ours} ({type(exc).__name__}); delete it or pass "
                                 f"resume=False") from exc
            if not isinstance(saved, dict) or saved.get("format") != _HEAL_FORMAT:
                raise ValueError(f"{not_ours}; delete it or pass resume=False")
            if saved["config"] != config:
                diff = {k: (saved["config"].get(k), v) for k, v in config.items()
                        if saved["config"].get(k) != v and k != "trainable"}
                raise ValueError(f"checkpoint {str(ckpt)!r} was written with other settings "
                                 f"(saved, now): {diff or 'the trained tensors differ'}; "
                                 f"delete it or pass resume=False")
            with torch.no_grad():
                for n in names:
                    params[n].copy_(saved["trained"][n])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            hist = saved["history"]
            start = int(saved["step"])
            torch.set_rng_state(saved["rng"])
            if dev.type == "cuda" and saved.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(saved["cuda_rng"], dev)
        elif seed is not None:
            torch.manual_seed(int(seed))
        nb = len(batches)
        model.train()
        bar = progress_bar(range(start, steps), desc=f"heal ({mode})", total=steps - start,
                           disable=not progress)
        perm: Optional[List[int]] = None
        for step in bar:
            epoch, pos = divmod(step, nb)
            if pos == 0 or perm is None:
                perm = torch.randperm(nb, generator=torch.Generator().manual_seed(
                    int(seed) * 1_000_003 + epoch)).tolist()
            b = batches[perm[pos]]
            out = model(**_inputs(model, b, dev))
            if task == "lm":
                s, c = _lm_loss_terms(out, b, dev)
                loss = (s / c.clamp_min(1)).float()
            else:
                loss = nn.functional.cross_entropy(logits_of(out), b["labels"].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(trained, grad_clip)
            opt.step()
            sched.step()
            lv = float(loss.detach())
            if not math.isfinite(lv):
                raise ValueError(f"the healing loss became {lv} at step {step + 1}; lower lr "
                                 f"(now {lr})")
            hist["loss"].append(lv)
            if on_step is not None:
                on_step(step + 1, lv)
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                atomic_torch_save({
                    "format": _HEAL_FORMAT, "step": step + 1, "config": config,
                    "trained": {n: params[n].detach() for n in names},
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "history": hist, "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
                    ckpt)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.eval()
    return {"loss": hist["loss"], "trainable_params": sum(params[n].numel() for n in names),
            "modules": info["modules"], "steps": steps, "resumed_from": start,
            "seconds": round(time.perf_counter() - t0, 2)}


_heal_model = heal  # the study's ``heal`` argument names the mode


# ============================================================================ the study
def _load(model: Any, tokenizer: Any, task: str, device: Optional[str], dtype: Any
          ) -> Tuple[nn.Module, Any, Dict[str, Any]]:
    """A model (and its tokenizer) from a local Hugging Face folder, offline."""
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise ValueError("tokenizer is required when model is an nn.Module (pass the "
                             "Hugging Face tokenizer, or any str -> list[int] callable)")
        return model, tokenizer, {"source": type(model).__name__}
    if not isinstance(model, (str, Path)):
        raise TypeError(f"model must be an nn.Module or a local model folder, got "
                        f"{type(model).__name__}")
    folder = Path(model)
    if not (folder / "config.json").is_file():
        raise ValueError(f"model={str(model)!r} is not a Hugging Face model folder (no "
                         f"config.json there)")
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - the hf extra is installed in CI
        raise ImportError("loading a model folder needs transformers: pip install "
                          "dyngraph[hf]") from exc
    auto = (transformers.AutoModelForCausalLM if task == "lm"
            else transformers.AutoModelForSequenceClassification)
    kw: Dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        major = int(transformers.__version__.split(".")[0])
        kw["dtype" if major >= 5 else "torch_dtype"] = dtype
    net: nn.Module = auto.from_pretrained(str(folder), **kw)
    if device is not None:
        net = net.to(device)
    if tokenizer is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder),
                                                               local_files_only=True)
    return net, tokenizer, {"source": str(folder), "class": type(net).__name__}


def _n_remove(fraction: Any, L: int) -> int:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
            not 0 < fraction < 1:
        raise ValueError(f"fractions must be numbers in (0, 1), got {fraction!r}")
    return min(L - 1, max(1, int(round(fraction * L))))


def _flops(model: nn.Module, x: Tensor) -> int:
    total = count_flops(model, x)
    return int(total[0] if isinstance(total, tuple) else total)


def _mean_std(xs: Sequence[float]) -> Dict[str, Any]:
    xs = [float(v) for v in xs]
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs)}


def transformer_prune_study(
        model: Union[nn.Module, PathLike], tokenizer: Any, texts: Sequence[str], out_dir: PathLike,
        *, labels: Optional[Sequence[int]] = None, eval_texts: Optional[Sequence[str]] = None,
        eval_labels: Optional[Sequence[int]] = None, heal_texts: Optional[Sequence[str]] = None,
        heal_labels: Optional[Sequence[int]] = None, criteria: Sequence[str] = CRITERIA,
        fractions: Sequence[float] = (0.25, 0.5), seeds: Sequence[int] = (0, 1, 2),
        heal: str = "partial", heal_last_k: Optional[int] = None, heal_steps: int = 100,
        heal_lr: float = 1e-4, control: bool = True, task: str = "lm", max_length: int = 128,
        batch_size: int = 8, max_windows: Optional[int] = None, stack: Optional[str] = None,
        modularity_k: int = 10, modularity_metric: str = "euclidean", latency: bool = True,
        device: Optional[str] = None, dtype: Any = None, seed: int = 0, progress: bool = False,
        log: Optional[Callable[..., Any]] = print) -> Dict[str, Any]:
    """Every criterion at every budget, pruned, healed the same way and evaluated, in one report.

    For each fraction ``f`` the ``n = round(f · L)`` blocks each criterion picks (from one
    pass of ``texts`` through the model, :func:`block_states`) are removed
    (:func:`remove_blocks`), the model is evaluated straight away and after healing
    (:func:`heal`, the same steps, batches and seed for every row), and its parameters, FLOPs
    and latency are recorded. Two criteria that pick the same blocks share one row's numbers
    (``same_as``). ``'random'`` runs once per seed; the table adds its mean ± std. With
    ``control`` the unpruned model is healed the same way (what healing alone buys).

    Every finished row is written atomically to ``<out_dir>/transformer_prune.json`` (and the
    table to ``transformer_prune.md``); a rerun with the same settings skips finished rows and
    resumes a row interrupted during healing from its checkpoint. A folder holding a study with
    other settings is an error.

    Args:
        model: An ``nn.Module`` (not modified), or a local Hugging Face model folder loaded offline
            (``AutoModelForCausalLM``; ``AutoModelForSequenceClassification`` for
            ``task='classify'``).
        tokenizer: A Hugging Face tokenizer or a ``str -> list[int]`` callable (``None`` with a
            folder: the folder's tokenizer).
        texts: Calibration texts the criteria read.
        out_dir: Where the report, table and healing checkpoints go.
        labels: One integer label per text (needed by ``'modularity'``; by ``task='classify'``).
        eval_texts, eval_labels: Held-out evaluation texts (default: ``texts``; say so when
            reporting).
        heal_texts, heal_labels: Healing texts (default: ``texts``).
        criteria: Among ``'block_influence'``, ``'angular'``, ``'reverse'``, ``'random'``,
            ``'cka'``, ``'modularity'`` (dropped, with a note, when no labels are given).
        fractions: Fractions of the blocks to remove.
        seeds: Seeds of the ``'random'`` rows.
        heal, heal_last_k, heal_steps, heal_lr: :func:`heal`'s ``mode``, ``last_k``, ``steps``
            and ``lr`` (``heal='none'``: evaluate straight after pruning only).
        control: Also heal the unpruned model.
        task: ``'lm'`` (perplexity) or ``'classify'`` (accuracy).
        max_length, batch_size, max_windows: Windows of tokens (:func:`lm_batches`).
        stack: The block list's path (default: found).
        modularity_k, modularity_metric: The modularity kNN graphs (``k`` and ``metric`` of
            :func:`select_blocks`).
        latency: Time a forward pass of ``batch_size`` full windows of every model (interleaved
            with the unpruned model's, the minimum of the rounds).
        device, dtype: Where to run; the dtype a model folder is loaded in.
        seed: Seed of healing and of the modularity resampling.
        progress: Progress bars. log: ``print``-like function for status lines.

    Returns:
        The report dict: ``config``, ``baseline``, ``selections``, ``rows`` (``{name: row}``),
        ``summary`` (per fraction: the random mean ± std, the best criterion, how each did
        against the random mean and reverse order) and the markdown ``table``.

    Example:
        >>> import tempfile, torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from dyngraph.prune._transformer import transformer_prune_study
        >>> _ = torch.manual_seed(0)
        >>> lm = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=4,
        ...                                 n_head=2, bos_token_id=0, eos_token_id=0))
        >>> tok = lambda s: [ord(c) % 64 for c in s]
        >>> r = transformer_prune_study(lm, tok, ['the cat sat on the mat'] * 4,
        ...                             tempfile.mkdtemp(), criteria=['reverse', 'random'],
        ...                             fractions=[0.5], seeds=[0, 1], heal_steps=2,
        ...                             max_length=16, latency=False, control=False, log=None)
        >>> sorted(r['rows']), r['rows']['reverse@0.5']['blocks']
        (['random0@0.5', 'random1@0.5', 'reverse@0.5'], [2, 3])
    """
    say = log or (lambda *a, **kw: None)
    check_choice(task, "task", TASKS)
    check_choice(heal, "heal", HEAL_MODES)
    criteria = [criteria] if isinstance(criteria, str) else list(criteria)
    for c in criteria:
        check_choice(c, "criteria", CRITERIA)
    if not criteria:
        raise ValueError("criteria is empty")
    fractions = list(fractions)
    if not fractions:
        raise ValueError("fractions is empty")
    seeds = [int(s) for s in seeds]
    if "random" in criteria and not seeds:
        raise ValueError("criterion 'random' needs at least one seed in seeds")
    net, tokenizer, source = _load(model, tokenizer, task, device, dtype)
    dev = torch.device(device) if device is not None else model_device(net)
    net = net.to(dev).eval()
    path, container = transformer_blocks(net, stack)
    L = len(container)
    budgets = {f: _n_remove(f, L) for f in fractions}
    notes: List[str] = []
    if "modularity" in criteria and labels is None:
        criteria.remove("modularity")
        notes.append("modularity left out: the texts have no labels")
    if task == "classify" and labels is None:
        raise ValueError("task='classify' needs labels")
    if eval_texts is None:
        notes.append("evaluated on the calibration texts (no eval_texts given)")
    batch_kw: Dict[str, Any] = dict(max_length=max_length, batch_size=batch_size,
                                    max_windows=max_windows, chunk=task == "lm",
                                    min_tokens=2 if task == "lm" else 1)
    calib, evals, heals = [
        lm_batches(tokenizer, texts if t is None else t, labels=labels if t is None else lab,
                   **batch_kw)
        for t, lab in ((texts, labels), (eval_texts, eval_labels), (heal_texts, heal_labels))]

    def evaluate_model(m: nn.Module) -> Dict[str, Any]:
        if task == "lm":
            return perplexity(m, evals, dev)
        return {"accuracy": _accuracy(m, evals, dev)}

    metric = "perplexity" if task == "lm" else "accuracy"
    fl_input = calib[0]["input_ids"][:1].to(dev)  # FLOPs of one window
    lat_input = calib[0]["input_ids"].to(dev)  # latency of one batch
    config = {"format": FORMAT, "source": source.get("source"), "stack": path, "blocks": L,
              "criteria": criteria, "fractions": fractions, "budgets": list(budgets.values()),
              "seeds": seeds, "heal": heal, "heal_last_k": heal_last_k, "heal_steps": heal_steps,
              "heal_lr": heal_lr, "control": control, "task": task, "max_length": max_length,
              "batch_size": batch_size, "max_windows": max_windows, "modularity_k": modularity_k,
              "modularity_metric": modularity_metric, "seed": seed,
              "windows": {key: sum(len(b["input_ids"]) for b in bs) for key, bs in
                          (("calibration", calib), ("eval", evals), ("heal", heals))}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rpath = out / REPORT
    report: Dict[str, Any] = {}
    if rpath.exists():
        import json
        report = json.loads(rpath.read_text(encoding="utf-8"))
        if report.get("config") != config:
            raise ValueError(f"{str(out)!r} holds a study with other settings (saved, now): "
                             f"{settings_changed(report.get('config', {}), config)}; use "
                             f"another folder or delete {rpath}")
        say(f"resuming {rpath}: {len(report.get('rows', {}))} rows done")
    report.setdefault("config", config)
    report["notes"] = notes
    report.setdefault("rows", {})

    if "baseline" not in report:
        t0 = time.perf_counter()
        ev = evaluate_model(net)
        report["baseline"] = {**ev, "params": count_params(net),
                              "flops": _flops(net, fl_input), "blocks": L,
                              "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(rpath, report)
    base = report["baseline"]
    say(f"baseline: {L} blocks, {metric} {base[metric]:.4f}, params {base['params']:,}")

    if "selections" not in report:
        t0 = time.perf_counter()
        states = block_states(net, calib, stack=path, device=dev, progress=progress)
        sels: Dict[str, Any] = {}
        for f, n in budgets.items():
            for c in criteria:
                for s in (seeds if c == "random" else [seed]):
                    name = (f"random{s}" if c == "random" else c) + f"@{f:g}"
                    sels[name] = {"fraction": f, "n": n,
                                  **select_blocks(states, c, n, seed=s, k=modularity_k,
                                                  metric=modularity_metric).to_dict()}
        report["selections"] = sels
        report["block_influence"] = states.block_influence.tolist()
        report["states_seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(rpath, report)
    for name, s in report["selections"].items():
        say(f"{name}: remove {s['blocks']} ({s['reason']})")

    def run_row(name: str, blocks: List[int], fraction: float, criterion: str) -> None:
        rows = report["rows"]
        if name in rows:
            return
        same = next((k2 for k2, r in rows.items() if r["blocks"] == blocks
                     and "same_as" not in r), None)
        if same is not None:
            rows[name] = {**rows[same], "criterion": criterion, "same_as": same}
            atomic_write_json(rpath, report)
            say(f"{name}: the blocks of {same}")
            return
        t0 = time.perf_counter()
        pruned = remove_blocks(net, blocks, stack=path) if blocks else copy.deepcopy(net)
        ev0 = evaluate_model(pruned)
        ckpt = file_in(out / "checkpoints", name, ".pt", "a selection of the saved report")
        hist = _heal_model(pruned, heals, mode=heal, last_k=heal_last_k, steps=heal_steps,
                           lr=heal_lr, task=task, seed=seed, device=dev, stack=path,
                           checkpoint=ckpt, progress=progress)
        ev1 = evaluate_model(pruned)
        row: Dict[str, Any] = {
            "criterion": criterion, "fraction": fraction, "blocks": blocks,
            "n_removed": len(blocks), f"{metric}_pruned": ev0[metric],
            f"{metric}_healed": ev1[metric], "params": count_params(pruned),
            "flops": _flops(pruned, fl_input)}
        row["params_reduction"] = 1 - row["params"] / base["params"]
        row["flops_reduction"] = 1 - row["flops"] / base["flops"] if base["flops"] else 0.0
        if latency:  # the minimum forward time (ms) over 3 interleaved rounds of 3 runs
            t = {"base": float("inf"), "pruned": float("inf")}
            for _ in range(3):
                for key, m in (("base", net), ("pruned", pruned)):
                    t[key] = min(t[key], measure_latency(m, lat_input, repeats=3,
                                                         warmup=1)["min_ms"])
            row["latency_ms"], row["baseline_latency_ms"] = t["pruned"], t["base"]
            row["speedup"] = t["base"] / t["pruned"]
        row["heal"] = {"trainable_params": hist["trainable_params"], "modules": hist["modules"],
                       "loss_first": hist["loss"][0] if hist["loss"] else None,
                       "loss_last": hist["loss"][-1] if hist["loss"] else None,
                       "resumed_from": hist["resumed_from"], "seconds": hist["seconds"]}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows[name] = row
        atomic_write_json(rpath, report)
        if ckpt.exists():
            ckpt.unlink()  # dyngraph wrote it: the row it served is saved
        say(f"{name}: removed {blocks}, {metric} {ev0[metric]:.3f} → healed "
            f"{ev1[metric]:.3f} ({row['seconds']:.0f} s)")
        del pruned

    if control and heal != "none":
        run_row("control", [], 0.0, "none (unpruned, healed)")
    for name, s in report["selections"].items():
        run_row(name, s["blocks"], s["fraction"], s["criterion"])
    report["summary"] = summarize(report)
    report["table"] = format_table(report)
    atomic_write_json(rpath, report)
    atomic_write_text(out / TABLE, report["table"] + "\n")
    return report


def summarize(report: Dict[str, Any]) -> Dict[str, Any]:
    """Per fraction: the random rows' mean ± std, the best criterion after healing and how each
    criterion compares with the random mean and with reverse order."""
    cfg = report["config"]
    metric = "perplexity" if cfg["task"] == "lm" else "accuracy"
    better = (lambda a, b: a < b) if metric == "perplexity" else (lambda a, b: a > b)
    out: Dict[str, Any] = {"metric": metric, "lower_is_better": metric == "perplexity"}
    for f in cfg["fractions"]:
        rows = {k: r for k, r in report["rows"].items() if r.get("fraction") == f}
        if not rows:
            continue
        s: Dict[str, Any] = {}
        rand = [r for k, r in rows.items() if r["criterion"] == "random"]
        if rand:
            for stage in ("pruned", "healed"):
                s[f"random_{stage}"] = _mean_std([r[f"{metric}_{stage}"] for r in rand])
        named = {r["criterion"]: r for r in rows.values() if r["criterion"] != "random"}
        for stage in ("pruned", "healed"):
            key = f"{metric}_{stage}"
            cand = {c: r[key] for c, r in named.items()}
            if rand:
                cand["random (mean)"] = s[f"random_{stage}"]["mean"]
            # the first of the best (min and max keep the first of equal values, as better does)
            pick = min if metric == "perplexity" else max
            s[f"best_{stage}"] = pick(cand, key=cand.__getitem__, default=None)
            if "reverse" in named:
                s[f"beats_reverse_{stage}"] = {c: better(r[key], named["reverse"][key])
                                               for c, r in named.items() if c != "reverse"}
            if rand:
                s[f"beats_random_mean_{stage}"] = {c: better(r[key], s[f"random_{stage}"]["mean"])
                                                   for c, r in named.items()}
        out[f"{f:g}"] = s
    return out


def format_table(report: Dict[str, Any]) -> str:
    """The markdown table of a :func:`transformer_prune_study` report."""
    cfg = report["config"]
    metric = "perplexity" if cfg["task"] == "lm" else "accuracy"
    short = "ppl" if metric == "perplexity" else "acc"
    base = report["baseline"]
    lat = any("latency_ms" in r for r in report["rows"].values())
    head = (f"| criterion | removed | blocks removed | {short} pruned | {short} healed | params | "
            f"params ↓ | FLOPs | FLOPs ↓ |" + (" latency ms | speedup |" if lat else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def fmt(v: Any, digits: int = 2) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    def line(name: str, r: Dict[str, Any], removed: str, pr: str, he: str) -> str:
        cells = [name, removed, str(r.get("blocks", "—")), pr, he, f"{r['params']:,}",
                 f"{100 * r.get('params_reduction', 0):.1f}%", f"{r['flops']:,}",
                 f"{100 * r.get('flops_reduction', 0):.1f}%"]
        if lat:
            cells += [fmt(r.get("latency_ms")), fmt(r.get("speedup"))]
        return "| " + " | ".join(cells) + " |"

    lines.append(line("unpruned", {**base, "blocks": []}, f"0/{cfg['blocks']}", "—",
                      fmt(base[metric], 3)))
    rows = report["rows"]
    if "control" in rows:
        r = rows["control"]
        lines.append(line("unpruned, healed (control)", r, f"0/{cfg['blocks']}",
                          fmt(r[f"{metric}_pruned"], 3), fmt(r[f"{metric}_healed"], 3)))
    for f, n in zip(cfg["fractions"], cfg["budgets"]):
        rand = []
        for name, r in rows.items():
            if r.get("fraction") != f:
                continue
            label = name.rsplit("@", 1)[0] + (f" (= {r['same_as'].rsplit('@', 1)[0]})"
                                              if "same_as" in r else "")
            lines.append(line(label, r, f"{n}/{cfg['blocks']}", fmt(r[f"{metric}_pruned"], 3),
                              fmt(r[f"{metric}_healed"], 3)))
            if r["criterion"] == "random":
                rand.append(r)
        if len(rand) > 1:
            p = _mean_std([r[f"{metric}_pruned"] for r in rand])
            h = _mean_std([r[f"{metric}_healed"] for r in rand])
            keys = ("params", "flops", "params_reduction", "flops_reduction") + (
                ("latency_ms", "speedup") if lat else ())
            avg = {key: statistics.fmean(r[key] for r in rand) for key in keys}
            avg["params"], avg["flops"] = round(avg["params"]), round(avg["flops"])
            lines.append(line(f"random, mean ± std ({len(rand)} seeds)", {**avg, "blocks": "—"},
                              f"{n}/{cfg['blocks']}", f"{p['mean']:.3f} ± {p['std']:.3f}",
                              f"{h['mean']:.3f} ± {h['std']:.3f}"))
    return "\n".join(lines)
