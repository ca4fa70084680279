"""Layer surgery: remove named layers or blocks from any ``nn.Module``, keeping every other weight.

How a layer is removed depends only on where it sits, never on the model's class, so a user's own
ResNet-style network works as well as torchvision's:

* in an ``nn.Sequential`` (a ResNet stage, a VGG ``features`` stack, an MLP): the entry is deleted,
  and a conv or linear layer takes the norm, activation and dropout modules that directly follow
  it along (a "unit"); all-numeric keys are renumbered, so a pruned CIFAR ResNet56 has the same
  ``state_dict`` layout as a ResNet built with fewer blocks;
* anywhere else (an attribute used in ``forward``, an ``nn.ModuleList`` entry): the module is
  replaced by ``nn.Identity``.

A unit whose output shape differs from its input shape cannot simply go. It is replaced by a
shape-matching projection: the block's own shortcut when it has one (``downsample``,
``shortcut``, ...: its weights are inherited), otherwise a new 1×1 convolution (+ BN) or linear
layer initialised as a (strided, zero-padded) identity. Anything else raises ``ValueError``.
Shapes come from one forward pass on ``example_input`` (guessed from the first layer when not
given), which also checks that the pruned model still runs and returns the same output shape.
"""
from __future__ import annotations

import contextlib
import copy
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor, nn

from .._validate import check_choice, check_flag, check_model, check_positive_int, model_device
from ..capture._layers import ACTIVATIONS, CONVS, PASSTHROUGH
from ..capture._taps import LayerTaps, call_model, first_tensor

WEIGHTED = CONVS + (nn.Linear,)
FOLLOWERS = ACTIVATIONS + PASSTHROUGH
SHORTCUT_ATTRS = ("downsample", "shortcut", "skip", "skip_connection", "proj", "projection",
                  "identity_map")
PROJECTIONS = ("auto", "shortcut", "new", "none")
Shape = Tuple[int, ...]
ExampleInput = Union[Tensor, Tuple[Any, ...], List[Any]]


# ---------------------------------------------------------------------------- shapes
@dataclass
class CallInfo:
    """What one forward pass saw of one module: its input and output shapes (without the batch
    dimension; the last call's), the order of its first call (the root is 0), its calls."""

    order: int
    in_shape: Optional[Shape]
    out_shape: Optional[Shape] = None
    calls: int = 1


def check_surgery_model(model) -> None:
    check_model(model)
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"model is a TorchScript module ({type(model).__name__}); layer surgery "
                        f"needs the Python nn.Module (load the model with torch.load, not "
                        f"torch.jit.load)")




def check_example_input(example_input: Any, name: str = "example_input") -> None:
    """An input batch: a tensor, a tuple/list of positional arguments or a dict of keyword
    arguments (anything else is a ``TypeError`` naming ``name``)."""
    if not isinstance(example_input, (Tensor, tuple, list, Mapping)):
        raise TypeError(f"{name} must be a tensor (or a tuple of the model's positional "
                        f"arguments, or a dict of its keyword arguments), got "
                        f"{type(example_input).__name__}: {example_input!r}"[:240])


def input_error(model: nn.Module, inputs: Any, exc: BaseException,
                name: str = "example_input") -> ValueError:
    """The error for an input batch that does not run through ``model``."""
    why = (str(exc).splitlines() or [""])[0][:200]
    t = first_tensor(inputs)
    described = (f"of shape {list(inputs.shape)}" if isinstance(inputs, Tensor) else
                 f"({type(inputs).__name__}, first tensor of shape "
                 f"{None if t is None else list(t.shape)})")
    return ValueError(f"{name} {described} does not run through "
                      f"{type(model).__name__}: {type(exc).__name__}: {why}; pass an input the "
                      f"model accepts")


def run_example(model: nn.Module, inputs: ExampleInput, name: str = "example_input") -> Any:
    """:func:`eval_forward` on a user's input batch: a batch the model rejects is a
    ``ValueError`` naming ``name`` and the input's shape (not an error from deep inside torch)."""
    check_example_input(inputs, name)
    try:
        return eval_forward(model, inputs)
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
        raise input_error(model, inputs, exc, name) from exc


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Runs the block with ``model`` in eval mode; its training mode is restored after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def eval_forward(model: nn.Module, inputs: ExampleInput) -> Any:
    """``model(inputs)`` in eval mode under ``torch.no_grad()``; the training mode is restored."""
    with eval_mode(model), torch.no_grad():
        return call_model(model, inputs)


