"""``dyngraph plot``: overlay the curves of several runs (trained against untrained, two models,
two settings) in one figure, each with its spread over repeats and its chance band."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List, Tuple

from .._common import print_json


def register(sub: Any) -> None:
    p = sub.add_parser("plot", help="overlay the curves of several runs in one figure",
                       description="Read the curve.json of each RUN (a folder written by "
                                   "'dyngraph curve', or a DepthProfile JSON file) and draw them "
                                   "in one figure: mean ± std over repeats, the chance level of "
                                   "each run that has a null, the y axis from 0.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders or curve JSON files")
    p.add_argument("--out", required=True, help="the figure's path (.png, .pdf, .svg)")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                   help="one legend label per run (default: each run's own label, or its "
                        "folder name when two runs share one)")
    p.add_argument("--metric", default="modularity", help="the metric to draw")
    p.add_argument("--title", default=None, help="figure title (default: the runs' settings)")
    p.add_argument("--no-null", action="store_true", help="leave out the chance bands")
    p.set_defaults(func=run)


def _read(run: str) -> Tuple[Any, str]:
    from ...profiles import DepthProfile
    path = Path(run)
    if path.is_dir():
        path = path / "curve.json"
    if not path.is_file():
        raise FileNotFoundError(f"RUN {run!r}: no {path} (pass a folder written by "
                                f"'dyngraph curve' or its curve.json)")
    try:
        return DepthProfile.from_json(path), path.parent.name if path.name == "curve.json" \
            else path.stem
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"RUN {run!r}: {path} is not a dyngraph curve ({exc})") from None


def _settings(meta: dict) -> str:
    graph = meta.get("graph") or {}
    parts = []
    if graph.get("k") is not None:
        parts.append(f"k={graph['k']} {graph.get('metric', '')}".strip())
    if meta.get("per_class"):
        parts.append(f"{meta['per_class']}/class")
    if meta.get("repeats"):
        parts.append(f"{meta['repeats']} repeats")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    from ...outputs import plot
    read = [_read(r) for r in args.runs]
    profiles = [p for p, _ in read]
    if args.labels is not None and len(args.labels) != len(profiles):
        raise ValueError(f"--labels has {len(args.labels)} entries for {len(profiles)} runs")
    labels: List[str] = list(args.labels) if args.labels else \
        [str(p.meta.get("label") or name) for p, name in read]
    if args.labels is None and len(set(labels)) < len(labels):
        labels = [name for _, name in read]
    for p, run_ in zip(profiles, args.runs):
        if args.metric not in p.metrics:
            raise ValueError(f"--metric {args.metric!r}: run {run_!r} has the metrics "
                             f"{[m for m in p.metrics if ':' not in m]}")
    first = profiles[0]
    for p, run_ in zip(profiles[1:], args.runs[1:]):
        if p.layers != first.layers:
            raise ValueError(f"RUN {run_!r} has the layers {p.layers}, but {args.runs[0]!r} has "
                             f"{first.layers}: only runs over the same layers are overlaid")
    title = args.title
    if title is None:
        settings = sorted({_settings(p.meta) for p in profiles} - {""})
        title = f"{args.metric}" + (f" ({'; '.join(settings)})" if settings else "")
    plot(profiles, args.out, metrics=[args.metric], labels=labels, title=title,
         null=not args.no_null, ylim_from_zero=True)
    print_json({"out": str(args.out), "runs": [
        {"run": r, "label": lab, args.metric: [round(v, 4) for v in p[args.metric].values.tolist()]}
        for r, lab, p in zip(args.runs, labels, profiles)]})
    return 0
