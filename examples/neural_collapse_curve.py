"""Neural collapse layer by layer and over training, on the bundled digits.

1. Trains a small MLP on digits with a :class:`CollapseCallback` that records NC1–NC4 of every
   layer on the (deterministic) training set each ``--every`` epochs: the terminal phase of
   training, seen per layer.
2. On the test set, one ``dg.depth_profile`` call scores every layer with modularity and the
   registered collapse measures (``'nc1'``, ``'cdnv'``, ...); the profile is logged to TensorBoard
   (``--out/tb``) and drawn to ``nc_per_layer.png``.
3. ``--bench-wide``: time and memory of NC1 on a wide layer (a 64-channel 8×8 conv, flattened:
   D = 4096), streamed batch by batch, exact class-mean-subspace path (two passes, O(C·D))
   against the naive D × D computation (one pass, D × D scatter + eigendecomposition). Each runs
   in a fresh process so its peak RSS can be measured.

Run::

    python examples/neural_collapse_curve.py --out runs/nc --bench-wide

``--quick`` trains for 3 epochs on a small MLP (a smoke test, seconds).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import dyngraph as dg

#: The per-layer collapse measures scored beside modularity on the test set.
NC_MEASURES = ["nc1", "nc1_trace", "nc2_etf", "cdnv", "ncc_accuracy"]


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` as JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def train_with_callback(args, train_loader, probe_loader, test_loader):
    torch.manual_seed(args.seed)
    model = dg.zoo.DigitsMLP(depth=args.depth, width=args.width)
    writer = None
    if not args.no_tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(Path(args.out) / "tb"))
    # every hidden layer after its ReLU, the classifier's input (NC3/NC4 there) and the logits
    fc = dg.list_layers(model, nn.Linear)[-1]
    layers = [n for n in dg.default_layers(model, point="post") if n != fc]
    layers = [n for n in layers if n != layers[-1]] + [f"{fc}:input", fc]
    cb = dg.measures.CollapseCallback(probe_loader, layers=layers, writer=writer,
                                      path=Path(args.out) / "collapse_epochs.json")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    cb(model, epoch=0)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for xb, yb in train_loader:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch % args.every == 0 or epoch == args.epochs:
            cb(model, epoch=epoch)
    acc = dg.prune.evaluate(model, test_loader)
    return model, cb, writer, acc


def _bench_child(method: str, channels: int, batch_size: int, queue) -> None:
    """One method in a fresh process: stream a wide conv layer's features batch by batch into a
    :class:`NeuralCollapseAccumulator` (no features are stored) and measure time and peak RSS."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels),
                          nn.ReLU(), nn.Flatten()).eval()
    ds = dg.zoo.digits_dataset("all")
    loader = DataLoader(ds, batch_size=batch_size)
    with torch.no_grad():
        layer(ds.tensors[0][:batch_size])                     # warm up allocator and kernels
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    acc = dg.measures.NeuralCollapseAccumulator(10, method=method)
    with torch.no_grad():
        for xb, yb in loader:
            acc.update(layer(xb), yb)
        if acc.needs_second_pass:
            acc.next_pass()
            for xb, yb in loader:
                acc.update(layer(xb), yb)
    res = acc.compute()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"method": method, "seconds": seconds, "peak_rss_delta_mib": (peak - base) / 1024,
               "state_mib": acc.nbytes / 2 ** 20, "nc1": res["nc1"], "dim": res["dim"],
               "n_samples": res["n_samples"]})


