"""Progress bars: tqdm, off with ``progress=False`` / ``--quiet`` or ``DYNGRAPH_QUIET=1``."""
from __future__ import annotations

import os
from typing import Iterable, Optional


def progress_bar(it: Iterable, desc: str = "", total: Optional[int] = None, disable: bool = False,
                 **kw):
    if disable or os.environ.get("DYNGRAPH_QUIET", "0") == "1":
        return it
    from tqdm.auto import tqdm
    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_counter(total: int, desc: str = "", disable: bool = False):
    """A bar advanced by hand (``.update(n)``, ``.close()``); a no-op when disabled or quiet."""
    if disable or os.environ.get("DYNGRAPH_QUIET", "0") == "1":
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
