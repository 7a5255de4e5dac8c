"""Where exported files are kept: a local folder by default, S3 when scaled out.

Writes stream in constant memory and are atomic: a reader sees the whole file or none.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from bridge.errors import ConfigurationError, NotFoundError

CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class StoredObject:
    """What :meth:`ArtifactStore.put` wrote."""

    size: int
    sha256: str


class ArtifactStore(Protocol):
    """A place to put files by key and read them back, whole or in part."""

    def put(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        """Write *chunks* under *key* atomically; nothing is visible if iteration fails."""

    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the bytes of *key* from *start*, at most *length* of them.

        :raises NotFoundError: no such object.
        """

    def size(self, key: str) -> int:
        """Return the size of *key*. :raises NotFoundError: no such object."""

    def delete(self, key: str) -> None:
        """Remove *key*; missing keys are ignored."""

    def ping(self) -> None:
        """Raise if the store is unusable (for ``/readyz``)."""


@runtime_checkable
class PresignedDownloads(Protocol):
    """An artifact store that can hand out its own expiring download URLs (S3)."""

    def presigned_url(self, key: str, filename: str, content_type: str, expires_in: int) -> str:
        """A URL that downloads *key* as *filename* for *expires_in* seconds."""


class LocalArtifactStore:
    """Files in a local folder, written to a temporary file then renamed into place."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents or not key or key.startswith("/"):
            raise ValueError(f"invalid artifact key {key!r}")
        return path

    def put(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as tmp:
                for chunk in chunks:
                    tmp.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredObject(size, digest.hexdigest())

    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"artifact {key!r} is gone") from None
        return self._read(handle, start, length)

    @staticmethod
    def _read(handle: BinaryIO, start: int, length: int | None) -> Iterator[bytes]:
        with handle:
            handle.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                chunk = handle.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def open_file(self, key: str) -> BinaryIO:
        """The file itself, for servers that can ``sendfile`` it (whole-file downloads).

        :raises NotFoundError: no such object.
        """
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"artifact {key!r} is gone") from None

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"artifact {key!r} is gone") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"artifact folder {str(self.root)!r} is not writable")


def open_artifact_store(
    url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None
) -> ArtifactStore:
    """Build the store for ``artifacts_url``.

    ``file:relative/folder`` (under the working directory), ``file:///absolute/folder``,
    or ``s3://bucket/prefix`` (at *s3_endpoint_url* in *s3_region*, else AWS's defaults).
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigurationError(f"artifacts_url {url!r} names no local folder")
        return LocalArtifactStore(unquote(parts.path))
    if parts.scheme == "s3":
        from bridge.s3 import S3ArtifactStore  # only scaled-out installs have boto3

        return S3ArtifactStore.from_url(url, endpoint_url=s3_endpoint_url, region=s3_region)
    raise ConfigurationError(f"artifacts_url {url!r}: use file: or s3:")
