"""dyngraph against the authors' own code, run for real (the seed paper's reference conventions).

    git clone https://github.com/yaolu-zjut/Dynamic-Graphs-Construction /tmp/dgc
    python benchmarks/authors_check.py --authors "/tmp/dgc/Dynamic Graph Construction"

The authors' repository (Lu et al., ECCV 2022) is not shipped with dyngraph; point ``--authors``
at its ``Dynamic Graph Construction`` folder. Their files are imported unchanged, with two shims:
a stand-in for their ``args`` module (``batch_size`` = the number of samples, ``multigpu=None``)
and ``networkx.from_numpy_matrix = from_numpy_array`` (networkx 3 removed the old name; both build
the same graph from a dense array). What is checked, in one process:

1. **Hook points.** Their hook helpers (``get_inner_feature_for_smallresnet`` /
   ``get_inner_feature_for_vgg``) on their own model classes (CIFAR ResNet20/56, VGG11/19 with BN,
   their initialisation) against ``dg.default_layers(model)`` tapped by ``dg.LayerTaps``: the same
   modules in the same order, and the captured tensors equal bit for bit.
2. **Q on every layer graph.** Their per-layer step (``calculate_cosine_similarity_matrix`` →
   ``directly_return_undirected_weighted_network`` → ``calculate_modularity``) against
   ``dg.GraphSpec().build`` + ``dg.modularity``: |ΔQ| and the largest difference between the two
   adjacency matrices. Graphs: every hook point of their four networks on the bundled digits
   (upsampled to 3 × 32 × 32, N = 200), every layer of dyngraph's own ``DigitsCNN`` (untrained and
   trained) and ``SignalCNN`` (MNIST-1D), and synthetic sets with exact ties (repeated and
   power-of-two-scaled rows).
3. **Pruned networks.** ``dg.prune.prune_layers`` on their ResNet56, keeping [2, 3, 6] blocks per
   stage, against their ``ResNet(BasicBlock, [2, 3, 6])``; on their VGG19-BN, removing the last
   three convs of stages 4 and 5, against their ``cvgg19_6`` (``model/diy_cvgg.py``): the same
   ``state_dict`` keys and shapes, equal outputs once the pruned weights are loaded into theirs,
   and their hook list for the pruned network equal to ``dg.default_layers``. Parameter and FLOP
   reductions by ``dg.prune.count_params`` / ``count_flops`` (torch's FlopCounterMode).
4. **The two cases no option reproduces**: a row with fewer than k other rows of positive cosine
   (they pick the node itself, weight 0; dyngraph takes a negative-cosine neighbour and refuses
   the graph in ``dg.modularity``), and an all-zero row (they keep an isolated node; dyngraph
   refuses it under cosine).

Prints a summary and writes ``benchmarks/results/authors_check.json``. About a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dyngraph as dg
from dyngraph._io import atomic_write_json

K = 3
ARGS = types.SimpleNamespace(batch_size=0, multigpu=None, topk=K)


def load_authors(folder: Path) -> Dict[str, Any]:
    """Imports the authors' files by path (their package ``__init__`` files import DALI)."""
    import networkx as nx
    if not hasattr(nx, "from_numpy_matrix"):
        nx.from_numpy_matrix = nx.from_numpy_array  # removed in networkx 3: same graph
    sys.modules["args"] = types.SimpleNamespace(args=ARGS)  # type: ignore[assignment]
    mods = {}
    for name, rel in [("similarity", "utils/calculate_similarity.py"),
                      ("indicators", "utils/network_indicators.py"),
                      ("network", "draw_networkx.py"), ("hooks", "utils/design_for_hook.py"),
                      ("resnet", "model/samll_resnet.py"), ("vgg", "model/VGG_cifar.py"),
                      ("diy_vgg", "model/diy_cvgg.py")]:
        path = folder / rel
        if not path.exists():
            raise SystemExit(f"--authors {folder}: {rel} not found; point it at the "
                             f"'Dynamic Graph Construction' folder of the authors' repository")
        spec = importlib.util.spec_from_file_location(f"authors_{name}", path)
        mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        mods[name] = mod
    return mods


def their_q(a: Dict[str, Any], x: torch.Tensor, y: List[int]):
    """The authors' per-layer step on rows ``x`` (their code, their prints swallowed)."""
    ARGS.batch_size = len(x)
    with contextlib.redirect_stdout(io.StringIO()):
        _, edges = a["similarity"].calculate_cosine_similarity_matrix(x, K)
        g, adj = a["network"].directly_return_undirected_weighted_network(edges)
        q = a["indicators"].calculate_modularity(g, y, class_num=max(y) + 1)
    return float(q), adj


