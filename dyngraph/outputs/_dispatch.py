"""``plot(result)`` and ``log(writer, result)``: one entry point each, dispatched on the result's
type. Result modules register their drawers here; figures and TensorBoard code live only in
:mod:`dyngraph.outputs`."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, Dict, List, Optional

from .._io import PathLike
from .._validate import check_flag

_PLOTTERS: Dict[type, Callable[..., Any]] = {}
_LOGGERS: Dict[type, Callable[..., Any]] = {}
_LOADED = False


def register_plot(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``fn(result, ax=None, **kw) -> Figure`` draws results of type ``cls``.

    :func:`plot` then draws any instance of ``cls`` (or of a subclass) with ``fn``, checks the
    keyword options against ``fn``'s signature, lays the figure out and saves it. A later
    registration for the same class replaces the earlier one.

    Args:
        cls: The result class.

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Example:
        >>> import dyngraph as dg
        >>> class Score:
        ...     def __init__(self, value):
        ...         self.value = value
        >>> @dg.outputs.register_plot(Score)
        ... def draw_score(result, ax=None, color="C0"):
        ...     fig, ax = dg.outputs.new_figure(ax=ax)
        ...     ax.bar(["score"], [result.value], color=color)
        ...     return fig
        >>> fig = dg.plot(Score(0.5), color="C1")
        >>> float(fig.axes[0].patches[0].get_height()), "Score" in dg.outputs.drawable_types()
        (0.5, True)
    """
    _check_class(cls, "register_plot")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _check_function(fn, "register_plot", cls)
        _PLOTTERS[cls] = fn
        return fn
    return deco


def register_log(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``fn(writer, result, prefix, figure) -> None`` logs results of type ``cls``.

    :func:`log` then logs any instance of ``cls`` (or of a subclass) with ``fn`` and flushes the
    writer. A later registration for the same class replaces the earlier one.

    Args:
        cls: The result class.

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Example:
        >>> import tempfile, dyngraph as dg
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> class Score:
        ...     def __init__(self, value):
        ...         self.value = value
        >>> @dg.outputs.register_log(Score)
        ... def log_score(writer, result, prefix, figure):
        ...     writer.add_scalar(f"{prefix}/score", result.value, 0)
        >>> folder = tempfile.mkdtemp()
        >>> with SummaryWriter(folder) as w:
        ...     dg.log(w, Score(0.5), prefix="run")
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> [e.value for e in EventAccumulator(folder).Reload().Scalars("run/score")]
        [0.5]
    """
    _check_class(cls, "register_log")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _check_function(fn, "register_log", cls)
        _LOGGERS[cls] = fn
        return fn
    return deco


def _check_class(cls: Any, what: str) -> None:
    if not isinstance(cls, type):
        raise TypeError(f"{what} takes the result class (a type), got {type(cls).__name__}: "
                        f"{cls!r}"[:200])


def _check_function(fn: Any, what: str, cls: type) -> None:
    if not callable(fn):
        raise TypeError(f"{what}({cls.__name__}) decorates a function, got "
                        f"{type(fn).__name__}")


def _check_options(fn: Callable[..., Any], kw: Dict[str, Any], what: str, result: Any,
                   fixed: tuple, positional: int) -> None:
    """Unknown keyword options of a drawer or logger are a ``TypeError`` that lists the known
    ones (instead of one from deep inside the drawer)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if n not in fixed and p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)][positional:]
    unknown = sorted(set(kw) - set(known))
    if unknown:
        kind = type(result[0] if isinstance(result, (list, tuple)) else result).__name__
        raise TypeError(f"{what}() of a {kind} has no option(s) {unknown}; its options are "
                        f"{known}")


