"""The measure registry: names → measures that the one runner (:func:`~dyngraph.depth_profile`,
:func:`~dyngraph.layer_matrix`) evaluates.

A **layer measure** is ``fn(x, y, graph) -> float | {name: float}``: ``x`` is one layer's
``[N, D]`` representations, ``y`` the ``[N]`` integer labels and ``graph`` that layer's kNN graph
(a PyG ``Data`` built with the run's :class:`~dyngraph.GraphSpec`, or ``None`` when no chosen
measure needs one). A **pair measure** prepares each representation once
(``prepare(x, y) -> state``) and scores pairs (``fn(state_a, state_b) -> float``), the netrep /
scikit-dimension protocol.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from torch import Tensor

__all__ = ["Measure", "available", "describe", "get", "register", "unregister"]

Number = Union[float, int, Tensor]
KINDS = ("layer", "pair")
RESERVED = ("format", "layers", "metrics", "samples", "mean", "std", "meta", "values", "rows",
            "cols")


@dataclass(frozen=True)
class Measure:
    """One registered measure.

    Attributes:
        name: The registry name.
        fn: ``fn(x, y, graph)`` for a layer measure, ``fn(state_a, state_b)`` for a pair measure.
        kind: ``'layer'`` or ``'pair'``.
        graph: Whether a layer measure reads the kNN graph (the runner builds it only when needed).
        labels: Whether it reads the labels: only such measures get a label-permutation null.
        outputs: The names of the values it returns (a float measure: its own name).
        prepare: For a pair measure, ``prepare(x, y) -> state`` (default: ``x`` itself).
        distance: For a pair measure, ``True`` when smaller means more similar.
        description: One line for :func:`describe`.
        null: Optional batched form for label-permutation nulls: ``null(x, ys, graph, **opts)``
            with ``ys`` ``[P, N]`` (one permutation of the labels per row) returns ``[P]`` or
            ``[P, outputs]``, equal to ``fn`` on each row; the runner calls it instead of ``P``
            separate calls.

    Defaults: ``kind='layer'``, ``graph=False``, ``labels=True``, ``outputs=()``,
    ``prepare=None``, ``distance=False``, ``description=''``, ``null=None``. Made by
    :func:`register` (whose own defaults differ: ``graph=True``) and read back with :func:`get`.

    Example:
        >>> import dyngraph as dg
        >>> m = dg.measures.get('modularity')
        >>> m.name, m.kind, m.graph, m.labels, m.metrics
        ('modularity', 'layer', True, True, ('modularity',))
        >>> dg.measures.get('cka').kind, dg.measures.get('cka').distance
        ('pair', False)
    """

    name: str
    fn: Callable[..., Any]
    kind: str = "layer"
    graph: bool = False
    labels: bool = True
    outputs: Tuple[str, ...] = ()
    prepare: Optional[Callable[[Tensor, Optional[Tensor]], Any]] = None
    distance: bool = False
    description: str = ""
    null: Optional[Callable[..., Any]] = None

    @property
    def metrics(self) -> Tuple[str, ...]:
        """The metric names this measure adds to a result."""
        return self.outputs or (self.name,)


_REGISTRY: Dict[str, Measure] = {}


def _check_name(name: object, what: str = "name") -> str:
    if not isinstance(name, str) or not name or ":" in name or name.strip() != name:
        raise ValueError(f"measure {what} must be a non-empty string without ':' or surrounding "
                         f"spaces, got {name!r}")
    if name in RESERVED:
        raise ValueError(f"measure {what} {name!r} is reserved (it names a field of the results)")
    return name


def register(name: str, *, kind: str = "layer", graph: bool = True, labels: bool = True,
             outputs: Optional[Tuple[str, ...]] = None,
             prepare: Optional[Callable[[Tensor, Optional[Tensor]], Any]] = None,
             distance: bool = False, description: str = "", overwrite: bool = False,
             null: Optional[Callable[..., Any]] = None
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that adds a measure to the registry, so that it works in
    :func:`~dyngraph.depth_profile` (layer measures) or :func:`~dyngraph.layer_matrix` (pair
    measures) by name.

    Args:
        name: Registry name (no ``':'``; not one of the result field names).
        kind: ``'layer'`` (``fn(x, y, graph)``) or ``'pair'`` (``fn(state_a, state_b)``).
        graph: A layer measure reads ``graph`` (default ``True``; ``False`` saves the kNN search
            when no other measure needs it).
        labels: It reads ``y`` (label-permutation nulls apply only to such measures).
        outputs: Names of the values when ``fn`` returns a dict.
        prepare: Pair measures: ``prepare(x, y) -> state``, run once per layer.
        distance: Pair measures: smaller values mean more similar.
        description: One line shown by :func:`describe`.
        overwrite: Replace a measure of the same name instead of raising.
        null: Layer measures that read the labels: a batched form of ``fn`` for the
            label-permutation null (see :class:`Measure`).

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Example:
        >>> import torch, dyngraph as dg
        >>> @dg.measures.register('mean_norm', graph=False, labels=False, overwrite=True)
        ... def mean_norm(x, y, graph):
        ...     return float(x.norm(dim=1).mean())
        >>> 'mean_norm' in dg.measures.available()
        True
        >>> f = {'a': torch.ones(8, 4), 'b': 2 * torch.ones(8, 4)}
        >>> dg.depth_profile(f, ['mean_norm'], y=torch.arange(8) % 2).mean[:, 0].tolist()
        [2.0, 4.0]
    """
    _check_name(name)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    for flag, val in (("graph", graph), ("labels", labels), ("distance", distance),
                      ("overwrite", overwrite)):
        if not isinstance(val, bool):
            raise TypeError(f"{flag} must be True or False, got {val!r}")
    outs: Tuple[str, ...] = ()
    if outputs is not None:
        if isinstance(outputs, str) or not outputs:
            raise ValueError(f"outputs must be a non-empty tuple of names, got {outputs!r}")
        outs = tuple(_check_name(o, "output name") for o in outputs)
    if prepare is not None and (kind != "pair" or not callable(prepare)):
        raise ValueError("prepare= is a callable, and only for kind='pair' measures")
    if null is not None and (kind != "layer" or not labels or not callable(null)):
        raise ValueError("null= is a callable, and only for kind='layer' measures that read "
                         "the labels")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"register({name!r}) decorates a function, got {type(fn).__name__}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a measure named {name!r} is already registered; pass "
                             f"overwrite=True to replace it")
        _REGISTRY[name] = Measure(name, fn, kind, graph if kind == "layer" else False, labels,
                                  outs, prepare, distance, description or _first_line(fn),
                                  null)
        return fn
    return deco


