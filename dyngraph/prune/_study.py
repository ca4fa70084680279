"""The whole pruning study in one resumable call: modularity curve (a
:class:`~dyngraph.DepthProfile`) → redundant layers → prune → fine-tune, side by side with
baselines that remove as many layers (random seeds, least redundant, CKA), and an unpruned
control fine-tuned the same way.

Every finished row is written atomically to ``<out_dir>/prune_report.json`` and skipped on a
rerun; a row interrupted during fine-tuning resumes from its per-epoch checkpoint. The report
carries a checksum and each row the sha256 of its saved model, checked when read again (a report
edited by hand is read with a warning once its ``"checksum"`` entry is removed). The result,
a :class:`StudyReport`, is drawn by ``dg.plot`` and logged by ``dg.log``.
"""
from __future__ import annotations

import copy
import hashlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._io import (
    PathLike,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    file_in,
    read_json_file,
    run_environment,
    sha256_file,
    verify_file,
)
from .._validate import check_positive_int
from ..capture import default_layers, extract_features
from ..graphs._spec import GraphSpec
from ..profiles._profile import DepthProfile
from ..profiles._runner import depth_profile
from ._baselines import adjacent_cka, cka_layers, least_redundant_layers, random_layers
from ._cost import cost_report, measure_latency
from ._detect import Redundancy, redundant_layers
from ._finetune import evaluate, finetune, settings_changed
from ._surgery import ExampleInput, prune_layers

METHODS = ("modularity", "least_redundant", "random", "cka")
REPORT = "prune_report.json"
_REDO = "delete it and rerun the study (finished rows are recomputed, bitwise the same)"
FORMAT = "dyngraph.prune_study/2"


