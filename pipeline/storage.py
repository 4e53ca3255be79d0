"""Where experiments, checkpoints and models live: a local folder or an object store, behind one interface.

Every ``--storage``, ``--models-dir``, ``--model`` and experiment folder a command takes is a
local path or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands::

    runs                                   a local folder (as ever)
    s3://bucket/runs                       Amazon S3 (credentials: the AWS_* environment)
    s3://bucket/runs?endpoint_override=http://127.0.0.1:9000&scheme=http   an S3-compatible server (MinIO, ...)
    gs://bucket/runs                       Google Cloud Storage

A URI of a scheme pyarrow does not know, or a malformed one (``s3:/bucket``), is refused with
one line: it is never taken for a folder name. Credentials in the URI itself
(``s3://KEY:SECRET@bucket``) are refused too, because every recorded path would carry them.

A :class:`Location` is one file or folder there. Writes are whole or nothing on both kinds:
a local file is written beside its target and renamed into place (``pipeline.files``), an
object is one PUT, which an object store makes visible whole or not at all. A remote file a
reader needs as a local file (a model, a checkpoint) is fetched into the cache
(:func:`fetch`), keyed by its ETag, and never downloaded again while it is unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from .files import atomic_write, default_cache_dir

__all__ = ["Location", "StorageError", "fetch", "is_uri", "location"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")  # "s3://..." and the malformed "s3:/..." alike
_LOCAL_SCHEMES = ("file", "local")


class StorageError(ValueError):
    """A storage URI that cannot be used; the message names it and what was expected."""


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a URI (``scheme:/...``), as opposed to a local path."""
    return isinstance(text, str) and bool(_SCHEME.match(text))


@functools.lru_cache(maxsize=32)
def _filesystem(root_uri: str) -> tuple[pafs.FileSystem, str]:
    """One filesystem object per bucket and options: S3 clients are costly to build, cheap to share."""
    return pafs.FileSystem.from_uri(root_uri)


def _parse(uri: str, flag: str) -> tuple[pafs.FileSystem, str, str, str]:
    """(filesystem, path in it, URI without query, query) of a remote URI, or a one-line refusal."""
    parts = urllib.parse.urlsplit(uri)
    expected = "expected a local path or a URI such as s3://bucket/prefix or gs://bucket/prefix"
    if not uri.startswith(f"{parts.scheme}://") or not parts.netloc:
        raise StorageError(f"{flag} {uri!r} is not a valid URI ({parts.scheme}:// and a bucket or host); {expected}")
    if "@" in parts.netloc:
        raise StorageError(f"{flag} {parts.scheme}://...@{parts.netloc.rpartition('@')[2]}: credentials do not "
                           "belong in the URI (every recorded path would carry them); set the AWS_* (or the "
                           "store's own) environment variables")
    query = f"?{parts.query}" if parts.query else ""
    root = f"{parts.scheme}://{parts.netloc}{query}"
    try:
        fs, bucket = _filesystem(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        raise StorageError(f"{flag} {uri!r}: {str(err).strip().splitlines()[0]}; {expected}") from None
    path = "/".join(p for p in (bucket.rstrip("/"), parts.path.strip("/")) if p)
    return fs, path, f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}", query