def _load() -> None:
    """Imports every ``dyngraph/outputs/_figures*.py`` module once: importing one registers its
    drawers and loggers (matplotlib is imported only then)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules(_package_path()):
        if info.name.startswith("_figures"):
            importlib.import_module(f"{__package__}.{info.name}")


def _package_path() -> List[str]:
    import dyngraph.outputs as pkg
    return list(pkg.__path__)


def _find(table: Dict[type, Callable[..., Any]], result: Any, what: str) -> Callable[..., Any]:
    _load()
    key = type(result)
    if isinstance(result, (list, tuple)) and not result:
        raise ValueError(f"{what} got an empty {type(result).__name__}: pass a result or a list "
                         f"of results")
    if isinstance(result, (list, tuple)) and result:
        key = type(result[0])
        if not all(isinstance(r, key) for r in result):
            raise TypeError(f"{what} takes a list of results of one type, got "
                            f"{sorted({type(r).__name__ for r in result})}")
    for cls in key.__mro__:
        if cls in table:
            return table[cls]
    known = sorted(c.__name__ for c in table)
    raise TypeError(f"{what} does not know how to draw a {key.__name__}; it draws {known}")


def plot(result: Any, path: Optional[PathLike] = None, ax: Any = None, **kw: Any) -> Any:
    """Draws any dyngraph result; saves it atomically to ``path`` when given.

    A :class:`~dyngraph.DepthProfile` is drawn as mean ± std over depth (one panel per metric,
    nulls as a band), a list of profiles overlaid (``labels=`` names them), a
    :class:`~dyngraph.LayerMatrix` as heatmaps; every other result type of dyngraph registers
    its own drawer. The user's matplotlib backend and pyplot state are never touched.

    Args:
        result: A result object, or a list of results of one type to overlay.
        path: Where to save the figure (PNG unless the suffix says otherwise).
        ax: An existing matplotlib axis to draw into (one-panel figures).
        **kw: Options of the type's drawer (``metrics=``, ``labels=``, ``title=``, ...).

    Returns:
        The matplotlib ``Figure``.

    Example:
        >>> import torch, dyngraph as dg
        >>> p = dg.DepthProfile(['conv1', 'conv2'], ['modularity'], torch.tensor([[0.2, 0.6]]))
        >>> fig = dg.plot(p)
        >>> fig.axes[0].get_ylabel()
        'modularity'
    """
    from ._plot import check_axis, check_figure_path, finish
    fn = _find(_PLOTTERS, result, "plot")
    _check_options(fn, kw, "plot", result, ("ax",), 1)  # fn(result, ax=None, **options)
    check_figure_path(path)
    check_axis(ax)
    fig = fn(result, ax=ax, **kw)
    return finish(fig, path)


def log(writer: Any, result: Any, prefix: str = "dyngraph", figure: bool = True,
        **kw: Any) -> None:
    """Logs any dyngraph result to TensorBoard with one convention: scalar
    ``'<prefix>/<metric>'`` at ``step`` = layer index (``'<prefix>/<metric>_std'`` for the spread
    over repeats), the layer names and settings as a text table ``'<prefix>/layers'``, and the
    figure as ``'<prefix>/figure'``.

    Args:
        writer: A ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar`` and
            ``add_text``).
        result: A result object.
        prefix: Tag prefix (one per run or model).
        figure: Also log the figure.

    Example:
        >>> import tempfile, torch, dyngraph as dg
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> p = dg.DepthProfile(['conv1', 'conv2'], ['modularity'], torch.tensor([[0.2, 0.6]]))
        >>> with SummaryWriter(tempfile.mkdtemp()) as w:
        ...     dg.log(w, p, prefix='trained')
    """
    for name in ("add_scalar", "add_text"):
        if not callable(getattr(writer, name, None)):
            raise TypeError(f"writer must be a SummaryWriter-like object with {name}(), got "
                            f"{type(writer).__name__}")
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    check_flag(figure, "figure")
    fn = _find(_LOGGERS, result, "log")
    _check_options(fn, kw, "log", result, ("prefix", "figure"), 2)  # fn(writer, result, ...)
    fn(writer, result, prefix=prefix, figure=figure, **kw)
    flush = getattr(writer, "flush", None)
    if callable(flush):
        flush()


def drawable_types() -> List[str]:
    """Names of the result types :func:`plot` can draw.

    Returns:
        The class names, sorted (subclasses of these are drawn too).

    Example:
        >>> import dyngraph as dg
        >>> {"DepthProfile", "LayerMatrix"} <= set(dg.outputs.drawable_types())
        True
    """
    _load()
    return sorted(c.__name__ for c in _PLOTTERS)