def probe(model: nn.Module, example_input: ExampleInput) -> Dict[str, CallInfo]:
    """One eval-mode forward pass through :class:`dg.LayerTaps <dyngraph.LayerTaps>` on every
    module (output and ``'name:input'``), recording per module the input/output shapes (batch
    dimension dropped; for a module called several times, its last call), the order in which
    the modules were first called, and the number of calls.

    Args:
        model: Any ``nn.Module``; training mode is restored and hooks removed afterwards.
        example_input: A tensor (or a tuple of positional arguments) the model accepts.

    Returns:
        ``{module name: CallInfo}``; the root module is ``''`` (order 0). Modules that did not run
        are absent.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> info = dg.prune.probe(m, torch.zeros(3, 4))
        >>> info['0'].in_shape, info['0'].out_shape, info[''].out_shape, info['2'].order
        ((4,), (8,), (2,), 3)
    """
    check_surgery_model(model)
    check_example_input(example_input)
    points = [p for n, _ in model.named_modules() if n for p in (f"{n}:input", n)]

    def shape(t: Optional[Tensor]) -> Optional[Shape]:
        return tuple(t.shape[1:]) if t is not None else None

    def root(out: Any) -> Dict[str, CallInfo]:
        return {"": CallInfo(0, shape(first_tensor(example_input)), shape(first_tensor(out)))}

    if not points:  # a leaf module: the root is all there is
        return root(run_example(model, example_input))
    # grad=True only means "no copies": shapes are all that is read, under no_grad.
    with LayerTaps(model, points, reduce=False, allow_repeat=True, grad=True) as taps, \
            torch.no_grad():
        try:
            out = call_model(model, example_input)
        except (RuntimeError, TypeError, IndexError, AssertionError) as exc:
            raise input_error(model, example_input, exc) from exc
    seen = root(out)
    for alias in taps.order:
        if alias.endswith(":input"):
            name = alias[:-len(":input")]
            if name in seen:
                seen[name].calls += 1
            else:
                seen[name] = CallInfo(len(seen), shape(taps.outputs[alias]),
                                      shape(taps.outputs[name]))
    return seen


def infer_example_input(model: nn.Module, batch: int = 2) -> Tensor:
    """A zero input the model accepts, guessed from its first conv or linear layer.

    Tries common sizes (1-D: 40, 64, 128, ...; 2-D: 32, 64, 8, 28, 224, ...) until a forward pass
    runs. Pass ``example_input`` explicitly to the pruning functions when this guess fails.

    Example:
        >>> import dyngraph as dg
        >>> tuple(dg.prune.infer_example_input(dg.zoo.DigitsCNN()).shape)
        (2, 1, 8, 8)
    """
    check_surgery_model(model)
    check_positive_int(batch, "batch")
    first = next((m for m in model.modules() if isinstance(m, WEIGHTED)), None)
    if first is None:
        raise ValueError(f"cannot guess an input for {type(model).__name__} (no conv or linear "
                         f"layer); pass example_input=")
    candidates: List[Shape]
    if isinstance(first, nn.Linear):
        candidates = [(first.in_features,)] + [(1, s, s) for s in (8, 28, 32)] + \
                     [(1, first.in_features)]
    else:  # sizes per number of spatial dimensions (a conv subclass is tried as 2-D)
        sizes = {1: (40, 64, 128, 32, 256, 16), 2: (32, 64, 8, 28, 224, 16, 96, 128),
                 3: (16, 32, 8)}
        nd = CONVS.index(type(first)) + 1 if type(first) in CONVS else 2
        candidates = [(first.in_channels,) + (s,) * nd for s in sizes[nd]]
    device = model_device(model)
    errors = []
    for shape in candidates:
        x = torch.zeros((batch,) + shape, device=device)
        try:
            eval_forward(model, x)
            return x
        except Exception as exc:
            errors.append(f"{shape}: {type(exc).__name__}")
    raise ValueError(f"cannot guess an input for {type(model).__name__}: none of the tried "
                     f"shapes ran ({'; '.join(errors[:4])}...); pass example_input=")


