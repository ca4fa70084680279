"""The GPU path (issue 18, part 3): exact kNN graphs at N = 10⁵–10⁶, D = 768 on one GPU.

For each N it times, on the same data in one process:
  * the roofline: the fp32 GEMM of the same size (``x @ xᵀ`` in the row blocks dyngraph uses,
    scores discarded: the floor of any exact search),
  * dyngraph's exact search in fp32 (``precision='full'``),
  * bf16 and TF32 candidates followed by the exact fp32 re-rank, with their recall against fp32
    (1.0 required),
  * faiss-gpu's ``IndexFlatIP`` (exact) where faiss with GPU support is installed.

    python benchmarks/bench_gpu.py                       # CUDA: N = 1e5, 3e5, 1e6, D = 768
    python benchmarks/bench_gpu.py --smoke               # the plumbing, on CPU, in seconds

Writes ``benchmarks/results/gpu.json`` (atomically) and prints a markdown table, ratios first.
Goals on an H100: N = 10⁶ fp32 within 1.5× of the fp32 GEMM time; bf16 + re-rank under 5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dyngraph as dg
from dyngraph._io import atomic_write_json


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple:
    """(median seconds over ``repeats`` runs after one warm-up, last result)."""
    out = fn()
    _sync(device)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2], out


def gemm_floor(x: torch.Tensor, block: int) -> None:
    """Every score of ``x @ xᵀ`` in fp32, one row block at a time (results discarded)."""
    for start in range(0, x.shape[0], block):
        x[start:start + block] @ x.T


def clustered(n: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Unit rows around 100 centres: realistic neighbour structure (not uniform noise)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(100, d, generator=g)
    x = centres[torch.randint(0, 100, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(device)


def faiss_gpu_search(x: torch.Tensor, k: int) -> Callable[[], Any]:
    import faiss  # type: ignore[import-not-found]
    if not hasattr(faiss, "StandardGpuResources"):
        raise ImportError("faiss has no GPU support here")
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, x.shape[1])
    arr = x.cpu().numpy()
    index.add(arr)
    return lambda: index.search(arr, k + 1)


def one_size(x: torch.Tensor, k: int, repeats: int) -> Dict[str, Any]:
    """The timings and recalls of one ``[N, D]`` input."""
    n, dim = x.shape
    device = x.device
    block = max(1, min(n, (1 << 28) // max(n, 1)))  # a [block, N] fp32 tile ≤ 1 GiB
    row: Dict[str, Any] = {"N": n, "D": dim, "k": k}
    row["gemm_s"], _ = timed(lambda: gemm_floor(x, block), device, repeats)
    row["fp32_s"], (_, ref) = timed(
        lambda: dg.graphs.nearest_neighbors(x, k, precision="full"), device, repeats)
    for prec in ("bf16", "tf32"):
        t, (_, idx) = timed(lambda p=prec: dg.graphs.nearest_neighbors(x, k, precision=p),
                            device, repeats)
        same = (torch.sort(idx, 1).values == torch.sort(ref, 1).values).all(1)
        row[f"{prec}_s"], row[f"{prec}_recall"] = t, float(same.float().mean())
    if device.type == "cuda":
        try:
            row["faiss_gpu_s"], _ = timed(faiss_gpu_search(x, k), device, repeats)
        except ImportError as exc:
            row["faiss_gpu"] = f"not run: {exc}"
    row["fp32/gemm"] = row["fp32_s"] / row["gemm_s"]
    row["bf16/gemm"] = row["bf16_s"] / row["gemm_s"]
    return row


def run(sizes: List[int], dim: int, k: int, device: torch.device, repeats: int) -> List[Dict]:
    rows = []
    for n in sizes:
        rows.append(one_size(clustered(n, dim, device), k, repeats))
        print(json.dumps(rows[-1]), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def table(rows: List[Dict]) -> str:
    head = ("| N | D | fp32/GEMM | bf16/GEMM | GEMM | dg fp32 | dg bf16+re-rank | dg tf32+re-rank "
            "| recall bf16 | recall tf32 | faiss-gpu |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        faiss = f"{r['faiss_gpu_s']:.2f} s" if "faiss_gpu_s" in r else "—"
        lines.append(f"| {r['N']:,} | {r['D']} | {r['fp32/gemm']:.2f}× | {r['bf16/gemm']:.2f}× | "
                     f"{r['gemm_s']:.3f} s | {r['fp32_s']:.3f} s | {r['bf16_s']:.3f} s | "
                     f"{r['tf32_s']:.3f} s | {r['bf16_recall']:.4f} | {r['tf32_recall']:.4f} | "
                     f"{faiss} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on whatever device there is (tests the plumbing)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.json"))
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.sizes, args.dim, args.repeats = [600, 1500], 32, 1
    elif device.type != "cuda":
        print("bench_gpu: no CUDA device here; pass --smoke to test the plumbing on CPU",
              file=sys.stderr)
        return 2
    rows = run(args.sizes, args.dim, args.k, device, args.repeats)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or "cpu", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "smoke": args.smoke,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    atomic_write_json(args.out, {"info": info, "rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
