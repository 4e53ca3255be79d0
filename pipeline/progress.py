"""Progress bars: live on a terminal, one update every few seconds into a file or pipe, none when quiet.

A bar redrawn at every step writes megabytes into a redirected log (and logs are files on a
cluster); so when the stream is not a terminal the bar is redrawn at most every
``LOG_INTERVAL_S`` seconds. ``--quiet`` turns bars off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL_S", "progress_bar"]

LOG_INTERVAL_S = 5.0


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, file: IO[str] | None = None,
                 **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on ``file`` (stderr): throttled off a terminal, off unless ``enabled``."""
    stream = file if file is not None else sys.stderr
    interval = 0.1 if _is_terminal(stream) else LOG_INTERVAL_S
    return tqdm(iterable, file=stream, disable=not enabled, mininterval=interval, maxinterval=max(interval, 10.0),
                **kwargs)
