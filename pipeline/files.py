"""Writing files whole or not at all: the one atomic-write helper every module uses.

A file is written under a hidden temporary name in its own folder, flushed to disk, then
renamed over the target (``os.replace`` is atomic on POSIX). A reader therefore sees the
old file or the new one, never half of one, and a crash or a full disk leaves the old file
in place and no temporary behind.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["DiskFullError", "atomic_write", "atomic_write_text", "default_cache_dir"]


class DiskFullError(OSError):
    """No space left (or quota exceeded) while writing a file; the message names the file."""

    def __str__(self) -> str:
        return str(self.strerror)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it into place.

    ``write`` receives the temporary path and may open it any way it likes (``torch.save``,
    ``pq.write_table``, ``Image.save``). On any failure the temporary file is removed and the
    target is left as it was; a full disk raises :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # the bytes must be on disk before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(err.errno, f"no space left on the device to write {path}") from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def default_cache_dir() -> Path:
    """Where the pipeline keeps what it can rebuild (built-in data, decoded images, reference scores).

    ``$BILD_CACHE``, else ``~/.cache/bild-dehaze``. Each node of a cluster has its own.
    """
    return Path(os.environ.get("BILD_CACHE") or Path.home() / ".cache" / "bild-dehaze")
