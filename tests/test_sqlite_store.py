"""Tests for bridge.stores.sqlite: versions, idempotency keys, leases, and expiring values."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.errors import ConfigurationError
from bridge.models import Job, JobState
from bridge.stores import SQLiteStore, open_store
from bridge.stores.base import IdempotencyRecord

T0 = 1_700_000_000.0


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "sub" / "bridge.sqlite3")


@pytest.fixture
def store(db_path: str) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db_path)
    yield s
    s.close()


def make_job(
    job_id: str = "j1",
    tenant: str = "acme",
    *,
    next_poll_at: float = T0,
    state: JobState = JobState.QUEUED,
    expires_at: float | None = None,
) -> Job:
    return Job(
        id=job_id,
        tenant_id=tenant,
        backend="scroll-rest",
        request={"source": {"pageId": "1"}, "format": "pdf"},
        created_at=T0,
        updated_at=T0,
        state=state,
        next_poll_at=next_poll_at,
        expires_at=expires_at,
    )


# --- jobs -------------------------------------------------------------------------------


def test_insert_and_get(store: SQLiteStore) -> None:
    job = make_job()
    job.handle = {"jobId": "up-1", "cookies": {"JSESSIONID": "x"}}
    assert store.insert_job(job) is None
    loaded = store.get_job("j1")
    assert loaded == job
    assert store.get_job("nope") is None


def test_save_bumps_the_version_and_persists(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.state, job.progress, job.phase = JobState.RUNNING, 40, "exporting"
    assert store.save_job(job) is True
    assert job.version == 1
    loaded = store.get_job("j1")
    assert loaded is not None
    assert (loaded.state, loaded.progress, loaded.phase, loaded.version) == (
        JobState.RUNNING,
        40,
        "exporting",
        1,
    )


def test_save_with_a_stale_version_fails_and_writes_nothing(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    first, second = store.get_job("j1"), store.get_job("j1")
    assert first is not None and second is not None
    first.phase = "mine"
    assert store.save_job(first)
    second.phase = "theirs"
    assert store.save_job(second) is False
    assert second.version == 0  # unchanged, so the caller can reload and retry
    loaded = store.get_job("j1")
    assert loaded is not None and loaded.phase == "mine" and loaded.version == 1


def test_save_of_an_unknown_job_fails(store: SQLiteStore) -> None:
    assert store.save_job(make_job("ghost")) is False


def test_idempotency_key_returns_the_first_record(store: SQLiteStore) -> None:
    assert store.insert_job(make_job("j1"), "key-1", "fp-a") is None
    earlier = store.insert_job(make_job("j2"), "key-1", "fp-b")
    assert earlier == IdempotencyRecord("fp-a", "j1")
    assert store.get_job("j2") is None  # nothing inserted on reuse


def test_idempotency_keys_are_per_tenant(store: SQLiteStore) -> None:
    assert store.insert_job(make_job("j1", "acme"), "key-1", "fp") is None
    assert store.insert_job(make_job("j2", "globex"), "key-1", "fp") is None
    assert store.get_job("j2") is not None


def test_delete_job_frees_its_idempotency_key(store: SQLiteStore) -> None:
    store.insert_job(make_job("j1"), "key-1", "fp")
    store.delete_job("j1")
    assert store.get_job("j1") is None
    assert store.insert_job(make_job("j2"), "key-1", "fp") is None


def test_claim_is_exclusive_across_threads(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    barrier = threading.Barrier(20)
    wins: list[str] = []
    errors: list[BaseException] = []

    def race(owner: str) -> None:
        try:
            barrier.wait()
            if store.claim_job("j1", owner, T0, 60):
                wins.append(owner)
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()  # this thread's connection

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(wins) == 1


def test_claim_is_exclusive_across_store_instances(db_path: str) -> None:
    first, second = SQLiteStore(db_path), SQLiteStore(db_path)
    try:
        first.insert_job(make_job())
        assert first.claim_job("j1", "a", T0, 60)
        assert not second.claim_job("j1", "b", T0 + 1, 60)
    finally:
        first.close()
        second.close()


def test_claim_respects_next_poll_at_unless_forced(store: SQLiteStore) -> None:
    store.insert_job(make_job(next_poll_at=T0 + 10))
    assert store.claim_job("j1", "a", T0, 60) is False
    assert store.claim_job("j1", "a", T0 + 9.99, 60) is False
    assert store.claim_job("j1", "a", T0, 60, force=True) is True


def test_force_does_not_steal_a_held_lease(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    assert store.claim_job("j1", "b", T0 + 1, 60, force=True) is False


def test_due_exactly_now_is_claimable(store: SQLiteStore) -> None:
    store.insert_job(make_job(next_poll_at=T0))
    assert store.claim_job("j1", "a", T0, 60)


@pytest.mark.parametrize("state", [JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED])
def test_final_jobs_cannot_be_claimed(store: SQLiteStore, state: JobState) -> None:
    store.insert_job(make_job(state=state))
    assert store.claim_job("j1", "a", T0, 60) is False
    assert store.claim_job("j1", "a", T0, 60, force=True) is False


def test_unknown_job_cannot_be_claimed(store: SQLiteStore) -> None:
    assert store.claim_job("ghost", "a", T0, 60) is False


def test_lease_expiry_lets_another_claim(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 10)
    assert store.claim_job("j1", "b", T0 + 9.9, 10) is False
    assert store.claim_job("j1", "b", T0 + 10, 10) is True
    # a's lease is gone: it can neither extend nor release b's.
    assert store.extend_lease("j1", "a", T0 + 100) is False
    store.release_job("j1", "a")
    assert store.claim_job("j1", "c", T0 + 11, 10) is False


def test_extend_lease_by_owner_only(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 10)
    assert store.extend_lease("j1", "b", T0 + 500) is False
    assert store.extend_lease("j1", "a", T0 + 500) is True
    assert store.claim_job("j1", "b", T0 + 100, 10) is False  # extended past T0 + 10
    assert store.claim_job("j1", "b", T0 + 500, 10) is True


def test_release_by_owner_only(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    store.release_job("j1", "b")
    assert store.claim_job("j1", "c", T0 + 1, 60) is False
    store.release_job("j1", "a")
    assert store.claim_job("j1", "c", T0 + 1, 60) is True


def test_save_does_not_drop_the_lease(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    job = store.get_job("j1")
    assert job is not None
    job.state = JobState.RUNNING
    assert store.save_job(job)
    assert store.claim_job("j1", "b", T0 + 1, 60) is False


def test_due_jobs_order_and_filters(store: SQLiteStore) -> None:
    store.insert_job(make_job("late", next_poll_at=T0 - 1))
    store.insert_job(make_job("early", next_poll_at=T0 - 30))
    store.insert_job(make_job("now", next_poll_at=T0))
    store.insert_job(make_job("future", next_poll_at=T0 + 1))
    store.insert_job(make_job("running", next_poll_at=T0 - 10, state=JobState.RUNNING))
    store.insert_job(make_job("done", next_poll_at=T0 - 50, state=JobState.COMPLETE))
    store.insert_job(make_job("failed", next_poll_at=T0 - 50, state=JobState.FAILED))
    store.insert_job(make_job("gone", next_poll_at=T0 - 50, state=JobState.CANCELLED))
    store.insert_job(make_job("leased", next_poll_at=T0 - 40))
    assert store.claim_job("leased", "w", T0 - 5, 60)
    assert store.due_jobs(T0, 100) == ["early", "running", "late", "now"]
    assert store.due_jobs(T0, 2) == ["early", "running"]
    assert store.due_jobs(T0 - 100, 100) == []


def test_expired_jobs(store: SQLiteStore) -> None:
    store.insert_job(make_job("old", state=JobState.COMPLETE, expires_at=T0 - 1))
    store.insert_job(make_job("edge", state=JobState.FAILED, expires_at=T0))
    store.insert_job(make_job("fresh", state=JobState.COMPLETE, expires_at=T0 + 1))
    store.insert_job(make_job("active"))
    expired = store.expired_jobs(T0, 100)
    assert sorted(job.id for job in expired) == ["edge", "old"]
    assert all(isinstance(job, Job) for job in expired)
    assert len(store.expired_jobs(T0, 1)) == 1


def test_expires_at_set_by_save_is_seen_by_expired_jobs(store: SQLiteStore) -> None:
    store.insert_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.state, job.expires_at = JobState.COMPLETE, T0 + 5
    assert store.save_job(job)
    assert store.expired_jobs(T0 + 4, 10) == []
    assert [j.id for j in store.expired_jobs(T0 + 5, 10)] == ["j1"]
    assert store.due_jobs(T0 + 100, 10) == []


def test_survives_reopening_the_same_file(db_path: str) -> None:
    first = SQLiteStore(db_path)
    first.insert_job(make_job(), "key-1", "fp")
    first.set_value("k", "v", T0)
    first.close()
    second = SQLiteStore(db_path)
    try:
        assert second.get_job("j1") is not None
        assert second.get_value("k", T0) == "v"
        assert second.insert_job(make_job("j2"), "key-1", "fp") == IdempotencyRecord("fp", "j1")
    finally:
        second.close()


def test_two_open_stores_see_each_others_writes(db_path: str) -> None:
    first, second = SQLiteStore(db_path), SQLiteStore(db_path)
    try:
        first.insert_job(make_job())
        job = second.get_job("j1")
        assert job is not None
        job.phase = "from-second"
        assert second.save_job(job)
        reread = first.get_job("j1")
        assert reread is not None and reread.phase == "from-second"
    finally:
        first.close()
        second.close()


# --- values -----------------------------------------------------------------------------


def test_values_get_set_delete(store: SQLiteStore) -> None:
    assert store.get_value("k", T0) is None
    store.set_value("k", "v1", T0)
    assert store.get_value("k", T0 + 10**9) == "v1"
    store.set_value("k", "v2", T0)
    assert store.get_value("k", T0) == "v2"
    store.delete_value("k")
    assert store.get_value("k", T0) is None
    store.delete_value("missing")


def test_value_ttl_expiry(store: SQLiteStore) -> None:
    store.set_value("k", "v", T0, ttl=10)
    assert store.get_value("k", T0 + 9.99) == "v"
    assert store.get_value("k", T0 + 10) is None
    store.set_value("k", "forever", T0 + 20)
    assert store.get_value("k", T0 + 10**6) == "forever"


def test_add_value_is_set_if_absent(store: SQLiteStore) -> None:
    assert store.add_value("k", "first", T0) == "first"
    assert store.add_value("k", "second", T0) == "first"
    assert store.get_value("k", T0) == "first"


def test_add_value_replaces_an_expired_value(store: SQLiteStore) -> None:
    assert store.add_value("k", "first", T0, ttl=5) == "first"
    assert store.add_value("k", "second", T0 + 4, ttl=5) == "first"
    assert store.add_value("k", "second", T0 + 5, ttl=5) == "second"
    assert store.get_value("k", T0 + 9) == "second"
    assert store.get_value("k", T0 + 10) is None


def test_add_value_has_one_winner_across_threads(store: SQLiteStore) -> None:
    barrier = threading.Barrier(10)
    results: list[str] = []

    def race(value: str) -> None:
        barrier.wait()
        results.append(store.add_value("secret", value, T0))
        store.close()

    threads = [threading.Thread(target=race, args=(f"v{i}",)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 10
    assert len(set(results)) == 1
    assert store.get_value("secret", T0) == results[0]


def test_ping(store: SQLiteStore) -> None:
    store.ping()


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
