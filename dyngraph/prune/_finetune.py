"""The one training loop of dyngraph: training from scratch and fine-tuning after pruning.

:func:`fit` is the single implementation; :func:`finetune` (SGD defaults) and
:func:`dg.zoo.train_classifier <dyngraph.zoo.train_classifier>` (AdamW defaults) are thin
presets of it. After each epoch the loop can save an atomic checkpoint (weights, optimizer,
schedule, history and the RNG states, including the train loader's generator), so an interrupted
run resumes where it stopped and ends with exactly the weights an uninterrupted run would have
produced.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from .._io import CorruptFileError, PathLike, atomic_torch_save, run_environment, verify_payload
from .._progress import progress_bar
from .._validate import check_choice, check_model, check_positive_int, model_device
from ..capture._taps import call_model, logits_of, split_batch, to_device
from ._surgery import eval_mode

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
_CKPT_FORMAT = "dyngraph.fit/1"


def read_checkpoint(path: PathLike, device: Optional[Union[str, torch.device]] = None
                    ) -> Dict[str, Any]:
    """A training checkpoint written by :func:`fit`, read with ``weights_only=True`` and
    checked against its checksum (weights, optimizer and RNG states, history, settings).

    Raises:
        CorruptFileError: The file cannot be read, or a byte of it changed (named in the
            message, with the fix: delete it or pass ``resume=False``).
        ValueError: It is not a dyngraph training checkpoint.
    """
    fix = "delete it (or pass resume=False) to train from the start"
    try:  # a dyngraph checkpoint holds tensors and plain values only
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise CorruptFileError.unreadable(path, "a dyngraph training checkpoint", exc,
                                          fix) from None
    if not isinstance(state, dict) or state.get("format") != _CKPT_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a dyngraph training checkpoint; "
                         f"{fix}")
    return verify_payload(state, path, fix)


def check_rates(grad_clip: Optional[float], **rates: Any) -> None:
    """Training rates: finite numbers ``>= 0`` (``lr`` also ``> 0``); ``grad_clip`` ``> 0`` or
    ``None``."""
    for name, val in rates.items():
        if isinstance(val, bool) or not isinstance(val, (int, float)) or \
                not math.isfinite(val) or val < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {name}={val!r}")
    if rates["lr"] == 0:
        raise ValueError("lr must be > 0, got lr=0")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None, got grad_clip={grad_clip!r}")


def settings_changed(saved: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, Tuple[Any, Any]]:
    """``{setting: (saved, now)}`` for every setting that differs."""
    return {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Any],
             device: Optional[Union[str, torch.device]] = None,
             batch_fn: Optional[Callable] = None) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode; training mode restored).

    Args:
        model: A classifier returning logits ``[B, C]`` (or a tuple / dict / Hugging Face
            ``ModelOutput`` holding them; dict batches run as ``model(**inputs)``).
        loader: Yields ``(inputs, labels)`` batches (or anything ``batch_fn`` splits).
        device: Where to run; defaults to the model's device.
        batch_fn: Optional ``batch -> (inputs, labels)``.

    Returns:
        Accuracy in ``[0, 1]``.

    Example:
        >>> import torch, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> m = torch.nn.Linear(2, 2)
        >>> with torch.no_grad(): _ = m.weight.copy_(torch.eye(2)); _ = m.bias.zero_()
        >>> dl = DataLoader(TensorDataset(torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([0, 1])))
        >>> dg.prune.evaluate(m, dl)
        1.0
    """
    check_model(model)
    device = torch.device(device) if device is not None else model_device(model)
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with eval_mode(model):
        for batch in loader:
            xb, yb = split_batch(batch, batch_fn)
            yb = yb.to(device)
            logits = logits_of(call_model(model, to_device(xb, device)))
            correct += (logits.argmax(1) == yb).sum()
            total += yb.numel()
    if total == 0:
        raise ValueError("evaluate: the loader produced no samples")
    return int(correct) / total


