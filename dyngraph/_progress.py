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