def dg_q(x: torch.Tensor, y: torch.Tensor):
    g = dg.GraphSpec(k=K).build(x, y)
    q = dg.modularity(g.edge_index, y, g.edge_weight)
    adj = np.zeros((len(x), len(x)))
    adj[g.edge_index[0].numpy(), g.edge_index[1].numpy()] = g.edge_weight.double().numpy()
    return float(q), adj


def compare(a, name: str, x: torch.Tensor, y: torch.Tensor, ours=None) -> Dict[str, Any]:
    """One layer graph: the authors' Q on their rows ``x``, dyngraph's on ``ours`` (default x)."""
    x = x.reshape(len(x), -1)
    ours = x if ours is None else ours.reshape(len(ours), -1)
    qa, adj_a = their_q(a, x, y.tolist())
    qd, adj_d = dg_q(ours, y)
    return {"graph": name, "n": len(x), "dim": int(x.shape[1]), "q_authors": qa, "q_dg": qd,
            "abs_dq": abs(qa - qd), "max_abs_dadj": float(np.abs(adj_a - adj_d).max())}


def their_features(a, model, arch: str, x: torch.Tensor) -> List[torch.Tensor]:
    feats: List[torch.Tensor] = []

    def hook(module, inp, out):  # their hook, as in get_embedding_cifar.py
        feats.append(out.clone().detach())

    with contextlib.redirect_stdout(io.StringIO()):
        if arch.startswith("resnet"):
            handles = a["hooks"].get_inner_feature_for_smallresnet(model, hook, arch)
        else:
            handles = a["hooks"].get_inner_feature_for_vgg(model, hook, arch)
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return feats


def their_hook_names(a, model, arch: str) -> List[str]:
    """The module names their helper hooks, in hook order."""
    names = {id(m): n for n, m in model.named_modules()}
    got: List[str] = []
    real = torch.nn.Module.register_forward_hook

    def spy(self, hook, *args, **kw):
        got.append(names[id(self)])
        return real(self, hook, *args, **kw)

    torch.nn.Module.register_forward_hook = spy  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fn = (a["hooks"].get_inner_feature_for_smallresnet if arch.startswith("resnet")
                  else a["hooks"].get_inner_feature_for_vgg)
            for h in fn(model, lambda *_: None, arch):
                h.remove()
    finally:
        torch.nn.Module.register_forward_hook = real  # type: ignore[method-assign]
    return got


