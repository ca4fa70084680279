"""Regenerates the numbers of the README's curve table and prints them as its Markdown rows.

    python examples/readme_numbers.py --out runs/readme            # ~5 min on 2 CPU cores
    python examples/readme_numbers.py --out runs/readme --save numbers.json
    python examples/readme_numbers.py --out runs/other --diff numbers.json   # another machine

Runs the README's own command, ``dyngraph curve``, four times with its defaults (seed 0, k = 3
cosine snapshots, 5 class-balanced resamplings of 50 test samples per class, 100 label
permutations per repeat for the chance level, 2 torch threads): digits with the reference CNN
trained 40 epochs and untrained, MNIST-1D trained 30 epochs and untrained. Each run's folder
(``curve.json``, ``curve.png``, TensorBoard) is kept under ``--out``, and ``dyngraph plot``
overlays each dataset's trained and untrained curves (``overlay_<example>.png``).

It prints the table rows (test accuracy, Q per conv layer), the largest std over resamplings, and
the chance-level summary the README quotes (null mean and std, z-scores). ``--save`` writes the
numbers as JSON; ``--diff`` compares this run with a saved one (another machine, thread count or
device) and prints the largest differences, which is how the README states how much the numbers
move across machines. A rerun with the same ``--out`` reuses the cached trained models.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import dyngraph as dg

RUNS = [  # (example, epochs, untrained)
    ("digits", 40, False), ("digits", 40, True), ("mnist1d", 30, False), ("mnist1d", 30, True)]
NAMES = {"digits": "digits", "mnist1d": "MNIST-1D"}


def run_curve(example: str, epochs: int, untrained: bool, out: Path, args) -> Dict[str, Any]:
    """One ``dyngraph curve`` run; returns the numbers the README reads from its curve.json."""
    folder = out / f"{example}_{'untrained' if untrained else 'trained'}"
    cmd = [sys.executable, "-m", "dyngraph", "curve", "--example", example,
           "--epochs", str(epochs), "--out", str(folder), "--threads", str(args.threads),
           "--device", args.device, "--seed", str(args.seed), "--quiet"]
    if untrained:
        cmd.append("--untrained")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    prof = dg.DepthProfile.from_json(folder / "curve.json")

    def values(metric: str) -> List[float]:      # mean over the repeats, per layer
        return prof[metric].values.tolist()

    return {"example": example, "epochs": epochs, "untrained": untrained,
            "folder": str(folder), "layers": prof.layers,
            "test_acc": prof.meta["model"]["test_acc"], "q": values("modularity"),
            "q_std": prof["modularity"].errors.tolist(),
            "null_mean": values("modularity:null_mean"), "null_std": values("modularity:null_std"),
            "z": values("modularity:z"), "threads": prof.meta.get("threads"),
            "device": args.device}


def table(results: List[Dict[str, Any]]) -> str:
    std = {ex: max(max(r["q_std"]) for r in results if r["example"] == ex) for ex in NAMES}
    lines = [f"| data | network | test acc | Q at conv 1 → conv 6 (mean over 5 resamplings; "
             f"std ≤ {std['digits']:.3f} on digits, ≤ {std['mnist1d']:.3f} on MNIST-1D) |",
             "|---|---|---|---|"]
    for r in results:
        net = "untrained" if r["untrained"] else f"trained CNN ({r['epochs']} epochs)"
        qs = [f"{v:.3f}" for v in r["q"]]
        qs[-1] = f"**{qs[-1]}**"
        lines.append(f"| {NAMES[r['example']]} | {net} | {r['test_acc']:.3f} | {', '.join(qs)} |")
    return "\n".join(lines)


def chance(results: List[Dict[str, Any]]) -> str:
    nm = [v for r in results for v in r["null_mean"]]
    ns = [v for r in results for v in r["null_std"]]
    out = [f"chance level (labels permuted): null mean {min(nm):+.4f} to {max(nm):+.4f}, "
           f"null std {min(ns):.4f} to {max(ns):.4f} over every layer of the four runs"]
    for r in results:
        out.append(f"  {NAMES[r['example']]:>8} {'untrained' if r['untrained'] else 'trained':>9}:"
                   f" z = {min(r['z']):.1f} to {max(r['z']):.1f} (first layer {r['z'][0]:.1f},"
                   f" last {r['z'][-1]:.1f})")
    return "\n".join(out)


def diff(results: List[Dict[str, Any]], other: List[Dict[str, Any]]) -> str:
    key = lambda r: (r["example"], r["untrained"])
    theirs = {key(r): r for r in other}
    out = [f"differences against the saved run ({other[0].get('device')}, "
           f"{other[0].get('threads')} threads):"]
    for r in results:
        o = theirs.get(key(r))
        if o is None:
            continue
        dq = max(abs(a - b) for a, b in zip(r["q"], o["q"]))
        out.append(f"  {NAMES[r['example']]:>8} {'untrained' if r['untrained'] else 'trained':>9}:"
                   f" max |ΔQ| = {dq:.4f}, |Δ test acc| = {abs(r['test_acc'] - o['test_acc']):.4f}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/readme", help="folder of the four runs")
    p.add_argument("--threads", type=int, default=2, help="torch threads (dyngraph's default)")
    p.add_argument("--device", default="cpu", help="cpu (the README's numbers), cuda, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, help="write the numbers to this JSON file")
    p.add_argument("--diff", default=None, help="compare with numbers saved by --save")
    args = p.parse_args()
    out = Path(args.out)
    results = [run_curve(ex, ep, un, out, args) for ex, ep, un in RUNS]
    for ex in NAMES:
        runs = [r["folder"] for r in results if r["example"] == ex]
        subprocess.run([sys.executable, "-m", "dyngraph", "plot", *runs,
                        "--out", str(out / f"overlay_{ex}.png")], check=True,
                       stdout=subprocess.DEVNULL)
    print(table(results))
    print()
    print(chance(results))
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1) + "\n")
    if args.diff:
        print()
        print(diff(results, json.loads(Path(args.diff).read_text())))


if __name__ == "__main__":
    main()
