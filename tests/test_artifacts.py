"""Tests for bridge.artifacts: atomic streamed writes, ranged reads, key confinement."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.artifacts import CHUNK_SIZE, LocalArtifactStore, StoredObject, open_artifact_store
from bridge.errors import ConfigurationError, NotFoundError

DATA = bytes(range(256)) * 4096  # 1 MiB, several read chunks


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def chunked(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_put_open_size_delete(store: LocalArtifactStore) -> None:
    stored = store.put("acme/job1", chunked(DATA))
    assert stored == StoredObject(len(DATA), hashlib.sha256(DATA).hexdigest())
    assert store.size("acme/job1") == len(DATA)
    assert b"".join(store.open("acme/job1")) == DATA
    assert all(len(c) <= CHUNK_SIZE for c in store.open("acme/job1"))
    store.delete("acme/job1")
    with pytest.raises(NotFoundError):
        store.size("acme/job1")
    with pytest.raises(NotFoundError):
        store.open("acme/job1")
    store.delete("acme/job1")  # missing keys are ignored


def test_put_empty_file(store: LocalArtifactStore) -> None:
    assert store.put("e", iter([])) == StoredObject(0, hashlib.sha256(b"").hexdigest())
    assert b"".join(store.open("e")) == b""


def test_put_overwrites_atomically(store: LocalArtifactStore) -> None:
    store.put("k", [b"old"])
    store.put("k", [b"new", b"er"])
    assert b"".join(store.open("k")) == b"newer"


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (0, None, DATA),
        (10, None, DATA[10:]),
        (10, 5, DATA[10:15]),
        (0, 0, b""),
        (CHUNK_SIZE - 3, 10, DATA[CHUNK_SIZE - 3 : CHUNK_SIZE + 7]),
        (len(DATA) - 4, 100, DATA[-4:]),
        (len(DATA), None, b""),
        (len(DATA) + 100, 5, b""),
        (0, CHUNK_SIZE * 2 + 1, DATA[: CHUNK_SIZE * 2 + 1]),
    ],
)
def test_open_range(
    store: LocalArtifactStore, start: int, length: int | None, expected: bytes
) -> None:
    store.put("k", [DATA])
    assert b"".join(store.open("k", start, length)) == expected


def test_failed_put_leaves_no_file_and_no_temp_file(store: LocalArtifactStore) -> None:
    def failing() -> Iterator[bytes]:
        yield b"partial data"
        raise ConnectionResetError("upstream went away")

    with pytest.raises(ConnectionResetError):
        store.put("acme/job1", failing())
    with pytest.raises(NotFoundError):
        store.size("acme/job1")
    assert files_under(store.root) == []


def test_failed_put_keeps_the_previous_version(store: LocalArtifactStore) -> None:
    store.put("k", [b"good"])

    def failing() -> Iterator[bytes]:
        yield b"bad"
        raise OSError("boom")

    with pytest.raises(OSError, match="boom"):
        store.put("k", failing())
    assert b"".join(store.open("k")) == b"good"
    assert files_under(store.root) == ["k"]


def test_temp_file_is_not_visible_under_the_key_while_writing(store: LocalArtifactStore) -> None:
    seen: list[bool] = []

    def watching() -> Iterator[bytes]:
        yield b"a"
        seen.append((store.root / "k").exists())
        yield b"b"

    store.put("k", watching())
    assert seen == [False]
    assert b"".join(store.open("k")) == b"ab"


@pytest.mark.parametrize(
    "key",
    ["../x", "../../etc/passwd", "a/../../x", "/abs", "/etc/passwd", "", ".", "a/.."],
)
def test_keys_outside_the_root_are_rejected(store: LocalArtifactStore, key: str) -> None:
    """A key must name a file strictly inside the root folder."""
    with pytest.raises(ValueError):
        store.put(key, [b"x"])
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert not (store.root.parent / "x").exists()


def test_key_through_a_symlink_out_of_the_root_is_rejected(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "link").symlink_to(outside)
    with pytest.raises(ValueError):
        store.put("link/x", [b"x"])
    assert not (outside / "x").exists()


def test_ping(store: LocalArtifactStore) -> None:
    store.ping()


def test_open_artifact_store_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_artifact_store("file:var/artifacts")
    assert isinstance(store, LocalArtifactStore)
    store.put("a/b", [b"x"])
    assert (tmp_path / "var" / "artifacts" / "a" / "b").read_bytes() == b"x"


def test_open_artifact_store_absolute(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path}/abs", f"file://localhost{tmp_path}/abs"):
        store = open_artifact_store(url)
        assert isinstance(store, LocalArtifactStore)
        assert store.root == tmp_path / "abs"
        assert store.root.is_dir()


def test_open_artifact_store_decodes_percent_escapes(tmp_path: Path) -> None:
    store = open_artifact_store(f"file://{tmp_path}/with%20space")
    assert isinstance(store, LocalArtifactStore)
    assert store.root == tmp_path / "with space"


@pytest.mark.parametrize(
    "url", ["file:", "file://", "file://otherhost/x", "ftp://h/x", "var/artifacts", "s4://b/p"]
)
def test_open_artifact_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_artifact_store(url)