def fit(model: nn.Module, train_loader: Iterable[Any], val_loader: Optional[Iterable[Any]] = None,
        epochs: int = 10, *, optimizer: str = "sgd", lr: Optional[float] = None,
        momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 5e-4,
        schedule: str = "cosine",
        min_lr: float = 0.0, label_smoothing: float = 0.0, grad_clip: Optional[float] = None,
        device: Optional[Union[str, torch.device]] = None, seed: Optional[int] = 0,
        checkpoint: Optional[PathLike] = None, resume: bool = True,
        on_epoch_end: Optional[Callable[[int, Dict[str, list]], None]] = None,
        batch_fn: Optional[Callable] = None, progress: bool = True,
        desc: str = "train") -> Dict[str, Any]:
    """Trains ``model`` in place with cross-entropy, one optimizer and a per-epoch schedule.

    Args:
        model: A classifier returning logits ``[B, C]``; trained in place, left in eval mode.
        train_loader: Yields ``(inputs, labels)``. A loader with its own ``generator`` has that
            generator saved in the checkpoint, so a resumed run sees the same batch order.
        val_loader: Optional; its accuracy is recorded after every epoch.
        epochs: Total number of epochs (a resumed run continues up to this number).
        optimizer: ``'sgd'`` (momentum, Nesterov) or ``'adamw'``.
        lr: Peak learning rate; default 0.01 for SGD, 1e-3 for AdamW.
        momentum, nesterov: SGD settings.
        weight_decay: L2 (SGD) or decoupled (AdamW) weight decay.
        schedule: ``'cosine'`` (annealed to ``min_lr`` over ``epochs``) or ``'constant'``.
        min_lr: Final learning rate of the cosine schedule.
        label_smoothing: Cross-entropy label smoothing.
        grad_clip: Clip the global gradient norm to this value.
        device: Where to train; defaults to the model's device.
        seed: Seeds torch's RNG at the start of a fresh run (``None``: leave it alone).
        checkpoint: A ``.pt`` path written atomically after every epoch, with a checksum of
            everything in it and the run's environment (thread count, torch version).
        resume: Continue from ``checkpoint`` when it exists (its settings must match; a
            corrupt one raises :class:`~dyngraph._io.CorruptFileError`, one written with
            another thread count a warning).
        on_epoch_end: ``callback(epoch, history)`` after each epoch's checkpoint is written.
        batch_fn: Optional ``batch -> (inputs, labels)``.
        progress: Progress bar over epochs (train loss and val accuracy in the postfix).
        desc: Progress-bar label.

    Returns:
        The history: ``{'epoch', 'loss', 'train_acc', 'val_acc', 'lr', 'seconds'}`` lists (one
        entry per epoch; ``val_acc`` is empty without ``val_loader``) and ``'resumed_from'``
        (epochs already done when the run started, 0 for a fresh run).

    Example:
        >>> import torch, dyngraph as dg
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(64, 4, generator=g); y = (x[:, 0] > 0).long()
        >>> dl = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)
        >>> h = dg.prune.fit(torch.nn.Linear(4, 2), dl, dl, epochs=5, lr=0.1, progress=False)
        >>> len(h['loss']), h['loss'][-1] < h['loss'][0], h['val_acc'][-1] > 0.8
        (5, True, True)
    """
    check_model(model)
    check_positive_int(epochs, "epochs")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    check_choice(schedule, "schedule", SCHEDULES)
    if lr is None:
        lr = 0.01 if optimizer == "sgd" else 1e-3
    check_rates(grad_clip, lr=lr, weight_decay=weight_decay, min_lr=min_lr, momentum=momentum,
                label_smoothing=label_smoothing)
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    opt: torch.optim.Optimizer = (
        torch.optim.SGD(params, lr=float(lr), momentum=float(momentum),
                        weight_decay=float(weight_decay), nesterov=nesterov and momentum > 0)
        if optimizer == "sgd" else
        torch.optim.AdamW(params, lr=float(lr), weight_decay=float(weight_decay)))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min_lr)
             if schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))
    config = {"epochs": epochs, "optimizer": optimizer, "lr": float(lr),
              "momentum": float(momentum), "nesterov": bool(nesterov),
              "weight_decay": float(weight_decay), "schedule": schedule, "min_lr": float(min_lr),
              "label_smoothing": float(label_smoothing), "grad_clip": grad_clip}
    hist: Dict[str, Any] = {"epoch": [], "loss": [], "train_acc": [], "val_acc": [], "lr": [],
                            "seconds": [], "resumed_from": 0}
    gen = getattr(train_loader, "generator", None)
    start = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = read_checkpoint(ckpt_path, device)
        if state["config"] != config:
            raise ValueError(f"checkpoint {str(ckpt_path)!r} was written with other settings "
                             f"(saved, now): {settings_changed(state['config'], config)}; "
                             f"delete it or pass resume=False")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {str(ckpt_path)!r} does not fit this model "
                             f"({type(model).__name__}): {exc}") from exc
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        hist = state["history"]
        start = int(state["epoch"])
        hist["resumed_from"] = start
        saved_env = state.get("environment") or {}
        if saved_env.get("threads") not in (None, torch.get_num_threads()):
            warnings.warn(f"checkpoint {str(ckpt_path)!r} was written with "
                          f"{saved_env['threads']} threads and is resumed with "
                          f"{torch.get_num_threads()}: the resumed weights can differ in the last "
                          f"bits from an uninterrupted run (torch.set_num_threads("
                          f"{saved_env['threads']}) reproduces it)", UserWarning, stacklevel=2)
        torch.set_rng_state(state["rng"])
        if gen is not None and state.get("loader_rng") is not None:
            gen.set_state(state["loader_rng"])
    elif seed is not None:
        torch.manual_seed(int(seed))
    criterion = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
    bar = progress_bar(range(start, epochs), desc=desc, total=epochs - start,
                       disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        n = 0
        for batch in train_loader:
            xb, yb = split_batch(batch, batch_fn)
            xb, yb = to_device(xb, device), yb.to(device)
            logits = logits_of(call_model(model, xb))
            loss = criterion(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            loss_sum += loss.detach().double() * yb.numel()
            correct += (logits.detach().argmax(1) == yb).sum()
            n += yb.numel()
        if n == 0:
            raise ValueError("train_loader produced no samples")
        if not bool(torch.isfinite(loss_sum)):  # one device sync per epoch, not per step
            raise ValueError(f"the training loss became {float(loss_sum)} in epoch {epoch + 1}; "
                             f"lower lr (now {lr}) or set grad_clip")
        hist["lr"].append(opt.param_groups[0]["lr"])
        sched.step()
        hist["epoch"].append(epoch + 1)
        hist["loss"].append(float(loss_sum) / n)
        hist["train_acc"].append(int(correct) / n)
        if val_loader is not None:
            hist["val_acc"].append(evaluate(model, val_loader, device, batch_fn))
        hist["seconds"].append(round(time.perf_counter() - t0, 3))
        if hasattr(bar, "set_postfix"):
            post = {"loss": f"{hist['loss'][-1]:.3f}"}
            if hist["val_acc"]:
                post["val"] = f"{hist['val_acc'][-1]:.3f}"
            bar.set_postfix(post)
        if ckpt_path is not None:
            atomic_torch_save({"format": _CKPT_FORMAT, "epoch": epoch + 1, "config": config,
                               "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "history": hist,
                               "rng": torch.get_rng_state(),
                               "loader_rng": gen.get_state() if gen is not None else None,
                               "environment": run_environment()},
                              ckpt_path, checksum=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, hist)
    model.eval()
    return hist


def finetune(model: nn.Module, train_loader: Iterable[Any],
             val_loader: Optional[Iterable[Any]] = None, epochs: int = 10, *,
             optimizer: str = "sgd", lr: Optional[float] = None, weight_decay: float = 5e-4,
             checkpoint: Optional[PathLike] = None, resume: bool = True,
             device: Optional[Union[str, torch.device]] = None, seed: Optional[int] = 0,
             progress: bool = True, **kw: Any) -> Dict[str, Any]:
    """Fine-tunes a (pruned) model in place: SGD with Nesterov momentum (or AdamW) and a cosine
    schedule, optional atomic per-epoch checkpoints with resume. See :func:`fit` for every option.

    Args:
        model: The model to train (weights updated in place; left in eval mode).
        train_loader, val_loader: ``(inputs, labels)`` loaders; validation is optional.
        epochs: Fine-tuning epochs.
        optimizer: ``'sgd'`` (default, lr 0.01) or ``'adamw'`` (lr 1e-3).
        lr, weight_decay: Peak learning rate (``None``: the optimizer's default) and decay.
        checkpoint: Path of the per-epoch checkpoint; an existing one is resumed.
        resume, device, seed, progress: As in :func:`fit`.
        **kw: Further :func:`fit` options (``momentum``, ``min_lr``, ``label_smoothing``, ...).

    Returns:
        The per-epoch history of :func:`fit`.

    Example:
        >>> import torch, dyngraph as dg
        >>> train, test = dg.zoo.example_loaders('digits')
        >>> m = dg.zoo.DigitsMLP(depth=2)
        >>> h = dg.prune.finetune(m, train, test, epochs=2, progress=False)
        >>> len(h['val_acc'])
        2
    """
    return fit(model, train_loader, val_loader, epochs, optimizer=optimizer, lr=lr,
               weight_decay=weight_decay, checkpoint=checkpoint, resume=resume, device=device,
               seed=seed, progress=progress, desc=kw.pop("desc", "finetune"), **kw)