def bench_wide(channels: int = 64, batch_size: int = 128):
    ctx = mp.get_context("spawn")
    rows = []
    for method in ("subspace", "full"):
        q = ctx.Queue()
        p = ctx.Process(target=_bench_child, args=(method, channels, batch_size, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"the {method!r} benchmark process failed (exit code {p.exitcode})")
        rows.append(q.get(timeout=60))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=5e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=3, help="kNN k of the modularity curve")
    p.add_argument("--bench-wide", action="store_true")
    p.add_argument("--wide-channels", type=int, default=64)
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="3 epochs of a small MLP, no benchmark")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.every, args.depth, args.width, args.bench_wide = 3, 1, 2, 32, False
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_loader, test_loader = dg.zoo.example_loaders("digits", seed=args.seed)
    probe_loader = DataLoader(train_loader.dataset, batch_size=256)   # deterministic, no shuffle

    t0 = time.time()
    model, cb, writer, acc = train_with_callback(args, train_loader, probe_loader, test_loader)
    print(f"trained DigitsMLP(depth={args.depth}, width={args.width}) for {args.epochs} epochs "
          f"in {time.time() - t0:.0f}s: test accuracy {acc:.4f}")

    hist = cb.history
    pen = hist.default_layer                     # the classifier's input
    print(f"\nOver training (training set, layer {pen!r}, the classifier's input):")
    print("| epoch | NC1 | NC2 equinorm | NC2 equiangular | NC2 max-angle | NC3 | NC4 | NCC acc |")
    print("|---|---|---|---|---|---|---|---|")
    for e in hist.epochs:
        r = hist[e].layer(pen)
        print(f"| {e} | {r['nc1']:.4f} | {r['nc2_equinorm']:.4f} | "
              f"{r['nc2_equiangular']:.4f} | {r['nc2_maxangle']:.4f} | {r['nc3']:.4f} | "
              f"{r['nc4']:.4f} | {r['ncc_accuracy']:.4f} |")
    print("\nNC1 per layer over training (training set):")
    names = hist[hist.epochs[-1]].layers
    print("| epoch | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    nc1 = {n: hist.series("nc1", n) for n in names}
    for i, e in enumerate(hist.epochs):
        print(f"| {e} | " + " | ".join(f"{float(nc1[n][i]):.3f}" for n in names) + " |")
    dg.plot(hist, out / "nc_over_epochs.png")

    # per layer on the test set: modularity and the collapse measures in one run of the runner
    feats = dg.extract_features(model, test_loader, layers=names, progress=False)
    prof = dg.depth_profile(feats, ["modularity"] + NC_MEASURES, graph=dg.GraphSpec(k=args.k),
                            progress=False)
    last = dg.measures.neural_collapse(feats, classifier=model.net[-1], classifier_layer=pen)[pen]
    print("\nPer layer on the test set:")
    print("| layer | modularity Q | NC1 | NC1 (trace) | NC2 ETF dist | CDNV | NCC acc |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        r = prof.layer(n)
        print(f"| {n} | {r['modularity']:.4f} | {r['nc1']:.4f} | {r['nc1_trace']:.4f} | "
              f"{r['nc2_etf']:.4f} | {r['cdnv']:.4f} | {r['ncc_accuracy']:.4f} |")
    print(f"classifier layer {pen!r} on the test set: NC3 = {last['nc3']:.4f}, "
          f"NC4 = {last['nc4']:.4f}, NC2(W) equinorm = {last['nc2_equinorm_w']:.4f}, "
          f"max-angle = {last['nc2_maxangle_w']:.4f}")
    if writer is not None:
        dg.log(writer, prof, prefix="dyngraph/test")
        writer.close()
    fig = dg.plot(prof, metrics=["nc1", "modularity"], title="test set")
    fig.axes[0].set_yscale("log")
    dg.outputs.save_figure(fig, out / "nc_per_layer.png")
    summary = {"test_accuracy": acc, "epochs": hist.to_dict(), "test_profile": prof.to_dict(),
               "classifier_layer": last}

    if args.bench_wide:
        rows = bench_wide(args.wide_channels)
        sub, full = rows
        print(f"\nWide layer (conv {args.wide_channels}×8×8 flattened, D = {sub['dim']}, "
              f"N = {sub['n_samples']}, untrained, 1 thread):")
        print("| method | passes | time (s) | accumulated state (MiB) | peak RSS increase (MiB) "
              "| NC1 |")
        print("|---|---|---|---|---|---|")
        for r, passes in zip(rows, (2, 1)):
            print(f"| {r['method']} | {passes} | {r['seconds']:.2f} | {r['state_mib']:.2f} | "
                  f"{r['peak_rss_delta_mib']:.0f} | {r['nc1']:.10g} |")
        print(f"ratio naive/subspace: time {full['seconds'] / sub['seconds']:.1f}×, state "
              f"{full['state_mib'] / sub['state_mib']:.0f}×; "
              f"relative NC1 difference {abs(full['nc1'] - sub['nc1']) / sub['nc1']:.1e}")
        summary["bench_wide"] = rows
    write_json(out / "neural_collapse_curve.json", summary)
    print(f"\nwrote {out / 'neural_collapse_curve.json'}, {out / 'nc_per_layer.png'}, "
          f"{out / 'nc_over_epochs.png'}" + ("" if args.no_tensorboard else f", {out / 'tb'}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