def digits32(n_per_class: int):
    x, y = dg.zoo.digits_dataset("test").tensors
    idx = torch.cat([torch.nonzero(y == c).flatten()[:n_per_class] for c in range(10)])
    x32 = F.interpolate(x[idx], size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return x32, y[idx]


def check_their_networks(a, graphs: List[Dict[str, Any]], n_per_class: int) -> List[Dict[str, Any]]:
    x, y = digits32(n_per_class)
    nets = [("resnet20", lambda: a["resnet"].resnet20(10)),
            ("resnet56", lambda: a["resnet"].resnet56(10)),
            ("cvgg11_bn", lambda: a["vgg"].cvgg11_bn(10, batch_norm=True)),
            ("cvgg19_bn", lambda: a["vgg"].cvgg19_bn(10, batch_norm=True))]
    hooks = []
    for arch, make in nets:
        torch.manual_seed(0)
        model = make()
        theirs = their_hook_names(a, model, arch)
        ours = dg.default_layers(model)
        feats_a = their_features(a, model, arch, x)
        with dg.LayerTaps(model, ours) as taps:
            out = taps(x)
        equal = len(feats_a) == len(ours) and all(
            torch.equal(fa.reshape(len(x), -1), out[n].reshape(len(x), -1))
            for fa, n in zip(feats_a, ours))
        hooks.append({"network": f"authors' {arch}", "their_hooks": len(theirs),
                      "same_names": theirs == ours, "tensors_equal": equal})
        for fa, n in zip(feats_a, ours):
            graphs.append(compare(a, f"authors' {arch} / {n}", fa, y, out[n]))
    return hooks


def check_dg_networks(a, graphs: List[Dict[str, Any]], epochs: int) -> None:
    x, y = dg.zoo.digits_dataset("test").tensors
    train = torch.utils.data.DataLoader(dg.zoo.digits_dataset("train"), batch_size=64,
                                        shuffle=True, generator=torch.Generator().manual_seed(0))
    xs, ys = dg.zoo.mnist1d_dataset("test").tensors
    xs, ys = xs[:300], ys[:300]
    for name, model, data, train_it in [
            ("DigitsCNN untrained", dg.zoo.build_model("cnn", "digits"), (x, y), False),
            (f"DigitsCNN trained {epochs} epochs", dg.zoo.build_model("cnn", "digits"), (x, y),
             True),
            ("SignalCNN (MNIST-1D) untrained", dg.zoo.build_model("cnn", "mnist1d"), (xs, ys),
             False)]:
        if train_it:
            dg.zoo.train_classifier(model, train, epochs=epochs, progress=False)
        layers = dg.default_layers(model) + dg.default_layers(model, point="post")
        with dg.LayerTaps(model, layers) as taps:
            out = taps(data[0])
        for n in layers:
            graphs.append(compare(a, f"dyngraph {name} / {n}", out[n], data[1]))


def check_ties(a, graphs: List[Dict[str, Any]]) -> None:
    """Synthetic sets whose kNN lists have exact ties: the tie rule decides the graph."""
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(40, 12, generator=g) ** 3            # non-negative, like post-ReLU
        y0 = torch.arange(40) % 4
        reps = 1 + torch.randint(0, 4, (40,), generator=g)       # 1–4 copies of each row
        x = base.repeat_interleave(reps, 0)
        y = y0.repeat_interleave(reps, 0)
        x = x * 2.0 ** torch.randint(-2, 3, (len(x), 1), generator=g)  # exact scaled copies
        graphs.append(compare(a, f"ties: repeated and 2^k-scaled rows, seed {seed}", x, y))
        q = torch.randint(0, 3, (120, 6), generator=g).float()  # few levels: many equal rows
        q[q.sum(1) == 0, 0] = 1.0
        graphs.append(compare(a, f"ties: 3-level integer rows, seed {seed}", q,
                              torch.randint(0, 3, (120,), generator=g)))


def check_pruned(a) -> Dict[str, Any]:
    res: Dict[str, Any] = {}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    one = x[:1]
    torch.manual_seed(0)
    full = a["resnet"].resnet56(10)
    keep = (2, 3, 6)
    drop = [f"layer{s + 1}.{i}" for s, k in enumerate(keep) for i in range(k, 9)]
    pruned = dg.prune.prune_layers(full, drop, example_input=one)
    theirs = a["resnet"].ResNet(a["resnet"].BasicBlock, list(keep), num_classes=10)
    res["resnet56"] = _same_network(a, pruned, theirs, x, "resnet56", keep)
    p0, p1 = dg.prune.count_params(full), dg.prune.count_params(pruned)
    f0, f1 = dg.prune.count_flops(full, one), dg.prune.count_flops(pruned, one)
    res["resnet56"].update(params=[p0, p1], flops=[f0, f1], params_reduction=1 - p1 / p0,
                           flops_reduction=1 - f1 / f0)

    torch.manual_seed(0)
    full = a["vgg"].cvgg19_bn(10, batch_norm=True)
    drop = [f"features.{i}" for i in (30, 33, 36, 43, 46, 49)]   # convs 2-4 of stages 4 and 5
    pruned = dg.prune.prune_layers(full, drop, example_input=one)
    theirs = a["diy_vgg"].cvgg19_6(10)
    res["vgg19"] = _same_network(a, pruned, theirs, x, "cvgg19_6", None)
    p0, p1 = dg.prune.count_params(full), dg.prune.count_params(pruned)
    f0, f1 = dg.prune.count_flops(full, one), dg.prune.count_flops(pruned, one)
    res["vgg19"].update(removed=drop, params=[p0, p1], flops=[f0, f1],
                        params_reduction=1 - p1 / p0, flops_reduction=1 - f1 / f0)
    return res


def _same_network(a, pruned, theirs, x, arch: str, keep) -> Dict[str, Any]:
    sa, sb = pruned.state_dict(), theirs.state_dict()
    same_layout = list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)
    out_equal = False
    if same_layout:
        theirs.load_state_dict(sa)
        pruned.eval(), theirs.eval()
        with torch.no_grad():
            out_equal = torch.equal(pruned(x), theirs(x))
    if keep is not None:  # their hook list for a pruned ResNet56 reads cfgs[arch]
        a["hooks"].cfgs["resnet56_pruned"] = list(keep)
        arch = "resnet56_pruned"
    hooks_equal = their_hook_names(a, theirs, arch) == dg.default_layers(pruned)
    return {"same_state_dict_layout": same_layout, "outputs_equal": bool(out_equal),
            "their_hooks_equal_default_layers": hooks_equal}