# ---------------------------------------------------------------------------- units
@dataclass
class Unit:
    """What removing one requested layer touches.

    Attributes:
        request: The name as given.
        module: The main module (a conv/linear layer or a block).
        members: Sibling names removed together (the module and its trailing norm/activation).
        parent: Name of the parent container (``''`` for the root).
        in_shape, out_shape: Unit input and output shapes without the batch dimension.
        shape_change: Whether they differ.
        stage: The stage it belongs to: ``'<parent>#<segment>'``, where a new segment starts at
            every sibling that changes the shape.
        protected: Why it must never be removed (stem, classifier), or ``None``.
    """

    request: str
    module: str
    members: List[str]
    parent: str
    in_shape: Optional[Shape]
    out_shape: Optional[Shape]
    stage: str = ""
    protected: Optional[str] = None
    calls: int = 1

    @property
    def shape_change(self) -> bool:
        return self.in_shape != self.out_shape


def split_name(name: str) -> Tuple[str, str]:
    parent, _, attr = name.rpartition(".")
    return parent, attr


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _is_weighted(mod: nn.Module) -> bool:
    """A layer that counts as a unit: conv/linear, or a container with parameters (a block)."""
    if isinstance(mod, WEIGHTED):
        return True
    if isinstance(mod, FOLLOWERS):
        return False
    return next(mod.children(), None) is not None and any(True for _ in mod.parameters())


def _unknown(name: str, modules: Dict[str, nn.Module]) -> ValueError:
    close = [n for n in modules if n and (name in n or n in name)][:5]
    hint = f" Did you mean one of {close}?" if close else ""
    return ValueError(f"unknown layer {name!r} in layers.{hint} See dg.list_layers(model) for "
                      f"the {len(modules) - 1} available names.")


def _segments(parent: nn.Module, parent_name: str,
              shapes: Dict[str, CallInfo]) -> List[Tuple[str, nn.Module, str]]:
    """``(full name, module, stage)`` of the children in call order (a Sequential's in its own
    order), where the stage ``'<parent>#<segment>'`` advances at every child that changes the
    shape."""
    kids = [(_join(parent_name, k), m) for k, m in parent.named_children()]
    if not isinstance(parent, nn.Sequential):
        kids = sorted(((f, m) for f, m in kids if f in shapes), key=lambda t: shapes[t[0]].order)
    out, seg = [], 0
    for full, m in kids:
        info = shapes.get(full)
        if info is not None and info.in_shape != info.out_shape:
            seg += 1
        out.append((full, m, f"{parent_name}#{seg}"))
    return out


def stage_members(parent: nn.Module, parent_name: str, stage: str,
                   shapes: Dict[str, CallInfo]) -> List[str]:
    return [full for full, m, st in _segments(parent, parent_name, shapes)
            if full in shapes and _is_weighted(m) and st == stage]


def _stem_and_classifier(model: nn.Module, shapes: Dict[str, CallInfo]) -> Tuple[str, str]:
    ran = sorted((info.order, n) for n, m in model.named_modules()
                 if isinstance(m, WEIGHTED) and (info := shapes.get(n)) is not None)
    return (ran[0][1], ran[-1][1]) if ran else ("", "")


def resolve_units(model: nn.Module, layers: Sequence[str], shapes: Dict[str, CallInfo],
                  expand: bool = True) -> List[Unit]:
    """Maps requested names to the units that removing them touches (see :class:`Unit`).

    A parameter-free activation/norm point (e.g. a post-activation ReLU from
    ``default_layers(point='post')``) maps to the conv or linear layer it follows.
    """
    modules = dict(model.named_modules())
    stem, clf = _stem_and_classifier(model, shapes)
    units = []
    for req in layers:
        name = req.partition(":")[0]
        if name == "" or name not in modules:
            raise _unknown(name, modules)
        parent_name, attr = split_name(name)
        parent = modules[parent_name]
        main = name
        if expand and isinstance(parent, nn.Sequential) and isinstance(modules[name], FOLLOWERS):
            keys = list(parent._modules)
            i = keys.index(attr)
            while i > 0 and isinstance(parent._modules[keys[i - 1]], FOLLOWERS):
                i -= 1
            if i > 0 and _is_weighted(parent._modules[keys[i - 1]]):
                main = _join(parent_name, keys[i - 1])
        members = [main]
        if expand and isinstance(parent, nn.Sequential) and isinstance(modules[main], WEIGHTED):
            keys = list(parent._modules)
            j = keys.index(split_name(main)[1]) + 1
            while j < len(keys) and isinstance(parent._modules[keys[j]], FOLLOWERS):
                members.append(_join(parent_name, keys[j]))
                j += 1
        missing = [m for m in members if m not in shapes]
        if missing:
            raise ValueError(f"layer {req!r}: {missing[0]!r} did not run in the forward pass of "
                             f"{type(model).__name__} on the example input, so it cannot be "
                             f"pruned safely")
        first, last = shapes[members[0]], shapes[members[-1]]
        unit = Unit(req, main, members, parent_name, first.in_shape, last.out_shape,
                    calls=shapes[main].calls)
        segments = _segments(parent, parent_name, shapes)
        unit.stage = next((st for full, _m, st in segments if full == main),
                          segments[-1][2] if segments else f"{parent_name}#0")
        for m in members:
            for tag, target in (("the stem (first layer)", stem), ("the classifier", clf)):
                if target and (target == m or target.startswith(m + ".")):
                    unit.protected = f"{m!r} is or holds {tag} {target!r}"
        units.append(unit)
    return units


