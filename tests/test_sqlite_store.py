"""Tests for what only bridge.stores.sqlite does: its file (reopening, WAL, per-thread
connections) and its URLs. The contract it shares with Redis is in test_store_contract.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import ConfigurationError
from bridge.stores import SQLiteStore, open_store
from bridge.stores.base import IdempotencyRecord
from tests.test_store_contract import T0, make_job


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "sub" / "bridge.sqlite3")


@pytest.fixture
def store(db_path: str) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    yield s
    s.close()


# --- the file -----------------------------------------------------------------------------


def test_survives_reopening_the_same_file(db_path: str) -> None:
    first = SQLiteStore(db_path)
    first.insert_job(make_job(), "key-1", "fp")
    first.set_value("k", "v", T0)
    first.enqueue("q", "d1", "p", T0)
    first.close()
    second = SQLiteStore(db_path)
    try:
        assert second.get_job("j1") is not None
        assert second.get_value("k", T0) == "v"
        assert second.insert_job(make_job("j2"), "key-1", "fp") == IdempotencyRecord("fp", "j1")
        assert second.claim_item("q", "d1", "w", T0, 60) == "p"
    finally:
        second.close()


def test_the_file_is_in_wal_mode(store: SQLiteStore, db_path: str) -> None:
    store.ping()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_close_in_one_thread_leaves_the_others_connections_open(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    seen: list[str | None] = []

    def use_and_close() -> None:
        job = store.get_job("j1")
        seen.append(job.id if job else None)
        store.close()  # this thread's connection only

    worker = threading.Thread(target=use_and_close)
    worker.start()
    worker.join(timeout=30)
    assert seen == ["j1"]
    assert store.get_job("j1") is not None
    store.close()
    assert store.get_job("j1") is not None  # a closed thread reconnects on next use


# --- URLs ---------------------------------------------------------------------------------


def test_from_url_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = SQLiteStore.from_url("sqlite:///data/rel.db")
    assert relative.path == "data/rel.db"
    relative.close()
    assert (tmp_path / "data" / "rel.db").exists()
    absolute = SQLiteStore.from_url(f"sqlite:///{tmp_path}/abs.db")
    assert absolute.path == f"{tmp_path}/abs.db"
    absolute.close()
    assert (tmp_path / "abs.db").exists()


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite:///", "sqlite:"])
def test_from_url_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteStore.from_url(url)


def test_open_store(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(store, SQLiteStore)
    store.close()
    with pytest.raises(ConfigurationError):
        open_store("postgres://db/x")
