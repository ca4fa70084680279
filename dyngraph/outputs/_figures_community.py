"""Drawer and TensorBoard logger of community evolution
(:class:`~dyngraph.measures.CommunityEvolution`): the community flow (alluvial), the transition
and class-mixing heatmaps, and the per-layer series. Reached through :func:`dyngraph.plot` and
:func:`dyngraph.log`."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validate import check_choice
from ..measures._community import CommunityEvolution, community_transitions, mixing_ratio
from ..profiles._profile import DepthProfile
from ._dispatch import register_log, register_plot
from ._figures import log_profile
from ._plot import new_figure

#: The figures of a :class:`CommunityEvolution` (``dg.plot(ev, kind=...)``).
KINDS = ("flow", "transitions", "mixing", "contributions", "profile")
#: The series ``kind='profile'`` draws by default (``n_communities`` has a scale of its own).
PROFILE_METRICS = ("modularity", "detected_modularity", "graph_purity", "nmi", "ari")


@register_plot(CommunityEvolution)
def plot_evolution(ev: CommunityEvolution, ax: Any = None, kind: str = "flow",
                   title: Optional[str] = None, normalize: str = "row",
                   metrics: Optional[Union[str, Sequence[str]]] = None,
                   gap: float = 0.01) -> Any:
    """One figure of a community evolution (``dg.plot(ev, kind=...)``).

    ``kind='flow'``: an alluvial diagram. Each layer is a column of blocks, one per community,
    with heights proportional to its size, ordered and coloured by the majority label of its
    members; bands between columns carry the samples that move from one community to the next.
    ``'transitions'``: one row-normalised transition matrix per pair of consecutive layers.
    ``'mixing'``: one class-mixing heatmap per layer (``normalize='row'``: where each class's
    edge weight goes; ``'total'``: share of all weight; ``'ratio'``: observed / expected), on a
    shared colour scale. ``'contributions'``: every class's modularity term over depth on one
    axis. ``'profile'``: the per-layer series on one axis (``metrics=`` picks them).

    Example:
        >>> import torch, dyngraph as dg
        >>> y = torch.arange(60) % 3
        >>> x = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
        >>> seq = dg.DynamicGraph.from_features({'a': x, 'b': x + 5 * torch.eye(6)[y]}, y=y,
        ...                                     k=4, progress=False)
        >>> ev = dg.measures.community_evolution(seq, progress=False)
        >>> fig = dg.plot(ev, kind='flow')
        >>> len(dg.plot(ev, kind='mixing', normalize='ratio').axes)   # two layers + colour bar
        3
    """
    check_choice(kind, "kind", KINDS)
    if kind in ("flow", "transitions") and len(ev.communities) < 2:
        raise ValueError(f"kind={kind!r} needs at least 2 layers, got {len(ev.communities)}")
    if kind == "flow":
        return _flow(ev.communities, ev.labels, ev.layers, ax, title, gap)
    if kind == "transitions":
        return _transitions(ev.communities, ev.layers, ax, title)
    if kind == "mixing":
        return _mixing(ev.mixing, ev.layers, ax, normalize, title)
    if kind == "contributions":
        return _overlay(ev.class_contributions, metrics, ax,
                        title or "per-class modularity contribution", "contribution to Q")
    return _overlay(ev.profile, PROFILE_METRICS if metrics is None else metrics, ax,
                    title or "community structure over depth", "value")


@register_log(CommunityEvolution)
def log_evolution(writer: Any, ev: CommunityEvolution, prefix: str, figure: bool = True) -> None:
    """Every series of ``ev.profile`` and ``ev.class_contributions`` as scalars
    ``'<prefix>/<metric>'`` at step = layer index, the table ``'<prefix>/layers'``, the community
    flow as ``'<prefix>/figure'`` (the series for a single layer) and the class mixing as
    ``'<prefix>/class_mixing'``."""
    log_profile(writer, ev.profile.join(ev.class_contributions), prefix, figure=False)
    if figure and callable(getattr(writer, "add_figure", None)):
        main = "flow" if len(ev.layers) > 1 else "profile"
        writer.add_figure(f"{prefix}/figure", plot_evolution(ev, kind=main))
        writer.add_figure(f"{prefix}/class_mixing", plot_evolution(ev, kind="mixing"))


# ================================================================================== pieces
def _overlay(p: DepthProfile, metrics: Optional[Union[str, Sequence[str]]], ax: Any,
             title: str, ylabel: str) -> Any:
    names = list(p.metrics) if metrics is None else \
        [metrics] if isinstance(metrics, str) else list(metrics)
    for m in names:
        if m not in p.metrics:
            raise ValueError(f"metrics: {m!r} is not among {p.metrics}")
    fig, a = new_figure((max(6.0, min(16.0, 0.45 * len(p) + 3)), 4.0), ax=ax)
    xs = list(range(len(p)))
    for m in names:
        a.plot(xs, p[m].values.tolist(), marker="o", label=m.removeprefix("modularity_"))
    a.set_xticks(xs)
    a.set_xticklabels(p.layers, rotation=60, ha="right", fontsize=7)
    a.set_xlabel("layer")
    a.set_ylabel(ylabel)
    a.set_title(title)
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
    return fig


def _heatmaps(mats: Sequence[Tensor], ax: Any, size: Tuple[float, float], kind: str,
              labels: Sequence[Tuple[str, str, str]], colorbar: str, title: str,
              **imshow: Any) -> Any:
    """One heatmap per matrix, four per row (``ax``: only for a single one), on one colour scale;
    ``labels`` are each panel's ``(title, x label, y label)``."""
    n = len(mats)
    if ax is not None and n > 1:
        raise ValueError(f"ax= draws one panel; kind={kind!r} draws {n} panels here")
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = new_figure((size[0] * cols, size[1] * rows), ax=ax, nrows=rows, ncols=cols)
    panels = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for a in panels[n:]:
        a.axis("off")
    for a, m, (head, xlabel, ylabel) in zip(panels, mats, labels):
        im = a.imshow(m.numpy(), **imshow)
        a.set_title(head, fontsize=8)
        a.set_xlabel(xlabel, fontsize=7)
        a.set_ylabel(ylabel, fontsize=7)
        a.tick_params(labelsize=6)
        for axis in (a.xaxis, a.yaxis):
            axis.get_major_locator().set_params(integer=True)
    fig.colorbar(im, ax=panels[n - 1], fraction=0.046, label=colorbar)
    fig.suptitle(title, fontsize=10)
    return fig