# ---------------------------------------------------------------------------- projections
def _identity_init_(weight: Tensor) -> None:
    with torch.no_grad():
        weight.zero_()
        n = min(weight.shape[0], weight.shape[1])
        idx = torch.arange(n)
        weight[(idx, idx) + (0,) * (weight.dim() - 2)] = 1.0


def make_projection(in_shape: Optional[Shape], out_shape: Optional[Shape],
                    kind: str = "auto") -> nn.Module:
    """A shape-matching stand-in for a removed layer, built from plain torch modules.

    * ``[D_in] → [D_out]`` (or equal leading dims, ``kind='linear'``): ``nn.Linear``;
    * ``[C_in, *S] → [C_out, *S']`` with ``S'`` a strided subsampling of ``S``: a 1×1 ``ConvNd``
      with that stride, then ``BatchNormNd``.

    Weights start as the (strided, zero-padded or truncated) identity, so before fine-tuning the
    network behaves as if the layer were skipped.

    Raises:
        ValueError: When no such projection exists (up-sampling, a change of rank, ...).

    Example:
        >>> import torch, dyngraph as dg
        >>> p = dg.prune.make_projection((16, 32, 32), (32, 16, 16)).eval()
        >>> p(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
    """
    check_choice(kind, "kind", ("auto", "linear", "conv"))
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape) or \
            len(in_shape) == 0:
        raise ValueError(f"no shape-matching projection exists from {in_shape} to {out_shape} "
                         f"(the rank differs)")
    if kind == "auto":
        kind = "linear" if len(in_shape) == 1 else "conv"
    if kind == "linear":
        if in_shape[:-1] != out_shape[:-1]:
            raise ValueError(f"a linear projection cannot map {in_shape} to {out_shape}")
        lin = nn.Linear(in_shape[-1], out_shape[-1])
        _identity_init_(lin.weight)
        nn.init.zeros_(lin.bias)
        return lin
    nd = len(in_shape) - 1
    if nd not in (1, 2, 3):
        raise ValueError(f"no conv projection for {nd}-D feature maps ({in_shape} → {out_shape})")
    strides = [next((s for s in range(1, a + 1) if -(-a // s) == b), None)
               for a, b in zip(in_shape[1:], out_shape[1:])]
    if None in strides:
        raise ValueError(f"no strided 1×1 projection maps spatial size {in_shape[1:]} to "
                         f"{out_shape[1:]} (up-sampling or a non-integer stride)")
    conv_cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    bn_cls = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
    opts: Dict[str, Any] = {"stride": tuple(strides), "bias": False}
    conv = conv_cls(in_shape[0], out_shape[0], 1, **opts)
    _identity_init_(conv.weight)
    return nn.Sequential(conv, bn_cls(out_shape[0]))


def _shortcut_of(module: nn.Module, in_shape: Optional[Shape], out_shape: Optional[Shape],
                 device: torch.device) -> Optional[Tuple[str, nn.Module]]:
    if in_shape is None or out_shape is None:
        return None
    for attr in SHORTCUT_ATTRS:
        sc = getattr(module, attr, None)
        if not isinstance(sc, nn.Module):
            continue
        cand = copy.deepcopy(sc)
        try:
            out = eval_forward(cand, torch.zeros((2,) + tuple(in_shape), device=device))
        except Exception:
            continue
        if isinstance(out, Tensor) and tuple(out.shape[1:]) == tuple(out_shape):
            return attr, cand
    return None


def _replacement(model: nn.Module, unit: Unit, projection: str,
                 device: torch.device) -> Tuple[Optional[nn.Module], str]:
    if not unit.shape_change:
        return None, "removed"
    main = model.get_submodule(unit.module)
    where = (f"layer {unit.request!r} changes the shape from {list(unit.in_shape or ())} to "
             f"{list(unit.out_shape or ())}")
    if projection == "none":
        raise ValueError(f"{where}; removing it needs a shape-matching projection "
                         f"(pass projection='auto', 'shortcut' or 'new')")
    if projection in ("auto", "shortcut"):
        found = _shortcut_of(main, unit.in_shape, unit.out_shape, device)
        if found is not None:
            return found[1], f"replaced by its own shortcut {unit.module}.{found[0]}"
        if projection == "shortcut":
            raise ValueError(f"{where}, and it has no shortcut module ({', '.join(SHORTCUT_ATTRS)})"
                             f" that maps one to the other; pass projection='new'")
    has_conv = isinstance(main, CONVS) or any(isinstance(m, CONVS) for m in main.modules())
    kind = "conv" if has_conv and len(unit.in_shape or ()) > 1 else "linear"
    try:
        proj = make_projection(unit.in_shape, unit.out_shape, kind).to(device)
    except ValueError as exc:
        raise ValueError(f"{where}; cannot build a projection: {exc}") from exc
    return proj, f"replaced by a new {type(proj).__name__ if kind == 'linear' else '1×1 conv'} " \
                 f"projection"


# ---------------------------------------------------------------------------- surgery
def _names_from(layers: Union[str, Iterable[Any]]) -> List[str]:
    if isinstance(layers, str):
        return [layers]
    if not isinstance(layers, Iterable) or isinstance(layers, (Mapping, Tensor)):
        raise TypeError(f"layers must be a module name, a list of names or the result of "
                        f"dg.prune.redundant_layers, got {type(layers).__name__}: {layers!r}"[:240])
    out = []
    for item in layers:
        if isinstance(item, str):
            out.append(item)
        elif hasattr(item, "module") and isinstance(item.module, str):
            out.append(item.module)
        else:
            raise TypeError(f"layers must hold module names (str) or Removal objects, got "
                            f"{type(item).__name__}: {item!r}")
    return out


@overload
def prune_layers(model: nn.Module, layers: Union[str, Iterable[Any]], *,
                 example_input: Optional[ExampleInput] = ..., projection: str = ...,
                 expand: bool = ..., inplace: bool = ..., force: bool = ...,
                 return_log: Literal[False] = ...) -> nn.Module: ...


@overload
def prune_layers(model: nn.Module, layers: Union[str, Iterable[Any]], *,
                 example_input: Optional[ExampleInput] = ..., projection: str = ...,
                 expand: bool = ..., inplace: bool = ..., force: bool = ...,
                 return_log: Literal[True]) -> Tuple[nn.Module, Dict[str, Any]]: ...


def prune_layers(model: nn.Module, layers: Union[str, Iterable[Any]], *,
                 example_input: Optional[ExampleInput] = None, projection: str = "auto",
                 expand: bool = True, inplace: bool = False, force: bool = False,
                 return_log: bool = False) -> Union[nn.Module, Tuple[nn.Module, Dict[str, Any]]]:
    """Removes layers or residual blocks by dotted name and returns the pruned model.

    Args:
        model: Any ``nn.Module`` (not TorchScript). Left untouched unless ``inplace``.
        layers: Names such as ``'layer1.2'`` (a block) or ``'features.3'`` (a conv), or the
            result of :func:`redundant_layers` / the baselines.
        example_input: An input the model accepts (tensor or tuple of arguments), used to read
            shapes and to check the result; guessed from the first layer when ``None``.
        projection: For a layer that changes the shape: ``'auto'`` (its own shortcut if it has
            one, else a new identity-initialised projection), ``'shortcut'`` (only its own),
            ``'new'`` (always a new one) or ``'none'`` (raise).
        expand: Remove a conv/linear together with the norm/activation/dropout modules right
            after it in the same ``nn.Sequential``; map a post-activation point to its layer.
        inplace: Edit ``model`` itself instead of a deep copy.
        force: Allow removing the stem (first layer) or the classifier (last layer), which is
            refused otherwise.
        return_log: Also return ``{'removed', 'replaced', 'renamed'}`` describing the edit.

    Returns:
        The pruned ``nn.Module`` (kept layers inherit their weights; it pickles and loads like
        the original), and the log when ``return_log``.

    Raises:
        ValueError: Unknown or overlapping names, the stem or classifier (without ``force``), a
            layer that did not run, a weight-shared layer, a shape change that no projection can
            bridge, or a pruned model whose forward pass
            fails or whose output shape differs.

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.resnet20()
        >>> p = dg.prune.prune_layers(m, ['layer1.1', 'layer2.2', 'layer3.0'])
        >>> [len(p.layer1), len(p.layer2), len(p.layer3)], p(torch.zeros(1, 3, 32, 32)).shape
        ([2, 2, 3], torch.Size([1, 10]))
    """
    check_surgery_model(model)
    check_choice(projection, "projection", PROJECTIONS)
    for flag, value in (("expand", expand), ("inplace", inplace), ("force", force),
                        ("return_log", return_log)):
        check_flag(value, flag)
    if example_input is not None:
        check_example_input(example_input)
    names = _names_from(layers)
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"layers lists {dup} more than once")
    if example_input is None:
        example_input = infer_example_input(model)
    shapes = probe(model, example_input)
    out_shape = shapes[""].out_shape
    units = resolve_units(model, names, shapes, expand=expand)
    # Overlaps: the same module reached twice, or one unit inside another.
    owner: Dict[str, str] = {}
    for u in units:
        for m in u.members:
            if m in owner:
                raise ValueError(f"layers {owner[m]!r} and {u.request!r} both remove {m!r}")
            owner[m] = u.request
    for a in owner:
        for b in owner:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"layer {owner[b]!r} lies inside layer {owner[a]!r}; list only "
                                 f"one of them")
    for u in units:
        if u.protected and not force:
            raise ValueError(f"layer {u.request!r} cannot be pruned: {u.protected}; the stem and "
                             f"the classifier are never removed (force=True overrides)")
        if u.calls > 1:
            raise ValueError(f"layer {u.request!r} ({u.module}) runs {u.calls} times in one "
                             f"forward pass (shared weights); it cannot be pruned as one layer")
    new = model if inplace else copy.deepcopy(model)
    device = model_device(new)
    modules = dict(new.named_modules())
    log: Dict[str, Any] = {"removed": {}, "replaced": {}, "renamed": {}}
    by_parent: Dict[str, List[Tuple[Unit, Optional[nn.Module]]]] = {}
    for u in units:
        rep, how = _replacement(new, u, projection, device)
        by_parent.setdefault(u.parent, []).append((u, rep))
        log["removed"][u.request] = list(u.members)
        log["replaced"][u.request] = how
    for parent_name, items in by_parent.items():
        parent = modules[parent_name]
        if isinstance(parent, nn.Sequential):
            # A unit's members go; its replacement, if any, takes the place of its first member.
            gone = {split_name(m)[1] for u, _ in items for m in u.members}
            reps = {split_name(u.members[0])[1]: rep for u, rep in items if rep is not None}
            kept = [(key, reps.get(key, child)) for key, child in parent._modules.items()
                    if key not in gone or key in reps]
            renumber = all(k.isdigit() for k in parent._modules)
            new_items = OrderedDict()
            for i, (key, child) in enumerate(kept):
                new_key = str(i) if renumber else key
                if new_key != key:
                    log["renamed"][_join(parent_name, key)] = _join(parent_name, new_key)
                new_items[new_key] = child
            parent._modules = new_items
        else:
            for u, rep in items:
                parent._modules[split_name(u.module)[1]] = rep if rep is not None \
                    else nn.Identity()
    # The pruned network must still run and give the same output shape.
    try:
        out = eval_forward(new, example_input)
    except Exception as exc:
        raise ValueError(f"removing {names} breaks the forward pass of {type(model).__name__}: "
                         f"{type(exc).__name__}: {exc}. This structure cannot be pruned there "
                         f"(a layer inside a block's main branch, or code in forward that "
                         f"depends on it?)") from exc
    got = first_tensor(out)
    if out_shape is not None and (got is None or tuple(got.shape[1:]) != tuple(out_shape)):
        raise ValueError(f"removing {names} changes the output shape of {type(model).__name__} "
                         f"from {list(out_shape)} to "
                         f"{None if got is None else list(got.shape[1:])}")
    return (new, log) if return_log else new


__all__ = ["CallInfo", "Unit", "infer_example_input", "make_projection", "probe",
           "prune_layers", "resolve_units"]