class StudyReport(dict):
    """The report of :func:`prune_study`: the JSON-ready dict that ``prune_report.json`` holds
    (``config``, ``baseline``, ``curve``, ``selections``, ``rows``, ``summary``, ``table``,
    ...), with typed views of its profiles. ``dg.plot(report)`` draws the modularity curve
    before and after pruning; ``dg.log(writer, report)`` logs it to TensorBoard.

    Example:
        >>> import torch, dyngraph as dg
        >>> q = dg.DepthProfile(['stem', 'b1', 'b2'], 'modularity', torch.tensor([.2, .5, .51]))
        >>> r = dg.prune.StudyReport(curve=q.to_dict(), selections={'modularity': {'remove': [
        ...     {'layer': 'b2'}]}})
        >>> r.profile == q, r.removed, r.profile_after is None
        (True, ['b2'], True)
    """

    @property
    def profile(self) -> DepthProfile:
        """The modularity curve before pruning (``'curve'``), samples ``[R, L, 1]``."""
        if "curve" not in self:
            raise ValueError(f"this StudyReport has no 'curve' yet (keys: {sorted(self)}); "
                             f"prune_study writes it")
        return DepthProfile.from_dict(self["curve"])

    @property
    def profile_after(self) -> Optional[DepthProfile]:
        """The curve of the modularity-pruned, fine-tuned model at the kept layers, whose
        original names are ``meta['original_layers']``; ``None`` when not computed."""
        d = self.get("curve_after")
        return None if d is None else DepthProfile.from_dict(d)

    @property
    def removed(self) -> List[str]:
        """The profile layers the modularity rule removed."""
        sel = self.get("selections", {}).get("modularity", {})
        return [r["layer"] for r in sel.get("remove", [])]

    @classmethod
    def from_json(cls, path: PathLike) -> "StudyReport":
        """Reads a ``prune_report.json``, checked against its checksum (kept in the dict, as in
        the file; a report without one is read with a warning).

        Raises:
            CorruptFileError: The file is not valid JSON or does not match its checksum.
            ValueError: It is not a prune study report of this version.
        """
        d = read_json_file(path, keep_checksum=True, fix=_REDO, what="a prune study report")
        if not isinstance(d, dict) or d.get("config", {}).get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not a {FORMAT} report")
        return cls(d)


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha1(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if t.is_floating_point():
            h.update(f"{float(t.double().sum()):.6e}".encode())
    return h.hexdigest()[:12]


def interleaved_latency(models: Dict[str, nn.Module], example_input, rounds: int = 5,
                        repeats: int = 4, threads: Optional[int] = 1) -> Dict[str, Dict]:
    """CPU latency of several models measured in interleaved rounds (model A, B, C, A, B, C,
    ...), so that a burst of load on a shared machine hits them all alike. Per model: the
    minimum and median over ``rounds × repeats`` timed forward passes."""
    times: Dict[str, List[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, m in models.items():
            t = measure_latency(m, example_input, repeats=repeats, warmup=1, threads=threads)
            times[name] += [t["min_ms"], t["median_ms"]]
    return {name: {"min_ms": round(min(ts), 3), "median_ms": round(statistics.median(ts), 3),
                   "batch": int(example_input.shape[0]), "threads": threads,
                   "runs": rounds * repeats} for name, ts in times.items()}


def _mean_std(xs: Sequence[float]) -> Dict[str, Any]:
    xs = [float(x) for x in xs]
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "n": len(xs), "values": xs}


def _first_batch(loader, n: int):
    xs = []
    for batch in loader:
        xs.append(batch[0])
        if sum(x.shape[0] for x in xs) >= n:
            break
    return torch.cat(xs)[:n]


def prune_study(model: nn.Module, train_loader: Iterable[Any], test_loader: Iterable[Any],
                out_dir: PathLike, *, layers: Optional[Sequence[str]] = None,
                curve_loader: Optional[Iterable[Any]] = None,
                per_class: int = 50, pool_per_class: int = 100, repeats: int = 5, k: int = 3,
                rule: str = "delta", threshold: Optional[float] = None,
                n_remove: Optional[int] = None, allow_projection: bool = False,
                methods: Sequence[str] = METHODS, random_seeds: Sequence[int] = (0, 1, 2),
                control: bool = True, finetune_epochs: int = 8, optimizer: str = "sgd",
                lr: Optional[float] = None, weight_decay: float = 5e-4,
                example_input: Optional[ExampleInput] = None, latency: bool = True,
                latency_batch: int = 64, latency_threads: Optional[int] = 1,
                curves_after: bool = True, device: Optional[str] = None, seed: int = 0,
                model_info: Optional[Dict[str, Any]] = None, progress: bool = True,
                log: Optional[Callable[..., Any]] = print) -> StudyReport:
    """Runs (or resumes) the modularity-pruning study on a trained model.

    Args:
        model: The trained network (not modified).
        train_loader, test_loader: Fine-tuning data and the held-out evaluation data.
        out_dir: Where ``prune_report.json``, ``prune_table.md``, ``curve.json``,
            ``curves.png``, the pruned models (``models/<row>.pt``: state_dicts, their sha256 in the
            row, checked when read again) and the fine-tuning checkpoints go.
        layers: Candidate layers (default ``dg.default_layers(model)``: stem + residual blocks).
        curve_loader: Data for the curve (default: ``train_loader``, so the test set plays no
            part in choosing the layers).
        per_class, pool_per_class, repeats, k: The curve: a pool of ``pool_per_class`` samples per
            class is extracted once; each of ``repeats`` graphs uses ``per_class`` of them.
        rule, threshold, n_remove, allow_projection: Passed to :func:`redundant_layers`.
        methods: Rows to run besides the baseline: ``'modularity'``, ``'least_redundant'``,
            ``'random'`` (one row per seed in ``random_seeds``) and ``'cka'``.
        control: Also fine-tune the unpruned model the same way (does extra training alone
            change accuracy?).
        finetune_epochs, optimizer, lr, weight_decay: Fine-tuning of every row, with the same
            seed and, when ``train_loader`` has its own ``generator``, the same batch order
            (the generator is re-seeded with ``seed`` before each row).
        example_input: One input for FLOPs and shapes (default: the first test sample).
        latency, latency_batch, latency_threads: CPU latency of a forward pass on a test batch,
            measured for all models at the end in interleaved rounds (the table shows the
            minimum, the report also the median: on a shared machine the minimum is the least
            disturbed).
        curves_after: Also compute the curve of the modularity-pruned, fine-tuned model.
        device: Where to fine-tune (default: the model's device).
        seed: Seed of sampling and fine-tuning.
        model_info: Extra facts about the model recorded in the report.
        progress: Progress bars. log: ``print``-like function for status lines (``None``: silent).

    Returns:
        A :class:`StudyReport` (also in ``prune_report.json``): ``config``, ``baseline``,
        ``curve`` (a :class:`~dyngraph.DepthProfile` dict), ``selections``, ``rows``
        ({name: row}), ``summary`` and the markdown ``table``.

    Example:
        >>> import tempfile, torch, dyngraph as dg
        >>> train, test = dg.zoo.example_loaders('digits', batch_size=256)
        >>> _ = torch.manual_seed(0)
        >>> net = dg.zoo.CifarResNet((2, 2, 2), widths=(4, 8, 8), in_channels=1)
        >>> r = dg.prune.prune_study(net, train, test, tempfile.mkdtemp(), per_class=10,
        ...                          pool_per_class=10, repeats=1, n_remove=1,
        ...                          methods=['modularity'], control=False, finetune_epochs=1,
        ...                          latency=False, progress=False, log=None)
        >>> r.profile.layers[:2], len(r.removed), list(r['rows'])
        (['conv1', 'layer1.0'], 1, ['modularity'])
    """
    from ..outputs import plot
    say = log or (lambda *a, **kw: None)
    for name, value in (("per_class", per_class), ("pool_per_class", pool_per_class),
                        ("repeats", repeats), ("k", k)):
        check_positive_int(value, name)
    if pool_per_class < per_class:
        raise ValueError(f"pool_per_class must be >= per_class (each graph draws per_class "
                         f"samples per class from the pool), got pool_per_class="
                         f"{pool_per_class} < per_class={per_class}")
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"methods must be among {list(METHODS)}, got {m!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT
    dev = torch.device(device) if device else next(model.parameters()).device
    model = model.to(dev).eval()
    if layers is None:
        layers = default_layers(model)
    if example_input is None:
        example_input = _first_batch(test_loader, 1).to(dev)
    lat_input = _first_batch(test_loader, latency_batch).to(dev)
    curve_loader = curve_loader if curve_loader is not None else train_loader
    config = {"format": FORMAT, "model": type(model).__name__, "fingerprint": _fingerprint(model),
              "layers": list(layers), "per_class": per_class, "pool_per_class": pool_per_class,
              "repeats": repeats, "k": k, "rule": rule, "threshold": threshold,
              "n_remove": n_remove, "allow_projection": allow_projection,
              "methods": list(methods), "random_seeds": list(random_seeds), "control": control,
              "finetune_epochs": finetune_epochs, "optimizer": optimizer, "lr": lr,
              "weight_decay": weight_decay, "seed": seed}
    report = StudyReport()
    if path.exists():
        report = StudyReport(read_json_file(path, fix=_REDO, what="a prune study report"))
        if report.get("config") != config:
            raise ValueError(f"{str(out)!r} holds a study with other settings (saved, now): "
                             f"{settings_changed(report.get('config', {}), config)}; use another "
                             f"output folder or delete {path}")
        say(f"resuming {path}: {len(report.get('rows', {}))} rows already done")
    report.setdefault("config", config)
    report.setdefault("model_info", model_info or {})
    report.setdefault("rows", {})
    # this run's thread count and torch version (each row also records the threads it ran with)
    report["environment"] = run_environment()

    def modularity(net: nn.Module, names: List[str], **meta: Any) -> Tuple[DepthProfile, Any]:
        """The curve of ``net`` at ``names``: one metric, ``repeats`` resamplings of a pool of
        ``pool_per_class`` samples per class; also returns the pool's features."""
        feats = extract_features(net, curve_loader, layers=names, per_class=pool_per_class,
                                 seed=seed, device=dev, progress=progress)
        prof = depth_profile(feats, "modularity", graph=GraphSpec(k=k), per_class=per_class,
                             repeats=repeats, seed=seed, progress=progress)["modularity"]
        prof.meta.update(meta)
        return prof, feats

    # -- baseline ---------------------------------------------------------------------------
    if "baseline" not in report:
        t0 = time.perf_counter()
        n_test = sum(int(b[1].numel()) for b in test_loader)
        report["baseline"] = {"acc": evaluate(model, test_loader, dev), "test_samples": n_test,
                              **cost_report(model, example_input, latency=False),
                              "layers": len(layers), "seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(path, report)
    base = report["baseline"]
    say(f"baseline: acc {base['acc']:.4f}, params {base['params']:,}, FLOPs {base['flops']:,}")

    # -- curve (and adjacent CKA on the same features) ---------------------------------------
    if "curve" not in report:
        t0 = time.perf_counter()
        prof, feats = modularity(model, list(layers), label="before pruning")
        report["curve"] = prof.to_dict()
        if "cka" in methods:
            report["cka"] = adjacent_cka(feats, per_class=per_class, repeats=repeats,
                                         seed=seed).to_dict()
        report["curve_seconds"] = round(time.perf_counter() - t0, 2)
        del feats
        atomic_write_json(path, report)
    curve = report.profile
    curve.to_json(out / "curve.json")
    say("curve: " + ", ".join(f"{n}={v:.3f}" for n, v in zip(curve.layers, curve.values.tolist())))

    # -- selections ----------------------------------------------------------------------------
    kw: Dict[str, Any] = dict(model=model, example_input=example_input,
                              allow_projection=allow_projection)
    sel = {"modularity": redundant_layers(curve, rule, threshold, n_remove=n_remove, **kw)}
    n = len(sel["modularity"])
    if n == 0:
        say(f"the {rule!r} rule (threshold {threshold}) finds no redundant layer; nothing to "
            f"prune (try n_remove= or another threshold)")
    else:
        if "least_redundant" in methods:
            sel["least_redundant"] = least_redundant_layers(curve, n, **kw)
        if "random" in methods:
            for s in random_seeds:
                sel[f"random_seed{s}"] = random_layers(curve, n, seed=s, **kw)
        if "cka" in methods and "cka" in report:
            sel["cka"] = cka_layers(None, n, cka=DepthProfile.from_dict(report["cka"]),
                                    profile=curve, **kw)
    report["selections"] = {name: r.to_dict() for name, r in sel.items()}
    if "modularity" not in methods:
        sel.pop("modularity")
    atomic_write_json(path, report)

    # -- rows ----------------------------------------------------------------------------------
    def run_row(name: str, layers_to_remove: Optional[Redundancy]) -> None:
        if name in report["rows"]:
            say(f"{name}: done before (acc {report['rows'][name]['acc_finetuned']:.4f})")
            return
        t0 = time.perf_counter()
        removed = list(layers_to_remove.layers) if layers_to_remove is not None else []
        if layers_to_remove is None:
            pruned = copy.deepcopy(model)
            plog: Dict[str, Any] = {"removed": {}, "replaced": {}, "renamed": {}}
        else:
            pruned, plog = prune_layers(model, layers_to_remove, example_input=example_input,
                                        return_log=True)
        acc_pruned = evaluate(pruned, test_loader, dev)
        costs = cost_report(pruned, example_input, latency=False)
        ckpt = file_in(out / "checkpoints", name, ".pt", "a study row")
        gen = getattr(train_loader, "generator", None)
        if gen is not None:  # every row sees the same batch order, whatever ran before it
            gen.manual_seed(seed)
        hist = finetune(pruned, train_loader, None, finetune_epochs, optimizer=optimizer, lr=lr,
                        weight_decay=weight_decay, checkpoint=ckpt, device=dev, seed=seed,
                        progress=progress, desc=f"finetune {name}")
        acc_ft = evaluate(pruned, test_loader, dev)
        # weights only: the architecture is rebuilt from the model and the row's selection
        weights = atomic_torch_save(pruned.state_dict(),
                                    file_in(out / "models", name, ".pt", "a study row"))
        row = {"removed": removed, "n_removed": len(removed), "replaced": plog["replaced"],
               "acc_pruned": acc_pruned, "acc_finetuned": acc_ft,
               **costs, "params_reduction": 1 - costs["params"] / base["params"],
               "flops_reduction": 1 - costs["flops"] / base["flops"],
               "finetune_loss": hist["loss"][-1], "finetune_train_acc": hist["train_acc"][-1],
               "seconds": round(time.perf_counter() - t0, 2),
               "threads": torch.get_num_threads(), "weights_sha256": sha256_file(weights)}
        if name == "modularity" and curves_after and layers_to_remove is not None:
            kept = [l for l in curve.layers if l not in set(removed)
                    and l not in {r.layer for r in layers_to_remove}]
            after, _ = modularity(pruned, [plog["renamed"].get(l, l) for l in kept],
                                  label="after pruning + fine-tuning", original_layers=kept)
            report["curve_after"] = after.to_dict()
        report["rows"][name] = row
        atomic_write_json(path, report)
        if ckpt.exists():
            ckpt.unlink()
        say(f"{name}: removed {row['n_removed']}, acc straight after pruning "
            f"{acc_pruned:.4f}, after fine-tuning {acc_ft:.4f} ({row['seconds']:.0f} s)")

    if n > 0:
        for name, r in sel.items():
            run_row(name, r)
    if control:
        run_row("unpruned_finetuned", None)

    if latency:
        models = {"baseline": model}
        for name in report["rows"]:
            f = file_in(out / "models", name, ".pt", "a row of the saved report")
            if f.exists():
                verify_file(f, report["rows"][name].get("weights_sha256"),
                            f"delete it and {REPORT} and rerun (every row is recomputed, "
                            f"bitwise the same)")
                chosen = sel.get(name)
                rebuilt = copy.deepcopy(model) if chosen is None else \
                    prune_layers(model, chosen, example_input=example_input)
                rebuilt.load_state_dict(torch.load(f, map_location=dev, weights_only=True))
                models[name] = rebuilt.to(dev)
        lat = interleaved_latency(models, lat_input, threads=latency_threads)
        for name, t in lat.items():
            target = report["baseline"] if name == "baseline" else report["rows"][name]
            target["latency_ms"], target["latency_median_ms"] = t["min_ms"], t["median_ms"]
        report["latency"] = {"batch": int(lat_input.shape[0]), "threads": latency_threads,
                             "runs_per_model": lat["baseline"]["runs"],
                             "statistic": "minimum over interleaved rounds"}
    report["summary"] = summarize(report)
    report["table"] = format_table(report)
    atomic_write_json(path, report)
    atomic_write_text(out / "prune_table.md", report["table"] + "\n")
    plot(report, out / "curves.png")
    return report


def _same_layers(report: Dict[str, Any]) -> Dict[str, List[str]]:
    """Per baseline kind (``'random'``, ``'least_redundant'``, ``'cka'``): the rows that removed
    exactly the layers the modularity row removed (same models: nothing to compare)."""
    rows = report.get("rows", {})
    mod = rows.get("modularity")
    out: Dict[str, List[str]] = {}
    if mod is None:
        return out
    chosen = set(mod.get("removed", []))
    for name, r in rows.items():
        kind = "random" if name.startswith("random_seed") else name
        if kind in ("random", "least_redundant", "cka") and set(r.get("removed", [])) == chosen:
            out.setdefault(kind, []).append(name)
    return out


def summarize(report: Dict[str, Any]) -> Dict[str, Any]:
    """Random mean ± std and whether the modularity choice beats each baseline.

    A baseline row that removed exactly the modularity row's layers is the same network (the
    structural constraints left no other choice): it is excluded from the comparison and named
    in ``'same_layers_as_modularity'``. When every random draw did so, ``'beats_random'`` is
    ``None`` with ``'beats_random_reason'``; when some did, the random comparison uses the
    other draws (``'random_compared'``). The same holds for ``least_redundant`` and ``cka``.

    Example:
        >>> rows = {'modularity': {'removed': ['b2'], 'acc_pruned': .9, 'acc_finetuned': .95},
        ...         'random_seed0': {'removed': ['b2'], 'acc_pruned': .9, 'acc_finetuned': .95},
        ...         'random_seed1': {'removed': ['b2'], 'acc_pruned': .9, 'acc_finetuned': .95}}
        >>> s = summarize({'baseline': {'acc': .97}, 'rows': rows})
        >>> s['beats_random'], s['beats_random_reason']
        (None, 'random baseline removed the same layers in 2 of 2 draws')
    """
    rows = report.get("rows", {})
    base = report["baseline"]
    s: Dict[str, Any] = {"baseline_acc": base["acc"]}
    if base.get("test_samples"):
        p, n = base["acc"], base["test_samples"]
        # binomial standard error of one accuracy on this test set: differences below about
        # two of these are not resolved by it
        s["test_samples"] = n
        s["acc_standard_error"] = (p * (1 - p) / n) ** 0.5
    rand_names = [k for k in rows if k.startswith("random_seed")]
    rand = [rows[k] for k in rand_names]
    if rand:
        s["random_finetuned"] = _mean_std([r["acc_finetuned"] for r in rand])
        s["random_pruned"] = _mean_std([r["acc_pruned"] for r in rand])
    mod = rows.get("modularity")
    if mod is not None:
        same = _same_layers(report)
        if same:
            s["same_layers_as_modularity"] = same
        s["modularity_finetuned"] = mod["acc_finetuned"]
        s["modularity_pruned"] = mod["acc_pruned"]
        others: Dict[str, float] = {}
        if rand:
            identical = same.get("random", [])
            distinct = [rows[k] for k in rand_names if k not in identical]
            why = (f"random baseline removed the same layers in {len(identical)} of "
                   f"{len(rand)} draws")
            if not distinct:
                s.update(beats_random=None, beats_random_reason=why,
                         margin_over_random_in_std=None, beats_random_before_finetune=None)
            else:
                r = _mean_std([d["acc_finetuned"] for d in distinct])
                rp = _mean_std([d["acc_pruned"] for d in distinct])
                if identical:
                    s["random_compared"] = {
                        "finetuned": r, "pruned": rp, "excluded": identical,
                        "note": f"{why}; compared with the other {len(distinct)}"}
                s["beats_random"] = mod["acc_finetuned"] > r["mean"]
                s["margin_over_random_in_std"] = ((mod["acc_finetuned"] - r["mean"]) / r["std"]
                                                  if r["std"] > 0 else None)
                s["beats_random_before_finetune"] = mod["acc_pruned"] > rp["mean"]
                others["random"] = r["mean"]
        for other in ("least_redundant", "cka"):
            if other in rows:
                if other in same:
                    s[f"beats_{other}"] = s[f"beats_{other}_before_finetune"] = None
                    s[f"beats_{other}_reason"] = (f"{other} removed the same layers as "
                                                  f"modularity")
                    continue
                s[f"beats_{other}"] = mod["acc_finetuned"] > rows[other]["acc_finetuned"]
                s[f"beats_{other}_before_finetune"] = mod["acc_pruned"] > rows[other]["acc_pruned"]
                others[other] = rows[other]["acc_finetuned"]
        if "unpruned_finetuned" in rows:
            others["unpruned_finetuned"] = rows["unpruned_finetuned"]["acc_finetuned"]
        diffs = {k: mod["acc_finetuned"] - acc for k, acc in others.items()}
        s["modularity_minus"] = diffs
        checks = [s.get("beats_random"), s.get("beats_least_redundant")]
        s["claim_holds"] = all(c is True for c in checks) if None not in checks else None
        if "acc_standard_error" in s:
            # two accuracies on the same test set, treated as independent (conservative): a
            # difference smaller than twice its standard error is not resolved
            res = 2 * (2 ** 0.5) * s["acc_standard_error"]
            s["difference_resolution"] = res
            if s["claim_holds"] is not None:
                s["claim_holds_beyond_noise"] = all(
                    diffs.get(k, float("-inf")) > res for k in ("random", "least_redundant"))
    return s


def format_table(report: Dict[str, Any]) -> str:
    """The markdown table of a study report."""
    base = report["baseline"]
    lat = "latency_ms" in base
    head = ("| model | removed | params | params ↓ | FLOPs | FLOPs ↓ | "
            + ("latency ms (min) | " if lat else "")
            + "acc after pruning | acc after fine-tuning |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]

    def fmt(name, r, pruned="", ft=""):
        cells = [name, str(r.get("n_removed", 0)), f"{r['params']:,}",
                 f"{100 * r.get('params_reduction', 0):.1f}%", f"{r['flops']:,}",
                 f"{100 * r.get('flops_reduction', 0):.1f}%"]
        if lat:
            cells.append(f"{r.get('latency_ms', float('nan')):.2f}")
        cells += [pruned, ft]
        return "| " + " | ".join(cells) + " |"

    rows.append(fmt("baseline (unpruned)", base, "—", f"{base['acc']:.4f}"))
    res = report.get("rows", {})
    order = ["modularity", "least_redundant", "cka"] + sorted(
        k for k in res if k.startswith("random_seed")) + ["unpruned_finetuned"]
    for name in order:
        if name in res:
            r = res[name]
            rows.append(fmt(name, r, f"{r['acc_pruned']:.4f}", f"{r['acc_finetuned']:.4f}"))
    s = report.get("summary") or summarize(report)
    if "random_finetuned" in s:
        rnd = [res[k] for k in res if k.startswith("random_seed")]
        r0 = dict(rnd[0])
        for key in ("params", "flops"):
            r0[key] = round(statistics.fmean(r[key] for r in rnd))
        for key in ("params_reduction", "flops_reduction", "latency_ms"):
            if key in r0:
                r0[key] = statistics.fmean(r[key] for r in rnd)
        p, f = s["random_pruned"], s["random_finetuned"]
        rows.append(fmt(f"random, mean ± std ({f['n']} seeds)", r0,
                        f"{p['mean']:.4f} ± {p['std']:.4f}", f"{f['mean']:.4f} ± {f['std']:.4f}"))
    notes = []
    same = s.get("same_layers_as_modularity") or {}
    if same.get("random"):
        n_rand = len([k for k in res if k.startswith("random_seed")])
        k = len(same["random"])
        notes.append(f"The random baseline removed the same layers as modularity in {k} of "
                     f"{n_rand} draws ({', '.join(same['random'])}): "
                     + ("no random comparison is possible (beats_random: none)" if k == n_rand
                        else f"modularity is compared with the other {n_rand - k}."))
    for other in ("least_redundant", "cka"):
        if same.get(other):
            notes.append(f"{other} removed the same layers as modularity: not compared.")
    if notes:
        rows += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(rows)


__all__ = ["METHODS", "StudyReport", "format_table", "interleaved_latency", "prune_study",
           "summarize"]