@dataclass(frozen=True)
class Location:
    """One file or folder, local or in an object store; ``str()`` gives a form :func:`location` reads back."""

    fs: pafs.FileSystem = field(compare=False, repr=False)
    path: str  # the path inside ``fs`` (an absolute local path, or bucket/key)
    base: str  # the URI without its query (the local path for local files)
    query: str = ""  # "?endpoint_override=..." of a remote URI, carried to every child

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local(self) -> Path:
        """The local path; only for :attr:`is_local` locations."""
        if not self.is_local:
            raise StorageError(f"{self} is not on the local disk")
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rpartition("/")[2]

    @property
    def parent(self) -> Location:
        return Location(self.fs, self.path.rstrip("/").rpartition("/")[0], self.base.rstrip("/").rpartition("/")[0],
                        self.query)

    def __truediv__(self, name: str | os.PathLike) -> Location:
        name = str(name).strip("/")
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.base.rstrip('/')}/{name}", self.query)

    def __str__(self) -> str:
        return self.base + self.query

    def __fspath__(self) -> str:
        """A local location is a path to every API that takes one (``Path(loc)``, ``open(loc)``); a remote one is not."""
        return str(self.local)

    # --- reading ---------------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self} does not exist") from None

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def files(self, recursive: bool = True) -> list[Location]:
        """The files under this folder (none if it does not exist), sorted; temporaries left out."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=recursive)
        infos = [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]
        found = []
        for info in sorted(infos, key=lambda i: i.path):
            if info.base_name.startswith(".") and info.base_name.endswith(".tmp"):
                continue  # a local atomic write in flight
            relative = info.path[len(self.path.rstrip("/")) + 1:]
            found.append(self / relative)
        return found

    def children(self) -> list[Location]:
        """The files and folders directly in this folder, sorted."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        return [self / i.base_name for i in sorted(self.fs.get_file_info(selector), key=lambda i: i.path)]

    def version(self) -> str:
        """What changes whenever the content does: the object's ETag, or a local file's size and mtime."""
        if self.is_local:
            stat = self.local.stat()
            return f"{stat.st_size}-{stat.st_mtime_ns}"
        with self.fs.open_input_file(self.path) as f:  # a HEAD request: the metadata, not the bytes
            meta = f.metadata()
        etag = meta.get(b"ETag") or meta.get("ETag")
        if etag is None:  # a store without ETags: size and time as it reports them
            info = self._info()
            return f"{info.size}-{info.mtime_ns}"
        return etag.decode() if isinstance(etag, bytes) else str(etag)

    # --- writing ---------------------------------------------------------------------------------

    def write_bytes(self, data: bytes) -> None:
        """Write ``data`` whole or not at all: a local rename, or one PUT of the object."""
        if self.is_local:
            atomic_write(self.local, lambda tmp: tmp.write_bytes(data))
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def append_text(self, text: str) -> None:
        """Add ``text`` at the end; an object store has no append, so the (small) object is rewritten whole."""
        if self.is_local:
            self.local.parent.mkdir(parents=True, exist_ok=True)
            with open(self.local, "a", encoding="utf-8") as f:
                f.write(text)
            return
        self.write_text((self.read_text() if self.is_file() else "") + text)

    def delete(self) -> None:
        """Remove this file or folder (with everything in it); nothing if it does not exist."""
        kind = self._info().type
        if kind == pafs.FileType.File:
            self.fs.delete_file(self.path)
        elif kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)

    def move_to(self, target: Location) -> None:
        """Move this file or folder to ``target`` (a rename locally; copies then deletes on an object store)."""
        if self.is_local:
            target.local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.move(self.path, target.path)
            return
        for file in self.files() if self.is_dir() else [self]:
            relative = file.path[len(self.path) + 1:]
            self.fs.copy_file(file.path, (target / relative).path if relative else target.path)
        self.delete()


def location(where: str | os.PathLike | Location, flag: str = "path") -> Location:
    """The :class:`Location` of a local path or a storage URI; ``flag`` names the option in errors."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    match = _SCHEME.match(text) if isinstance(text, str) else None
    if match is None:
        path = str(Path(text).resolve())
        return Location(pafs.LocalFileSystem(), path, path)
    if match[1].lower() in _LOCAL_SCHEMES:
        return location(urllib.parse.urlsplit(text).path, flag)
    fs, path, base, query = _parse(text, flag)
    if isinstance(fs, pafs.LocalFileSystem):
        return location(path, flag)
    return Location(fs, path, base, query)


def fetch(where: str | os.PathLike | Location, cache: Path | None = None) -> Path:
    """A local file holding ``where``'s bytes: the file itself when local, else a cached copy.

    The copy is kept under ``<cache>/objects/<key>/<name>``, ``key`` a sha256 of the URI and the
    object's ETag: a changed object is fetched again, an unchanged one never is.
    """
    loc = location(where)
    if loc.is_local:
        return loc.local
    key = hashlib.sha256(f"{loc}\n{loc.version()}".encode()).hexdigest()[:32]
    target = (cache or default_cache_dir()) / "objects" / key / loc.name
    if not target.is_file():
        data = loc.read_bytes()
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
    return target
