"""Minority Collapse on real data, against the Layer-Peeled Model's prediction.

The same small network (same seed) is trained on the bundled digits (or MNIST-1D), subsampled so
that ``K_A`` majority classes keep ``n_A`` training samples each and the other classes keep
``n_A / R``. For every ratio R we measure, on the last layer:

* the mean pairwise cosine of the minority classifier vectors (and of the minority class means),
* ‖w_k − w_k'‖ over minority pairs relative to the majority norms,
* the test accuracy on majority and minority classes (balanced test set),

and solve the Layer-Peeled Model at the same R, both with Fang et al.'s energies (E_H = 5,
E_W = 1) and with the energies measured on the trained network.

Run::

    python examples/minority_collapse.py --out runs/minority

It prints a table, writes ``minority_collapse.json`` (atomically; a rerun reuses finished ratios),
``minority_cosine_vs_ratio.png`` (``dg.plot`` of :class:`dg.theory.MinorityCollapseCurve` results,
trained beside the model) and ``last_layer_vs_lpm.png`` (``dg.plot`` of the model's solution with
the trained last layer: cosine Grams, E_H = 5, E_W = 1, at the largest R newly trained).

``--quick`` trains 10 epochs at R = 1 and 10 only (a smoke test, seconds).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` as JSON atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def subsample(x, y, n_majority, n_a, ratio, seed):
    """``n_a`` samples for classes < n_majority, ``max(1, round(n_a / ratio))`` for the rest."""
    g = torch.Generator().manual_seed(seed)
    n_b = max(1, int(round(n_a / ratio)))
    keep = []
    for c in range(int(y.max()) + 1):
        pos = (y == c).nonzero().flatten()
        pos = pos[torch.randperm(pos.numel(), generator=g)]
        keep.append(pos[: n_a if c < n_majority else n_b])
    keep = torch.cat(keep).sort().values
    return x[keep], y[keep], n_b


def per_class_accuracy(model, loader, num_classes):
    correct = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    model.eval()
    with torch.no_grad():
        for xb, yb in loader:
            pred = model(xb).argmax(1)
            total += torch.bincount(yb, minlength=num_classes).float()
            correct += torch.bincount(yb[pred == yb], minlength=num_classes).float()
    return correct / total.clamp_min(1)


def penultimate(model, x):
    feats = dg.extract_features(model, DataLoader(TensorDataset(x, torch.zeros(len(x)).long()),
                                                  batch_size=512),
                                layers=["net.{}:input".format(len(model.net) - 1)],
                                progress=False)
    return next(iter(feats.values()))


def run_ratio(args, ratio, x_tr, y_tr, test_loader, num_classes):
    xs, ys, n_b = subsample(x_tr, y_tr, args.n_majority, args.n_a, ratio, args.seed)
    torch.manual_seed(args.seed)                       # the same initial network for every R
    model = dg.zoo.DigitsMLP(depth=args.depth, width=args.width,
                                in_features=x_tr[0].numel(), num_classes=num_classes)
    loader = DataLoader(TensorDataset(xs, ys), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    t0 = time.time()
    hist = dg.zoo.train_classifier(model, loader, epochs=args.epochs, lr=args.lr,
                                      weight_decay=args.weight_decay, seed=args.seed,
                                      progress=not args.quiet)
    train_s = time.time() - t0
    fc = model.net[-1]
    h = penultimate(model, xs).double()
    mc = dg.measures.minority_collapse(fc, h, ys, n_majority=args.n_majority)
    nc = dg.measures.neural_collapse(h, ys, fc)
    acc = per_class_accuracy(model, test_loader, num_classes)
    # energies of the trained last layer, as the Layer-Peeled Model defines them
    e_w = float((fc.weight.detach().double() ** 2).sum(1).mean())
    hc = h - h.mean(0)                                 # the bias absorbs the global mean
    e_h = float(torch.stack([(hc[ys == c] ** 2).sum(1).mean()
                             for c in range(num_classes)]).mean())
    r_actual = args.n_a / n_b
    lpm_paper = dg.theory.solve_layer_peeled(num_classes=num_classes, n_majority=args.n_majority,
                                             ratio=r_actual, E_H=5.0, E_W=1.0)
    lpm_fit = dg.theory.solve_layer_peeled(num_classes=num_classes, n_majority=args.n_majority,
                                           ratio=r_actual, E_H=e_h, E_W=e_w)
    mc_paper = lpm_paper.minority_collapse(n_majority=args.n_majority)
    mc_fit = lpm_fit.minority_collapse(n_majority=args.n_majority)
    mask_min = torch.arange(num_classes) >= args.n_majority
    return {
        "ratio": ratio, "ratio_actual": r_actual, "n_a": args.n_a, "n_b": n_b,
        "n_train": int(len(ys)), "final_loss": hist["loss"][-1], "train_seconds": train_s,
        "test_acc_majority": float(acc[~mask_min].mean()),
        "test_acc_minority": float(acc[mask_min].mean()),
        "minority_cos_w": mc["minority_cos_w"], "minority_cos_means": mc["minority_cos_means"],
        "minority_dist_w": mc["minority_dist_w"], "majority_cos_w": mc["majority_cos_w"],
        "minority_norm_ratio_w": mc["minority_norm_ratio_w"],
        "nc1": nc["nc1"], "nc3": nc["nc3"], "nc4": nc["nc4"], "E_W": e_w, "E_H": e_h,
        "lpm_paper_minority_cos_w": mc_paper["minority_cos_w"],
        "lpm_paper_minority_dist_w": mc_paper["minority_dist_w"],
        "lpm_fit_minority_cos_w": mc_fit["minority_cos_w"],
        "lpm_fit_minority_dist_w": mc_fit["minority_dist_w"],
        "_model": model, "_lpm": lpm_paper, "_h": h, "_y": ys,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--example", default="digits", choices=["digits", "mnist1d"])
    p.add_argument("--ratios", type=float, nargs="+", default=[1, 2, 5, 10, 20, 40, 100])
    p.add_argument("--n-majority", type=int, default=5, help="K_A, the number of majority classes")
    p.add_argument("--n-a", type=int, default=100, help="training samples per majority class")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=5.0,
                   help="AdamW decoupled decay (per step: lr · wd = 1e-2); Minority Collapse "
                        "needs a tight norm budget")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--quick", action="store_true", help="R = 1 and 10, 10 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.ratios, args.epochs = [1.0, 10.0], 10
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.example == "digits":
        tr = dg.zoo.digits_dataset("train", flat=True)
        te = dg.zoo.digits_dataset("test", flat=True)
    else:
        tr, te = dg.zoo.mnist1d_dataset("train"), dg.zoo.mnist1d_dataset("test")
        tr = TensorDataset(tr.tensors[0].flatten(1), tr.tensors[1])
        te = TensorDataset(te.tensors[0].flatten(1), te.tensors[1])
    x_tr, y_tr = tr.tensors
    num_classes = int(y_tr.max()) + 1
    test_loader = DataLoader(te, batch_size=512)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "quiet", "ratios",
                                                                 "threads")}
    result_path = out / "minority_collapse.json"
    cached = {}
    if result_path.exists():
        prev = json.loads(result_path.read_text())
        if prev.get("settings") == settings:
            cached = {r["ratio"]: r for r in prev["rows"]}
    rows, last = [], None
    for ratio in args.ratios:
        if ratio in cached:
            rows.append(cached[ratio])
            continue
        row = run_ratio(args, ratio, x_tr, y_tr, test_loader, num_classes)
        last = row
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
        write_json(result_path, {"settings": settings, "rows": rows})
    thr = dg.theory.minority_collapse_threshold(num_classes, args.n_majority, 5.0, 1.0,
                                                rel_precision=0.05 if args.quick else 1e-3)
    write_json(result_path, {"settings": settings, "rows": rows,
                             "lpm_threshold_paper_energies": thr["threshold"]})

    print(f"\nMinority Collapse, {args.example}, K_A={args.n_majority} majority classes of "
          f"{args.n_a} samples, MLP depth {args.depth} width {args.width}, {args.epochs} epochs")
    print("| R | n_B | train loss | acc maj | acc min | cos(w_min) | cos(μ_min) | dist(w_min) "
          "| LPM cos (E_H=5,E_W=1) | LPM cos (fitted E) | fitted E_H, E_W |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio_actual']:.0f} | {r['n_b']} | {r['final_loss']:.4f} | "
              f"{r['test_acc_majority']:.3f} | {r['test_acc_minority']:.3f} | "
              f"{r['minority_cos_w']:.3f} | {r['minority_cos_means']:.3f} | "
              f"{r['minority_dist_w']:.3f} | {r['lpm_paper_minority_cos_w']:.3f} | "
              f"{r['lpm_fit_minority_cos_w']:.3f} | {r['E_H']:.1f}, {r['E_W']:.2f} |")
    print(f"Layer-Peeled Model threshold (K=10, K_A={args.n_majority}, E_H=5, E_W=1): "
          f"R* = {thr['threshold']:.3f}")

    rs = [r["ratio_actual"] for r in rows]

    def curve(label, **values):
        return dg.theory.MinorityCollapseCurve(rs, values, meta={"label": label,
                                                                 "num_classes": num_classes})

    curves = [curve("trained network", minority_cos_w=[r["minority_cos_w"] for r in rows],
                    minority_cos_means=[r["minority_cos_means"] for r in rows]),
              curve("Layer-Peeled Model (fitted E_H, E_W)",
                    minority_cos_w=[r["lpm_fit_minority_cos_w"] for r in rows]),
              curve("Layer-Peeled Model (E_H=5, E_W=1)",
                    minority_cos_w=[r["lpm_paper_minority_cos_w"] for r in rows])]
    dg.plot(curves, out / "minority_cosine_vs_ratio.png",
            title=f"Minority Collapse on {args.example} (K_A = {args.n_majority})")
    if last is not None:
        h, y = last["_h"], last["_y"]
        means = torch.stack([h[y == c].mean(0) for c in range(num_classes)])
        dg.plot(last["_lpm"], out / "last_layer_vs_lpm.png", classifier=last["_model"].net[-1],
                means=means - h.mean(0),
                title=f"R = {last['ratio_actual']:.0f}: trained last layer vs Layer-Peeled Model "
                      f"(E_H = 5, E_W = 1)")
    print(f"wrote {result_path}, {out / 'minority_cosine_vs_ratio.png'}"
          + (f", {out / 'last_layer_vs_lpm.png'}" if last is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