def _transitions(comms: Sequence[Tensor], names: Sequence[str], ax: Any,
                 title: Optional[str]) -> Any:
    labels = [(f"{a} → {b}", f"community at {b}", f"community at {a}")
              for a, b in zip(names, names[1:])]
    return _heatmaps(community_transitions(list(comms), normalize="row"), ax, (3.4, 3.0),
                     "transitions", labels, "share of the row community",
                     title or "community transitions (row-normalised)", vmin=0, vmax=1,
                     cmap="magma", aspect="auto")


def _mixing(mixing: Tensor, names: Sequence[str], ax: Any, normalize: str,
            title: Optional[str]) -> Any:
    check_choice(normalize, "normalize", ("row", "total", "ratio"))
    m = mixing.detach().to(torch.float64).cpu()
    if normalize == "row":
        rs = m.sum(2, keepdim=True)
        m = torch.where(rs > 0, m / rs.clamp_min(1e-300), torch.zeros_like(m))
    elif normalize == "ratio":
        m = mixing_ratio(m)
    colorbar = {"row": "share of the row class's weight", "total": "share of all weight",
                "ratio": "observed / expected weight"}[normalize]
    labels = [(name, "to class", "from class") for name in names]
    vmax = 1.0 if normalize == "row" else float(m.max())
    return _heatmaps(list(m), ax, (3.0, 2.8), "mixing", labels, colorbar,
                     title or "class mixing per layer", vmin=0, vmax=vmax, cmap="viridis")