def _first_line(fn: Callable[..., Any]) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def unregister(name: str) -> None:
    """Removes a measure (a user's own, typically).

    Args:
        name: A registered name.

    Raises:
        ValueError: when no measure has that name.

    Example:
        >>> import dyngraph as dg
        >>> @dg.measures.register('row_count', graph=False, labels=False, overwrite=True)
        ... def row_count(x, y, graph):
        ...     return float(x.shape[0])
        >>> 'row_count' in dg.measures.available()
        True
        >>> dg.measures.unregister('row_count')
        >>> 'row_count' in dg.measures.available()
        False
    """
    get(name)
    del _REGISTRY[name]


def get(name: str, kind: Optional[str] = None) -> Measure:
    """The registered :class:`Measure` named ``name`` (close matches in the error otherwise).

    Args:
        name: A registered name (:func:`available` lists them).
        kind: ``None`` (default: any) or ``'layer'`` / ``'pair'``: the measure must be of that
            kind.

    Raises:
        ValueError: for an unknown name, or one of another ``kind``.

    Example:
        >>> import dyngraph as dg
        >>> m = dg.measures.get('twonn', kind='layer')
        >>> m.name, m.kind, m.labels
        ('twonn', 'layer', False)
        >>> try:
        ...     dg.measures.get('modularty')
        ... except ValueError as err:
        ...     print(err)
        unknown measure 'modularty'. Did you mean ['modularity', ...]? ...
    """
    if not isinstance(name, str):
        raise TypeError(f"measure names are strings, got {type(name).__name__}: {name!r}")
    m = _REGISTRY.get(name)
    if m is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"unknown measure {name!r}.{hint} dg.measures.available() lists "
                         f"{len(_REGISTRY)} names.")
    if kind is not None and m.kind != kind:
        raise ValueError(f"measure {name!r} is a {m.kind} measure; this needs a {kind} measure "
                         f"(dg.measures.available({kind!r}))")
    return m


def available(kind: Optional[str] = None) -> List[str]:
    """Every registered measure name (of one ``kind``, ``'layer'`` or ``'pair'``), sorted.

    Example:
        >>> import dyngraph as dg
        >>> {'modularity', 'twonn', 'nc1'} <= set(dg.measures.available('layer'))
        True
        >>> {'cka', 'mutual_knn'} <= set(dg.measures.available('pair'))
        True
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None or one of {list(KINDS)}, got {kind!r}")
    return sorted(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def describe(kind: Optional[str] = None) -> Dict[str, str]:
    """``{name: one-line description}`` of the registered measures.

    Args:
        kind: ``None`` (default: every measure), ``'layer'`` or ``'pair'``.

    Returns:
        One entry per name of :func:`available`, sorted by name.

    Example:
        >>> import dyngraph as dg
        >>> d = dg.measures.describe('pair')
        >>> list(d) == dg.measures.available('pair'), all(isinstance(v, str) for v in d.values())
        (True, True)
        >>> 'cka' in d, 'modularity' in d
        (True, False)
    """
    return {n: _REGISTRY[n].description for n in available(kind)}


def resolve(names: Any, kind: str) -> List[Measure]:
    """Validates a list of measure names (or one name) for ``kind``."""
    if isinstance(names, str):
        names = [names]
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"measures must be a name or a list of names, got "
                        f"{type(names).__name__}") from None
    if not names:
        raise ValueError("measures is empty: name at least one (dg.measures.available())")
    if len(set(names)) != len(names):
        raise ValueError(f"measures lists a name twice: {names}")
    return [get(n, kind) for n in names]
