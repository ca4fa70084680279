"""Runs the tutorial scripts with their pages' commands and copies their figures into the docs.

    python examples/tutorial_figures.py --run --runs runs/tutorials     # all scripts, ~1 h on 2 cores
    python examples/tutorial_figures.py --run --only prune              # one script
    python examples/tutorial_figures.py --runs runs/tutorials           # copy the figures only

Each tutorial page (``docs/tutorials/``) gives the command that produced its numbers and figures;
``RUNS`` below repeats them with ``--out`` under ``--runs``. ``--run`` runs them one after the
other, keeps each one's output in ``<runs>/<name>.log`` and its wall time in
``<runs>/times.json``. Then every figure of ``FIGURES`` is copied from its run folder to
``docs/img/tutorials/`` at ``--dpi`` (the scripts save at 120 dpi; the copy is resampled and
reduced to a palette of ``--colors`` colours, so the committed files stay small).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAVED_DPI = 120  # dg.outputs.save_figure's default, which every script uses

#: name -> (script, arguments besides --out): the commands the tutorial pages give.
RUNS = {
    "modularity_curve": ("modularity_curve.py", ["--example", "digits", "--arch", "cnn",
                                                 "--quiet"]),
    "prune": ("prune.py", []),
    "compare_models": ("compare_models.py", []),
    "neural_collapse_curve": ("neural_collapse_curve.py", ["--bench-wide"]),
    "minority_collapse": ("minority_collapse.py", ["--quiet"]),
    "intrinsic_dimension": ("intrinsic_dimension.py", ["--quiet"]),
    "neuron_modularity": ("neuron_modularity.py", ["--quiet"]),
    "transformer_curve": ("transformer_curve.py", []),
    "compare_transformers": ("compare_transformers.py", []),
    "crepe_curve": ("crepe_curve.py", ["--quiet"]),
    "llm_depth_pruning": ("llm_depth_pruning.py", []),
}

#: docs/img/tutorials/<name> -> (run, path inside the run's --out folder[, dpi of this copy])
FIGURES = {
    "modularity_curve.png": ("modularity_curve", "curves.png"),
    "prune_curve.png": ("prune", "curve.png"),
    "compare_digits_grid_cka.png": ("compare_models", "digits_figures/grid_cka.png"),
    "compare_mnist1d_grid_mutual_knn.png": ("compare_models",
                                            "mnist1d_figures/grid_mutual_knn.png"),
    "communities_digits_flow.png": ("compare_models", "figures_digits_cnn-seed0/flow.png"),
    "communities_digits_profile.png": ("compare_models",
                                       "figures_digits_cnn-seed0/profile.png"),
    "communities_digits_untrained_profile.png": (
        "compare_models", "figures_digits_cnn-untrained/profile.png"),
    "nc_over_epochs.png": ("neural_collapse_curve", "nc_over_epochs.png"),
    "nc_per_layer.png": ("neural_collapse_curve", "nc_per_layer.png"),
    "minority_cosine_vs_ratio.png": ("minority_collapse", "minority_cosine_vs_ratio.png"),
    "minority_last_layer_vs_lpm.png": ("minority_collapse", "last_layer_vs_lpm.png"),
    "id_twonn_trained_vs_untrained.png": ("intrinsic_dimension",
                                          "id_twonn_trained_vs_untrained.png"),
    "id_participation_ratio_trained_vs_untrained.png": (
        "intrinsic_dimension", "id_participation_ratio_trained_vs_untrained.png"),
    "id_profiles_trained.png": ("intrinsic_dimension", "profiles_trained.png"),
    "id_blocks_trained.png": ("intrinsic_dimension", "blocks_trained.png"),
    "transformer_curve.png": ("transformer_curve", "curves.png"),
    "compare_transformers_cka_finetuned.png": ("compare_transformers", "cka_finetuned.png"),
    "compare_transformers_cka_cnn.png": ("compare_transformers", "cka_cnn.png"),
    "crepe_curves.png": ("crepe_curve", "curves.png"),
    # thousands of edges: smaller copies
    "neurons_mlp_weights_partition.png": ("neuron_modularity",
                                          "mlp_trained_weights/partition.png", 72),
    "neurons_cnn_activations_partition.png": ("neuron_modularity",
                                              "cnn_trained_activations/partition.png", 72),
    "llm_pruning_perplexity.png": ("llm_depth_pruning", "perplexity.png"),
}


def run_all(runs: Path, only) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    times_path = runs / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    for name, (script, args) in RUNS.items():
        if only and name not in only:
            continue
        cmd = [sys.executable, str(ROOT / "examples" / script), *args, "--out", str(runs / name)]
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        with open(runs / f"{name}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - t0
        times[name] = {"seconds": round(seconds, 1), "returncode": rc,
                       "load_average": os.getloadavg()}
        times_path.write_text(json.dumps(times, indent=2) + "\n")
        print(f"  exit {rc} after {seconds:.0f} s (log: {runs / name}.log)", flush=True)


def copy_figures(runs: Path, dest: Path, dpi: float, colors: int, only) -> None:
    from PIL import Image
    dest.mkdir(parents=True, exist_ok=True)
    for name, (run, rel, *own_dpi) in FIGURES.items():
        if only and run not in only:
            continue
        src = runs / run / rel
        if not src.exists():
            print(f"  missing {src}")
            continue
        with Image.open(src) as img:
            img = img.convert("RGB")
            scale = (own_dpi[0] if own_dpi else dpi) / SAVED_DPI
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)),
                                 Image.Resampling.LANCZOS)
            img.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(
                dest / name, optimize=True)
        print(f"  {dest / name}: {(dest / name).stat().st_size:,} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/tutorials", help="one --out folder per script")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "tutorials"),
                    help="where the figures go")
    ap.add_argument("--run", action="store_true", help="run the scripts first")
    ap.add_argument("--only", nargs="+", choices=sorted(RUNS), help="these runs only")
    ap.add_argument("--dpi", type=float, default=90)
    ap.add_argument("--colors", type=int, default=256, help="palette size of the copies")
    args = ap.parse_args()
    runs = Path(args.runs)
    if args.run:
        run_all(runs, args.only)
    copy_figures(runs, Path(args.out), args.dpi, args.colors, args.only)


if __name__ == "__main__":
    main()
