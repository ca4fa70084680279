"""Peak memory of extraction: in memory vs spilled to disk (memory-mapped), then snapshots.

Each configuration runs in a fresh subprocess and reports its peak RSS (``ru_maxrss``), so the
numbers are not polluted by earlier runs. The model is torchvision's resnet18 (random weights) on
random 3×64×64 inputs: its nine default layers hold ~126k floats per sample when flattened, so
N = 2,000 samples are ~1 GB of features.

    python benchmarks/bench_extract.py [--n 2000] [--size 64]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, resource, sys, time, tempfile, torch
sys.path.insert(0, {root!r})
import dyngraph as dg
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18
mode, n, size = {mode!r}, {n}, {size}
torch.manual_seed(0)
ds = TensorDataset(torch.randn(n, 3, size, size), torch.arange(n) % 10)
model = resnet18(num_classes=10).eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
spill = tempfile.mkdtemp() if mode != "memory" else None
feats = dg.extract_features(model, DataLoader(ds, batch_size=50), spill_dir=spill,
                            spill_dtype="float16" if mode == "disk16" else "float32", progress=False)
t_extract = time.perf_counter() - t0
peak_extract = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seq = dg.DynamicGraph.from_features(feats, k=3, progress=False)
q = seq.modularity().values.tolist()
peak_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bytes_feats = sum(d * n * 4 for d in feats.dims.values())
print(json.dumps({{"mode": mode, "n": n, "features_MB_fp32": bytes_feats / 2**20,
                  "largest_layer_MB": max(feats.dims.values()) * n * 4 / 2**20,
                  "rss_before_MB": base / 1024, "peak_extract_MB": peak_extract / 1024,
                  "peak_total_MB": peak_all / 1024, "extract_s": t_extract,
                  "total_s": time.perf_counter() - t0, "q_last": q[-1]}}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    rows = []
    for mode in ("memory", "disk", "disk16"):
        code = CHILD.format(root=str(ROOT), mode=mode, n=args.n, size=args.size)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:])
            return 1
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print("| mode | N | features (fp32) | largest layer | RSS before | peak during extraction |"
          " peak incl. snapshots | extract | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['n']} | {r['features_MB_fp32']:.0f} MB | "
              f"{r['largest_layer_MB']:.0f} MB | {r['rss_before_MB']:.0f} MB | "
              f"{r['peak_extract_MB']:.0f} MB | {r['peak_total_MB']:.0f} MB | "
              f"{r['extract_s']:.1f} s | {r['total_s']:.1f} s |")
    from dyngraph._io import atomic_write_json
    atomic_write_json(RESULTS / "extract_memory.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
