"""What a network costs: parameters, FLOPs (torch's own ``FlopCounterMode``) and CPU latency."""
from __future__ import annotations

import statistics
import time
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
from torch import nn

from .._validate import check_flag, check_positive_int
from ..capture._taps import call_model, first_tensor
from ._surgery import (
    ExampleInput,
    check_example_input,
    check_surgery_model,
    eval_mode,
    infer_example_input,
    input_error,
    run_example,
)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once).

    Example:
        >>> import torch.nn as nn, dyngraph as dg
        >>> dg.prune.count_params(nn.Linear(10, 3))
        33
    """
    check_surgery_model(model)
    check_flag(trainable_only, "trainable_only")
    # parameters() yields a tensor shared by several modules once
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, example_input: Optional[ExampleInput] = None, *,
                per_input: bool = True, by_module: bool = False
                ) -> Union[int, Tuple[int, Dict[str, int]]]:
    """FLOPs of one eval-mode forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    torch counts matrix products and convolutions (a multiply-add is 2 FLOPs; norms, activations
    and pooling are not counted), which is what layer pruning changes.

    Args:
        model: The network (training mode restored).
        example_input: An input batch (guessed from the first layer when ``None``).
        per_input: Divide by the batch size (FLOPs per sample).
        by_module: Also return torch's per-module totals ``{module name: FLOPs}``.

    Returns:
        Total FLOPs (an int), and the per-module dict when ``by_module``.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> dg.prune.count_flops(nn.Linear(10, 3), torch.zeros(4, 10))
        60
    """
    from torch.utils.flop_counter import FlopCounterMode
    check_surgery_model(model)
    check_flag(per_input, "per_input")
    check_flag(by_module, "by_module")
    if example_input is None:
        example_input = infer_example_input(model)
    check_example_input(example_input)
    first = first_tensor(example_input)
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
    with FlopCounterMode(display=False) as counter:
        run_example(model, example_input)
    div = batch if per_input else 1
    total = int(counter.get_total_flops()) // div
    if not by_module:
        return total
    return total, {name: int(sum(ops.values())) // div
                   for name, ops in counter.get_flop_counts().items()}


def measure_latency(model: nn.Module, example_input: Optional[ExampleInput] = None, *,
                    repeats: int = 30, warmup: int = 5, threads: Optional[int] = None
                    ) -> Dict[str, float]:
    """Wall-clock time of one eval-mode, no-grad forward pass.

    Args:
        model: The network (training mode restored).
        example_input: The batch to time (guessed, batch 2, when ``None``).
        repeats: Timed runs; warmup: untimed runs first.
        threads: ``torch.set_num_threads`` during the measurement (restored after).

    Returns:
        ``{'median_ms', 'mean_ms', 'std_ms', 'min_ms', 'repeats', 'threads', 'batch'}``. On a
        shared machine prefer the median and the minimum.

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> t = dg.prune.measure_latency(nn.Linear(10, 3), torch.zeros(1, 10), repeats=3, warmup=1)
        >>> t['median_ms'] > 0
        True
    """
    check_surgery_model(model)
    check_positive_int(repeats, "repeats")
    check_positive_int(warmup, "warmup", minimum=0)
    if threads is not None:
        check_positive_int(threads, "threads")
    if example_input is None:
        example_input = infer_example_input(model)
    check_example_input(example_input)
    first = first_tensor(example_input)
    if first is None:
        raise TypeError("example_input holds no tensor to time")
    old_threads = torch.get_num_threads()
    times: list = []
    warmed = 0
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with eval_mode(model), torch.no_grad():
            for _ in range(warmup):
                call_model(model, example_input)
                warmed += 1
            for _ in range(repeats):
                if first.is_cuda:
                    torch.cuda.synchronize(first.device)
                t0 = time.perf_counter()
                call_model(model, example_input)
                if first.is_cuda:
                    torch.cuda.synchronize(first.device)
                times.append((time.perf_counter() - t0) * 1e3)
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as exc:
        if times or warmed:  # it ran before: not the input's fault
            raise
        raise input_error(model, example_input, exc) from exc
    finally:
        torch.set_num_threads(old_threads)
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
            "std_ms": statistics.stdev(times) if len(times) > 1 else 0.0, "min_ms": min(times),
            "repeats": repeats, "threads": threads or old_threads,
            "batch": int(first.shape[0]) if first.dim() > 0 else 1}


def cost_report(model: nn.Module, example_input: Optional[ExampleInput] = None, *,
                latency: bool = True, latency_input: Optional[ExampleInput] = None,
                **latency_kw: Any) -> Dict[str, Any]:
    """Parameters, FLOPs per sample and (optionally) CPU latency of a model.

    Args:
        model: The network.
        example_input: Input for the FLOP count (guessed when ``None``).
        latency: Also time the forward pass.
        latency_input: Batch to time (default: ``example_input``).
        **latency_kw: Passed to :func:`measure_latency` (``repeats``, ``warmup``, ``threads``).

    Example:
        >>> import torch, torch.nn as nn, dyngraph as dg
        >>> r = dg.prune.cost_report(nn.Linear(10, 3), torch.zeros(2, 10), latency=False)
        >>> r['params'], r['flops']
        (33, 60)
    """
    check_surgery_model(model)
    check_flag(latency, "latency")
    if example_input is None:
        example_input = infer_example_input(model)
    out: Dict[str, Any] = {"params": count_params(model),
                           "flops": count_flops(model, example_input)}
    if latency:
        out["latency"] = measure_latency(model, latency_input if latency_input is not None
                                         else example_input, **latency_kw)
    return out


def prune_report(original: nn.Module, pruned: nn.Module,
                 example_input: Optional[ExampleInput] = None, *,
                 test_loader: Optional[Iterable[Any]] = None, latency: bool = True,
                 **latency_kw: Any) -> Dict[str, Any]:
    """Before/after costs of a pruning, with relative reductions, and accuracies when a
    ``test_loader`` is given.

    Returns:
        ``{'before': cost, 'after': cost, 'params_reduction', 'flops_reduction',
        'latency_speedup', 'acc_before', 'acc_after'}`` (reductions are fractions in [0, 1]).

    Example:
        >>> import torch, dyngraph as dg
        >>> m = dg.zoo.resnet56()
        >>> drop = [f'layer1.{i}' for i in range(2, 9)] + [f'layer2.{i}' for i in range(3, 9)] \\
        ...        + [f'layer3.{i}' for i in range(6, 9)]
        >>> x = torch.zeros(1, 3, 32, 32)
        >>> r = dg.prune.prune_report(m, dg.prune.prune_layers(m, drop), x, latency=False)
        >>> round(r['params_reduction'], 3), round(r['flops_reduction'], 3)
        (0.429, 0.602)
    """
    from ._finetune import evaluate
    check_surgery_model(original)
    check_surgery_model(pruned)
    check_flag(latency, "latency")
    if example_input is None:
        example_input = infer_example_input(original)
    before = cost_report(original, example_input, latency=latency, **latency_kw)
    after = cost_report(pruned, example_input, latency=latency, **latency_kw)
    out: Dict[str, Any] = {
        "before": before, "after": after,
        "params_reduction": 1.0 - after["params"] / before["params"],
        "flops_reduction": 1.0 - after["flops"] / before["flops"] if before["flops"] else 0.0,
    }
    if latency:
        out["latency_speedup"] = before["latency"]["median_ms"] / after["latency"]["median_ms"]
    if test_loader is not None:
        out["acc_before"] = evaluate(original, test_loader)
        out["acc_after"] = evaluate(pruned, test_loader)
    return out


__all__ = ["cost_report", "count_flops", "count_params", "measure_latency", "prune_report"]
