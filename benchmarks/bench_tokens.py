"""Token scale on CPU (issue 18, part 2): every token a sample, out of core.

MiniLM-L6 (the bundled all-MiniLM-L6-v2) on wordfreq words of 10 languages (the language as the
label) with ``pool='tokens'``: every real token of every word is a sample. ``tokens_per_class``
keeps N/10 tokens per language; the 7 layers (embedding + 6 blocks, D = 384) are spilled to disk
while extracting (``spill_dir``), and every layer's exact kNN graph is searched out of core
(``GraphSpec(out_of_core=True)``: two row blocks in memory at a time), then Q and a
100-permutation null. Each N runs in a fresh subprocess that reports its peak RSS
(``ru_maxrss``) and the time of each phase, so the growth of both with N is measured, not assumed.

    python benchmarks/bench_tokens.py                       # N = 10k, 30k, 100k
    python benchmarks/bench_tokens.py --sizes 2000 --permutations 5      # a quick look

Writes ``benchmarks/results/tokens.json`` (atomically, after every size) and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

RESULTS = Path(__file__).resolve().parent / "results"
LANGS = ["en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "fi"]


def child(n: int, permutations: int, progress: bool) -> Dict[str, Any]:
    """One size, in this process (run by the parent in a fresh interpreter)."""
    import torch

    import dyngraph as dg
    torch.set_num_threads(2)
    per_lang = n // len(LANGS)
    # about 3 tokens per word: draw enough words that every language has per_lang tokens
    words = dg.zoo.wordfreq_words(LANGS, per_class=max(50, per_lang // 2), top_n=200_000, seed=0)
    model, tok = dg.zoo.load_minilm()
    loader = dg.zoo.text_loader(words, tok, batch_size=256)
    row: Dict[str, Any] = {"N": n, "words": len(words)}
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as spill:
        t0 = time.perf_counter()
        feats = dg.extract_features(model, loader, pool="tokens", tokens_per_class=per_lang,
                                    spill_dir=spill, progress=progress)
        row["extract_s"] = time.perf_counter() - t0
        row["rss_after_extract_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row["N"], row["layers"], row["D"] = feats.n_samples, len(feats), feats.dims
        t1 = time.perf_counter()
        prof = dg.depth_profile(feats, ["modularity"], graph=dg.GraphSpec(k=3, out_of_core=True),
                                null_permutations=permutations, progress=progress)
        row["profile_s"] = time.perf_counter() - t1
        row["Q"] = [round(v, 4) for v in prof["modularity"].values.tolist()]
        row["z"] = [round(v, 1) for v in prof["modularity:z"].values.tolist()]
        row["on_disk"] = feats.on_disk
    row["total_s"] = row["extract_s"] + row["profile_s"]
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return row


def parent(sizes: List[int], permutations: int, out: Path, progress: bool) -> List[Dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dyngraph._io import atomic_write_json
    rows: List[Dict[str, Any]] = []
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--permutations", str(permutations)]
        if not progress:
            cmd.append("--quiet")
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        atomic_write_json(out, {"info": {"load_before": load, "permutations": permutations},
                                "rows": rows})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| N tokens | words | layers × D | extract | graphs + Q + null | total | peak RSS | "
             "dense N² matrix would need |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = next(iter(r["D"].values()))
        lines.append(f"| {r['N']:,} | {r['words']:,} | {r['layers']} × {d} | "
                     f"{r['extract_s']:.1f} s | {r['profile_s']:.1f} s | {r['total_s']:.1f} s | "
                     f"{r['peak_rss_mib']:.0f} MiB | {r['N'] ** 2 * 4 / 2 ** 30:.1f} GiB |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--permutations", type=int, default=100)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "tokens.json"))
    args = ap.parse_args(argv)
    if args.child is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        print(json.dumps(child(args.child, args.permutations, not args.quiet)))
        return 0
    rows = parent(args.sizes, args.permutations, Path(args.out), not args.quiet)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