def check_differences(a) -> List[Dict[str, Any]]:
    out = []
    # Row 0 has a positive cosine with one row only (k = 3): they fill the list with node 0
    # itself (weight 0, no edge); dyngraph takes negative-cosine neighbours.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.2]] + [[-1.0, 0.1 * i] for i in range(-3, 4)])
    y = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1, 1])
    qa, _ = their_q(a, x, y.tolist())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            g = dg.GraphSpec(k=K).build(x, y)
            dg.modularity(g.edge_index, y, g.edge_weight)
            ours = "accepted"
        except ValueError as e:
            ours = f"ValueError: {str(e).splitlines()[0][:160]}"
    out.append({"case": "a row with fewer than k other rows of positive cosine",
                "authors": f"Q = {qa:.4f} (self picked, weight 0)", "dyngraph": ours,
                "warnings": [str(m.message).splitlines()[0][:160] for m in w]})
    x = torch.rand(12, 5, generator=torch.Generator().manual_seed(0))
    x[3] = 0.0
    y = torch.arange(12) % 3
    qa, _ = their_q(a, x, y.tolist())
    try:
        dg.GraphSpec(k=K).build(x, y)
        ours = "accepted"
    except ValueError as e:
        ours = f"ValueError: {str(e).splitlines()[0][:160]}"
    out.append({"case": "an all-zero row", "authors": f"Q = {qa:.4f} (row 3 an isolated node)",
                "dyngraph": ours})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--authors", required=True,
                    help="the 'Dynamic Graph Construction' folder of yaolu-zjut/"
                         "Dynamic-Graphs-Construction")
    ap.add_argument("--per-class", type=int, default=20, help="digits per class for their nets")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of the DigitsCNN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "authors_check.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    a = load_authors(Path(args.authors))
    graphs: List[Dict[str, Any]] = []
    hooks = check_their_networks(a, graphs, args.per_class)
    check_dg_networks(a, graphs, args.epochs)
    check_ties(a, graphs)
    pruned = check_pruned(a)
    diffs = check_differences(a)
    worst = max(graphs, key=lambda r: r["abs_dq"])
    summary = {"graphs": len(graphs), "max_abs_dq": worst["abs_dq"], "worst_graph": worst["graph"],
               "max_abs_dadj": max(r["max_abs_dadj"] for r in graphs),
               "graphs_with_dq_zero": sum(r["abs_dq"] == 0 for r in graphs),
               "seconds": time.perf_counter() - t0}
    for h in hooks:
        print(f"hook points, {h['network']}: {h['their_hooks']} hooks, same modules "
              f"{h['same_names']}, tensors bit-equal {h['tensors_equal']}")
    print(f"Q on {summary['graphs']} layer graphs: max |ΔQ| = {summary['max_abs_dq']:.1e} "
          f"({summary['worst_graph']}), exactly equal on {summary['graphs_with_dq_zero']}; "
          f"max |ΔA| = {summary['max_abs_dadj']:.1e}")
    for name, r in pruned.items():
        print(f"pruned {name}: same state_dict layout {r['same_state_dict_layout']}, outputs "
              f"equal {r['outputs_equal']}, hooks {r['their_hooks_equal_default_layers']}; "
              f"params {r['params'][0]:,} -> {r['params'][1]:,} (-{100 * r['params_reduction']:.2f}%)"
              f", FLOPs {r['flops'][0]:,} -> {r['flops'][1]:,} (-{100 * r['flops_reduction']:.2f}%)")
    for d in diffs:
        print(f"{d['case']}: authors {d['authors']}; dyngraph {d['dyngraph']}")
    print(f"{summary['seconds']:.0f} s")
    atomic_write_json(args.out, {"summary": summary, "hooks": hooks, "pruned": pruned,
                                 "differences": diffs, "graphs": graphs,
                                 "threads": args.threads, "torch": torch.__version__})
    ok = (all(h["same_names"] and h["tensors_equal"] for h in hooks)
          and all(r["same_state_dict_layout"] and r["outputs_equal"] for r in pruned.values()))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