def _flow(communities: Sequence[Tensor], labels: Tensor, names: Sequence[str], ax: Any,
          title: Optional[str], gap: float) -> Any:
    from matplotlib import colormaps
    from matplotlib.patches import Patch, Rectangle
    comms = [c.long().cpu().reshape(-1) for c in communities]
    L = len(comms)
    n = comms[0].numel()
    lab = labels.long().cpu()
    cmap = colormaps["tab10" if int(lab.max()) < 10 else "tab20"]
    fig, ax = new_figure((max(6.0, 1.6 * L + 2), 5.0), ax=ax)
    width = 0.18
    pos: List[Dict[int, Tuple[float, float]]] = []
    majors = []
    for l, c in enumerate(comms):
        # each community's majority label and size; drawn by majority label, then size
        ids, counts = torch.unique(c, return_counts=True)
        major = {cid: int(torch.bincount(lab[c == cid]).argmax()) for cid in ids.tolist()}
        size = dict(zip(ids.tolist(), counts.tolist()))
        order = sorted(size, key=lambda cid: (major[cid], -size[cid], cid))
        majors.append(major)
        k = len(order)
        usable = 1.0 - gap * max(k - 1, 0)
        g = gap
        if usable <= 0.8:  # too many communities for the gap: gaps take 20% of the column
            g, usable = 0.2 / max(k - 1, 1), 0.8
        y0 = 0.0
        p = {}
        for cid in order:
            h = usable * size[cid] / n
            p[cid] = (y0, h)
            ax.add_patch(Rectangle((l - width / 2, 1 - y0 - h), width, h,
                                   color=cmap(major[cid] % cmap.N), ec="black", lw=0.4))
            if h > 0.04:
                ax.text(l, 1 - y0 - h / 2, str(cid), ha="center", va="center", fontsize=6)
            y0 += h + g
        pos.append(p)
    rank = [{cid: i for i, cid in enumerate(p)} for p in pos]
    used = [sum(h for _, h in p.values()) for p in pos]
    t = torch.linspace(0, 1, 30)
    s = (3 * t ** 2 - 2 * t ** 3).numpy()              # smoothstep
    for l in range(L - 1):
        kb = int(comms[l + 1].max()) + 1
        pairs, cnt = torch.unique(comms[l] * kb + comms[l + 1], return_counts=True)
        flows = [(p // kb, p % kb, c) for p, c in zip(pairs.tolist(), cnt.tolist())]
        out_off, in_off = dict.fromkeys(pos[l], 0.0), dict.fromkeys(pos[l + 1], 0.0)
        usable_a, usable_b = used[l], used[l + 1]
        # outflows sorted by target position, inflows by source position: fewer crossings
        out_start = {}
        xs = (l + width / 2) + (1 - width) * t.numpy()
        for src, dst, c_ in sorted(flows, key=lambda f: (rank[l][f[0]], rank[l + 1][f[1]])):
            out_start[(src, dst)] = out_off[src]
            out_off[src] += usable_a * c_ / n
        for src, dst, c_ in sorted(flows, key=lambda f: (rank[l + 1][f[1]], rank[l][f[0]])):
            h_a, h_b = usable_a * c_ / n, usable_b * c_ / n
            ya = 1 - pos[l][src][0] - out_start[(src, dst)]
            yb = 1 - pos[l + 1][dst][0] - in_off[dst]
            in_off[dst] += h_b
            top = ya + (yb - ya) * s
            bottom = (ya - h_a) + ((yb - h_b) - (ya - h_a)) * s
            ax.fill_between(xs, bottom, top, color=cmap(majors[l][src] % cmap.N), alpha=0.35,
                            lw=0)
    ax.set_xlim(-0.5, L - 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(range(L))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks([])
    ax.set_xlabel("layer")
    ax.set_title(title or "community flow over depth (blocks: communities, colour: majority "
                          "class)", fontsize=9)
    ax.legend(handles=[Patch(color=cmap(c % cmap.N), label=str(c)) for c in lab.unique().tolist()],
              title="class", fontsize=6, title_fontsize=7, loc="center left",
              bbox_to_anchor=(1.0, 0.5))
    return fig
