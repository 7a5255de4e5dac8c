"""Tests for bridge.s3 against moto's S3 server on loopback: streamed multipart uploads,
aborts that leave nothing behind, ranged reads, and pre-signed download links."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from bridge.artifacts import CHUNK_SIZE, StoredObject, open_artifact_store
from bridge.errors import ConfigurationError, NotFoundError
from bridge.s3 import MIN_PART_SIZE, S3ArtifactStore, attachment_disposition
from tests.conftest import ACME_KEY
from tests.redis_fixtures import free_port

PART = MIN_PART_SIZE
DATA = (bytes(range(256)) * (PART // 256)) * 2 + b"tail" * 3000  # two full parts and a bit


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 on a free loopback port, with throwaway credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"exports-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(s3_endpoint: str, bucket: str) -> S3ArtifactStore:
    return S3ArtifactStore.from_url(
        f"s3://{bucket}/exports", endpoint_url=s3_endpoint, region="us-east-1", part_size=PART
    )


def chunked(data: bytes, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def pending_uploads(store: S3ArtifactStore) -> list[Any]:
    uploads: list[Any] = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return uploads


def test_small_file_is_one_put(store: S3ArtifactStore) -> None:
    stored = store.put("acme/job1", [b"hello ", b"world"])
    assert stored == StoredObject(11, hashlib.sha256(b"hello world").hexdigest())
    assert store.size("acme/job1") == 11
    assert b"".join(store.open("acme/job1")) == b"hello world"
    head = store.client.head_object(Bucket=store.bucket, Key="exports/acme/job1")
    assert "-" not in head["ETag"]  # not a multipart object


def test_empty_file(store: S3ArtifactStore) -> None:
    assert store.put("e", iter([])) == StoredObject(0, hashlib.sha256(b"").hexdigest())
    assert store.size("e") == 0
    assert b"".join(store.open("e")) == b""


def test_large_file_streams_in_parts_as_chunks_arrive(store: S3ArtifactStore) -> None:
    consumed = 0

    def source() -> Iterator[bytes]:
        nonlocal consumed
        for chunk in chunked(DATA):
            consumed += len(chunk)
            yield chunk

    sent_at: list[int] = []
    upload_part = store.client.upload_part

    def spy(**kwargs: Any) -> Any:
        sent_at.append(consumed)
        return upload_part(**kwargs)

    store.client.upload_part = spy
    stored = store.put("acme/big.pdf", source())
    assert stored == StoredObject(len(DATA), hashlib.sha256(DATA).hexdigest())
    # Each part left as soon as it was full: never more than a part (and a chunk) in memory.
    assert len(sent_at) == 3
    assert sent_at[0] <= PART + CHUNK_SIZE
    assert sent_at[1] <= 2 * PART + CHUNK_SIZE
    assert store.size("acme/big.pdf") == len(DATA)
    assert b"".join(store.open("acme/big.pdf")) == DATA
    head = store.client.head_object(Bucket=store.bucket, Key="exports/acme/big.pdf")
    assert head["ETag"].strip('"').endswith("-3")
    assert pending_uploads(store) == []


def test_exact_multiple_of_the_part_size_has_no_empty_last_part(store: S3ArtifactStore) -> None:
    data = DATA[: 2 * PART]
    store.put("k", chunked(data))
    assert b"".join(store.open("k")) == data
    head = store.client.head_object(Bucket=store.bucket, Key="exports/k")
    assert head["ETag"].strip('"').endswith("-2")


@pytest.mark.parametrize(
    ("start", "length"),
    [
        (0, None),
        (10, None),
        (10, 5),
        (0, 0),
        (PART - 3, 10),  # across a part boundary
        (len(DATA) - 4, 100),
        (len(DATA), None),
        (len(DATA) + 100, 5),
        (0, CHUNK_SIZE * 2 + 1),
    ],
)
def test_ranged_reads(store: S3ArtifactStore, start: int, length: int | None) -> None:
    store.put("k", chunked(DATA))
    end = None if length is None else start + length
    got = list(store.open("k", start, length))
    assert b"".join(got) == DATA[start:end]
    assert all(len(c) <= CHUNK_SIZE for c in got)


def test_missing_objects(store: S3ArtifactStore) -> None:
    with pytest.raises(NotFoundError):
        store.size("nope")
    with pytest.raises(NotFoundError):
        store.open("nope")
    with pytest.raises(NotFoundError):
        store.open("nope", 0, 0)
    store.delete("nope")  # ignored


def test_delete(store: S3ArtifactStore) -> None:
    store.put("k", [b"x"])
    store.delete("k")
    with pytest.raises(NotFoundError):
        store.size("k")


def test_failure_mid_upload_leaves_nothing_and_aborts(store: S3ArtifactStore) -> None:
    def failing() -> Iterator[bytes]:
        yield from chunked(DATA[: PART + 1000])  # one part already uploaded
        raise ConnectionResetError("upstream went away")

    with pytest.raises(ConnectionResetError):
        store.put("acme/job1", failing())
    with pytest.raises(NotFoundError):
        store.size("acme/job1")
    assert pending_uploads(store) == []
    assert store.client.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0


def test_failure_keeps_the_previous_version(store: S3ArtifactStore) -> None:
    store.put("k", [b"good"])

    def failing() -> Iterator[bytes]:
        yield from chunked(DATA[: PART * 2 + 1])
        raise OSError("boom")

    with pytest.raises(OSError, match="boom"):
        store.put("k", failing())
    assert b"".join(store.open("k")) == b"good"


@pytest.mark.parametrize("key", ["../x", "/abs", "", "a//b", "a/./b", "a/.."])
def test_bad_keys_are_rejected(store: S3ArtifactStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, [b"x"])
    with pytest.raises(ValueError):
        store.open(key)


def test_presigned_url_downloads_with_name_and_type(store: S3ArtifactStore) -> None:
    store.put("acme/job1", [DATA[:1000]])
    url = store.presigned_url("acme/job1", "Quarterly report ü.pdf", "application/pdf", 60)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["60"]
    response = requests.get(url, timeout=10)  # no credentials: the URL is the credential
    assert response.status_code == 200
    assert response.content == DATA[:1000]
    assert response.headers["Content-Type"] == "application/pdf"
    disposition = response.headers["Content-Disposition"]
    assert disposition == attachment_disposition("Quarterly report ü.pdf")
    assert "filename*=UTF-8''Quarterly%20report%20%C3%BC.pdf" in disposition


@pytest.mark.parametrize(("asked", "granted"), [(0, 1), (-5, 1), (10**9, 7 * 86400)])
def test_presigned_lifetimes_are_clamped(store: S3ArtifactStore, asked: int, granted: int) -> None:
    url = store.presigned_url("k", "f.pdf", "application/pdf", asked)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(granted)]


def test_ping(store: S3ArtifactStore, s3_endpoint: str) -> None:
    store.ping()
    missing = S3ArtifactStore.from_url("s3://no-such-bucket", endpoint_url=s3_endpoint)
    with pytest.raises(ClientError):
        missing.ping()


def test_open_artifact_store_builds_s3_stores(s3_endpoint: str, bucket: str) -> None:
    store = open_artifact_store(
        f"s3://{bucket}/a/b", s3_endpoint_url=s3_endpoint, s3_region="us-east-1"
    )
    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix) == (bucket, "a/b")
    store.put("k", [b"x"])
    assert store.client.get_object(Bucket=bucket, Key="a/b/k")["Body"].read() == b"x"


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix"])
def test_bad_s3_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_artifact_store(url)


def test_part_size_below_the_s3_floor_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        S3ArtifactStore(object(), "b", part_size=MIN_PART_SIZE - 1)


# --- the service in presigned mode ----------------------------------------------------------


def test_presigned_mode_hands_out_s3_links_that_never_outlive_the_job(
    start_bridge: Callable[..., Any], s3_endpoint: str, bucket: str, suite: Any
) -> None:
    bridge = start_bridge(
        artifacts_url=f"s3://{bucket}/exports",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        download_mode="presigned",
        link_ttl=600,
    )
    session = bridge.session(ACME_KEY)
    response = session.post(
        f"{bridge.url}/v1/exports",
        json={"backend": "scroll-rest", "format": "pdf", "source": {"pageId": "1002"}},
        headers={"Prefer": "wait=20"},
    )
    job = response.json()
    assert job["state"] == "complete", job
    url = job["download"]["url"]
    assert url.startswith(f"{s3_endpoint}/{bucket}/exports/acme/")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"][0] in ("599", "600")
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200
    expected, filename = suite.scroll_engine.file(
        bridge.bridge.store.get_job(job["id"]).handle["jobId"]
    )
    assert fetched.content == expected.read()
    assert filename in fetched.headers["Content-Disposition"]

    # The job's file is kept for 100 more seconds: the link must not promise more.
    stored = bridge.bridge.store.get_job(job["id"])
    stored.expires_at = time.time() + 100
    assert bridge.bridge.store.save_job(stored)
    again = session.get(f"{bridge.url}/v1/exports/{job['id']}").json()
    expires = int(parse_qs(urlsplit(again["download"]["url"]).query)["X-Amz-Expires"][0])
    assert 95 <= expires <= 100
