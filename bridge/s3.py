"""S3 artifact store: exported files in a bucket, for bridges on many machines (or Lambda).

``s3://bucket/prefix``. The endpoint and region come from the settings (``s3_endpoint_url``,
``s3_region``) or the standard AWS configuration (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
profiles); credentials only from the standard chain (environment, profile, instance or
task role), never from the bridge's own config.

Writes stream in constant memory: chunks are gathered into parts of ``part_size`` bytes
(8 MiB; S3's floor is 5 MiB) and each part is uploaded as soon as it is full. A file smaller
than one part is a single ``PutObject``. If the chunks fail midway the multipart upload is
aborted, so no object, whole or partial, appears under the key. Reads are ranged ``GET``s
streamed in chunks; sizes come from ``HEAD``.

In ``download_mode = "presigned"`` the service hands out :meth:`S3ArtifactStore.presigned_url`
links (a signed ``GetObject`` with the file's name and type) instead of bridge links, so the
bytes never pass through the bridge (Lambda's 6 MB response limit).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bridge.artifacts import CHUNK_SIZE, StoredObject
from bridge.errors import ConfigurationError, NotFoundError
from bridge.views import attachment_disposition

MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MAX_PRESIGN_SECONDS = 7 * 86400
"""SigV4 pre-signed URLs are valid for at most seven days."""
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3ArtifactStore:
    """The :class:`~bridge.artifacts.ArtifactStore` on an S3 bucket (or an S3-compatible one)."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigurationError(f"S3 parts must be at least {MIN_PART_SIZE} bytes")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> S3ArtifactStore:
        """``s3://bucket`` or ``s3://bucket/prefix``; a custom *endpoint_url* uses path-style
        addressing (what MinIO, LocalStack and moto expect)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigurationError(f"artifacts_url {url!r}: use s3://bucket/prefix")
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        return cls(client, parts.netloc, unquote(parts.path), part_size)

    def _name(self, key: str) -> str:
        segments = key.split("/")
        if not key or key.startswith("/") or any(s in ("", ".", "..") for s in segments):
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    # --- writing ------------------------------------------------------------------------

    def put(self, key: str, chunks: Iterable[bytes]) -> StoredObject:
        """Stream *chunks* to the bucket; the object appears only once it is complete."""
        name = self._name(key)
        digest, size = hashlib.sha256(), 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        upload_id = self._start_upload(name)
                    parts.append(self._upload_part(name, upload_id, len(parts) + 1, buffer))
            if upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer))
            else:
                if buffer:
                    parts.append(self._upload_part(name, upload_id, len(parts) + 1, buffer))
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):  # the original error matters more
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=name, UploadId=upload_id
                    )
            raise
        return StoredObject(size, digest.hexdigest())

    def _start_upload(self, name: str) -> str:
        response = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)
        return str(response["UploadId"])

    def _upload_part(
        self, name: str, upload_id: str, number: int, buffer: bytearray
    ) -> dict[str, Any]:
        """Upload (and drop from *buffer*) the next part: at most ``part_size`` bytes."""
        body = bytes(buffer[: self.part_size])
        del buffer[: self.part_size]
        response = self.client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    # --- reading ------------------------------------------------------------------------

    def open(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the bytes of *key* from *start*, at most *length* of them (a ranged GET).

        :raises NotFoundError: no such object.
        """
        name = self._name(key)
        if length == 0:
            self.size(key)
            return iter(())
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            request["Range"] = f"bytes={start}-{end}"
        try:
            response = self.client.get_object(**request)
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFoundError(f"artifact {key!r} is gone") from None
            if str(exc.response.get("Error", {}).get("Code")) == "InvalidRange":
                return iter(())  # *start* is at or past the end: nothing to read
            raise
        return self._stream(response["Body"])

    @staticmethod
    def _stream(body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_SIZE)
        finally:
            body.close()

    def size(self, key: str) -> int:
        """The object's size (``HEAD``). :raises NotFoundError: no such object."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFoundError(f"artifact {key!r} is gone") from None
            raise
        return int(response["ContentLength"])

    def delete(self, key: str) -> None:
        """Remove the object (S3 ignores missing keys)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    def ping(self) -> None:
        """Raise if the bucket cannot be reached with these credentials."""
        self.client.head_bucket(Bucket=self.bucket)

    def presigned_url(self, key: str, filename: str, content_type: str, expires_in: int) -> str:
        """A pre-signed ``GetObject`` URL valid for *expires_in* seconds (1 s to 7 days) that
        answers with the file's name and type."""
        seconds = max(1, min(int(expires_in), MAX_PRESIGN_SECONDS))
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._name(key),
                "ResponseContentDisposition": attachment_disposition(filename),
                "ResponseContentType": content_type,
            },
            ExpiresIn=seconds,
        )
        return url
