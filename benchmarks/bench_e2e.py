"""Whole models end to end (issue 18, part 1): a whole modularity curve against its floor.

For each case it times, on the same model, data and layers, in one process:
  * **dg**: the whole curve: ``dg.extract_features`` (every layer, unpooled unless the case
    pools), then ``dg.depth_profile(['modularity'], null_permutations=100)``: every layer's kNN
    graph (k = 3, cosine, the reference preset), Q and the 100-permutation null;
  * **floor**: the forward passes alone plus one fp32 GEMM ``X Xᵀ`` per layer;
  * **authors**: the authors' per-layer step on the same features (dense cosine matrix, a Python
    heap per row, networkx; ``dyngraph.testing.reference_modularity``), Q only, no null;
  * **user**: what a user would write instead: the forward passes, scikit-learn
    ``NearestNeighbors(metric='cosine', algorithm='brute')`` per layer, a networkx graph with the
    reference weights, ``nx.community.modularity`` with the classes and with 100 permutations.

Ratios reported: dg / floor (whole curve), dg graphs+Q / GEMMs (the per-layer step without the
null), user / dg and authors / dg-graphs. Cases: the tiny CREPE (published weights) on pitch tones
at N = 600 and 5,000; torchvision ResNet-18 (random init) on the digits upsampled to 32 and
224 px at N = 500, unpooled; MiniLM-L6 on wordfreq words with ``pool='mean'`` and
``pool='tokens'`` (when the hf/models extras are installed).

    python benchmarks/bench_e2e.py                  # every case (about 15 minutes on 2 cores)
    python benchmarks/bench_e2e.py --cases crepe-600 resnet18-32
    python benchmarks/bench_e2e.py --smoke          # the plumbing in seconds
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dyngraph as dg
from dyngraph._io import atomic_write_json
from dyngraph.testing import reference_adjacency


class Case:
    """A model, the data loader that feeds it, the layers, and how to pool."""

    def __init__(self, name: str, model: torch.nn.Module, loader: Any, layers: List[str],
                 pool: Optional[str] = None, forward: Optional[Callable[[Any], Any]] = None):
        self.name, self.model, self.loader, self.layers, self.pool = name, model, loader, layers, pool
        self.forward = forward or (lambda batch: model(batch[0]))


def crepe_case(n: int) -> Case:
    ds = dg.zoo.pitch_tones(per_class=n // 10, seed=0)
    m = dg.zoo.crepe("tiny")
    return Case(f"crepe-{n}", m, DataLoader(ds, batch_size=256), dg.default_layers(m))


def resnet18_case(px: int, n: int = 500) -> Case:
    import torchvision
    x, y = dg.zoo.digits_dataset("all").tensors
    idx = dg.capture.balanced_indices(y, n // 10, seed=0)
    img = x[idx].reshape(len(idx), 1, 8, 8).float()
    img = torch.nn.functional.interpolate(img, size=(px, px), mode="bilinear").repeat(1, 3, 1, 1)
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=10)
    return Case(f"resnet18-{px}", m, DataLoader(TensorDataset(img, y[idx]), batch_size=50),
                dg.default_layers(m))


def minilm_case(pool: str, n_words: int) -> Case:
    """MiniLM-L6 (the bundled all-MiniLM-L6-v2) on wordfreq words of 10 languages, the language
    as the label; the embedding output and its 6 blocks."""
    model, tokenizer = dg.zoo.load_minilm()  # ImportError without the hf + models extras
    langs = ["en", "de", "fr", "es", "it", "nl", "pt", "pl", "sv", "fi"]
    data = dg.zoo.wordfreq_words(langs, per_class=n_words // len(langs), seed=0)
    loader = dg.zoo.text_loader(data, tokenizer, batch_size=64)
    return Case(f"minilm-{pool}-{n_words}", model, loader, dg.default_layers(model), pool=pool,
                forward=lambda batch: model(**{k: v for k, v in batch.items() if k != "labels"}))


def _forward_only(case: Case) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        case.model.eval()
        for batch in case.loader:
            case.forward(batch)
    return time.perf_counter() - t0


def _gemms(feats: Any) -> float:
    t = 0.0
    for name in feats:
        x = feats[name].float()
        t0 = time.perf_counter()
        x @ x.T
        t += time.perf_counter() - t0
    return t


def _user_script(feats: Any, y: np.ndarray, k: int, permutations: int, seed: int) -> float:
    """scikit-learn kNN + a networkx graph + networkx modularity, with the same null."""
    import networkx as nx
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    classes = np.unique(y)
    for name in feats:
        x = feats[name].numpy()
        dist, nbr = NearestNeighbors(n_neighbors=k + 1, metric="cosine",
                                     algorithm="brute").fit(x).kneighbors(x)
        g = nx.Graph()
        g.add_nodes_from(range(len(x)))
        for i in range(len(x)):
            for d, j in zip(dist[i], nbr[i]):
                if j == i:
                    continue
                w = (1 - d) / 2
                if g.has_edge(i, j):
                    g[i][j]["weight"] += w
                else:
                    g.add_edge(i, j, weight=w)
        for p in range(permutations + 1):
            lab = y if p == 0 else rng.permutation(y)
            nx.community.modularity(g, [set(np.flatnonzero(lab == c)) for c in classes])
    return time.perf_counter() - t0


def _authors(feats: Any, y: np.ndarray, k: int) -> float:
    import networkx as nx
    t0 = time.perf_counter()
    for name in feats:
        g = nx.from_numpy_array(reference_adjacency(feats[name].numpy(), k))
        nx.community.modularity(g, [set(np.flatnonzero(y == c)) for c in np.unique(y)])
    return time.perf_counter() - t0


def run_case(case: Case, permutations: int, k: int = 3, user: bool = True,
             authors: bool = True) -> Dict[str, Any]:
    row: Dict[str, Any] = {"case": case.name, "load_1min": os.getloadavg()[0]}
    import torch_geometric.data  # noqa: F401  (an import, not work: dyngraph loads PyG lazily)
    # warm-up (one batch: kernels chosen, weights paged in, allocator grown), then the floor's
    # forward passes before dyngraph's, so that neither side is the cold one
    with torch.no_grad():
        case.model.eval()
        case.forward(next(iter(case.loader)))
    row["forward_s"] = _forward_only(case)
    t0 = time.perf_counter()
    feats = dg.extract_features(case.model, case.loader, layers=case.layers, pool=case.pool,
                                progress=False)
    row["extract_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    prof = dg.depth_profile(feats, ["modularity"], graph=dg.GraphSpec(k=k),
                            null_permutations=permutations, progress=False)
    row["profile_s"] = time.perf_counter() - t1
    row["dg_s"] = time.perf_counter() - t0
    t2 = time.perf_counter()
    dg.depth_profile(feats, ["modularity"], graph=dg.GraphSpec(k=k), progress=False)
    row["graphs_q_s"] = time.perf_counter() - t2
    row["N"], row["layers"] = feats.n_samples, len(feats)
    row["D"] = list(feats.dims.values())
    row["Q"] = [round(v, 4) for v in prof["modularity"].values.tolist()]
    row["gemm_s"] = _gemms(feats)
    row["floor_s"] = row["forward_s"] + row["gemm_s"]
    y = feats.y.numpy()
    if user:
        row["user_s"] = row["forward_s"] + _user_script(feats, y, k, permutations, 0)
    if authors:
        row["authors_s"] = _authors(feats, y, k)
    row["dg/floor"] = row["dg_s"] / row["floor_s"]
    row["graphs_q/gemm"] = row["graphs_q_s"] / row["gemm_s"]
    if user:
        row["user/dg"] = row["user_s"] / row["dg_s"]
    if authors:
        row["authors/graphs_q"] = row["authors_s"] / row["graphs_q_s"]
    return row


CASES: Dict[str, Callable[[], Case]] = {
    "crepe-600": lambda: crepe_case(600),
    "crepe-5000": lambda: crepe_case(5000),
    "resnet18-32": lambda: resnet18_case(32),
    "resnet18-224": lambda: resnet18_case(224),
    "minilm-mean": lambda: minilm_case("mean", 600),
    "minilm-tokens": lambda: minilm_case("tokens", 600),
}


def table(rows: List[Dict[str, Any]]) -> str:
    out = ["| case | N | layers | dg / floor | graphs+Q / GEMMs | user / dg | authors / dg graphs+Q "
           "| dg whole curve | forward | GEMMs | user script | authors (Q only) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['case']} | not run: {r['error']} |")
            continue
        out.append(
            f"| {r['case']} | {r['N']:,} | {r['layers']} | {r['dg/floor']:.2f}× | "
            f"{r['graphs_q/gemm']:.2f}× | {r.get('user/dg', float('nan')):.2f}× | "
            f"{r.get('authors/graphs_q', float('nan')):.1f}× | {r['dg_s']:.2f} s | "
            f"{r['forward_s']:.2f} s | {r['gemm_s']:.2f} s | {r.get('user_s', float('nan')):.2f} s"
            f" | {r.get('authors_s', float('nan')):.2f} s |")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--permutations", type=int, default=100)
    ap.add_argument("--no-authors", action="store_true", help="skip the authors' pipeline")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: test the plumbing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "e2e.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    cases = {"crepe-100": lambda: crepe_case(100)} if args.smoke else \
        {c: CASES[c] for c in args.cases}
    for name, make in cases.items():
        try:
            case = make()
        except ImportError as exc:
            rows.append({"case": name, "error": str(exc)})
            continue
        rows.append(run_case(case, 5 if args.smoke else args.permutations,
                             authors=not args.no_authors))
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()},
              flush=True)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "permutations": args.permutations}
    atomic_write_json(args.out, {"info": info, "rows": rows})
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
