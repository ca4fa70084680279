"""Thread count by size: small ops run on one thread.

A scatter or sort over a few thousand edges finishes in well under a millisecond on one thread,
but with two or more threads it waits for the others to be scheduled: on a loaded 2-core machine
``dg.modularity`` at N = 20,000 took a median 102 ms with 2 threads against 0.9 ms with one. The
ops wrapped in :func:`one_thread_if_small` (modularity, symmetrisation, the snapshots' batched
passes) drop to one thread below :data:`SMALL_WORK` elements and restore the caller's setting
after; large GEMMs keep every thread.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar, cast

import torch

F = TypeVar("F", bound=Callable[..., Any])

#: Elements of work below which an op runs on one thread (a few milliseconds of scatter work).
SMALL_WORK = 1 << 21


@contextlib.contextmanager
def one_thread_if_small(work: int) -> Iterator[None]:
    """Runs the block on one CPU thread when ``work`` (elements touched) is below
    :data:`SMALL_WORK`; restores the thread count after, also on error. The thread count is
    process-wide: calls from several Python threads at once share it."""
    threads = torch.get_num_threads()
    if threads == 1 or work >= SMALL_WORK:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def small_op(work: Callable[..., int]) -> Callable[[F], F]:
    """Decorator: runs the function under :func:`one_thread_if_small` with the work that
    ``work(*args, **kwargs)`` estimates from its arguments."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with one_thread_if_small(work(*args, **kwargs)):
                return fn(*args, **kwargs)
        return cast(F, inner)
    return wrap
