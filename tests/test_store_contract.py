"""The ``Store`` contract (bridge/stores/base.py), checked alike on SQLite and a real Redis:
versions, idempotency keys, leases, due and expired jobs, expiring values and the outbox."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from bridge.models import Job, JobState
from bridge.stores import Store, open_store
from bridge.stores.base import IdempotencyRecord
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

T0 = 1_700_000_000.0
R = TypeVar("R")


@pytest.fixture(params=["sqlite", "redis"], ids=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the store under test keeps its data: a new SQLite file, or a flushed Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sub' / 'bridge.sqlite3'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def open_another(store_url: str) -> Iterator[Callable[[], Store]]:
    """Open one more store on the same data, as another bridge process would."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(store_url))
        return opened[-1]

    yield open_one
    for each in opened:
        each.close()


@pytest.fixture
def store(open_another: Callable[[], Store]) -> Store:
    """The store under test."""
    return open_another()


def make_job(
    job_id: str = "j1",
    tenant: str = "acme",
    *,
    next_poll_at: float = T0,
    state: JobState = JobState.QUEUED,
    expires_at: float | None = None,
) -> Job:
    """A job as the API would insert it."""
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


def race(count: int, attempt: Callable[[int], R]) -> list[R]:
    """Run ``attempt(i)`` in *count* threads released together; return every result."""
    barrier = threading.Barrier(count)
    results: list[R] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results.append(attempt(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == count
    return results


# --- jobs -------------------------------------------------------------------------------


def test_insert_and_get(store: Store) -> None:
    job = make_job()
    job.handle = {"jobId": "up-1", "cookies": {"JSESSIONID": "x"}}
    assert store.insert_job(job) is None
    assert store.get_job("j1") == job
    assert store.get_job("nope") is None


def test_inserting_an_existing_id_fails_and_writes_nothing(store: Store) -> None:
    store.insert_job(make_job())
    duplicate = make_job()
    duplicate.phase = "duplicate"
    with pytest.raises((sqlite3.IntegrityError, redis.ResponseError)):
        store.insert_job(duplicate, "key-1", "fp")
    assert store.get_job("j1") == make_job()
    assert store.insert_job(make_job("j2"), "key-1", "fp") is None  # the key was not taken


def test_save_bumps_the_version_and_persists(store: Store) -> None:
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


def test_save_with_a_stale_version_fails_and_writes_nothing(store: Store) -> None:
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


def test_concurrent_saves_of_one_version_have_one_winner(store: Store) -> None:
    store.insert_job(make_job())
    copies = [store.get_job("j1") for _ in range(10)]

    def save(i: int) -> tuple[int, bool]:
        job = copies[i]
        assert job is not None
        job.phase = f"saver-{i}"
        return i, store.save_job(job)

    winners = [i for i, saved in race(10, save) if saved]
    assert len(winners) == 1
    loaded = store.get_job("j1")
    assert loaded is not None
    assert (loaded.phase, loaded.version) == (f"saver-{winners[0]}", 1)


def test_save_of_an_unknown_job_fails(store: Store) -> None:
    assert store.save_job(make_job("ghost")) is False
    assert store.get_job("ghost") is None


def test_idempotency_key_returns_the_first_record(store: Store) -> None:
    assert store.insert_job(make_job("j1"), "key-1", "fp-a") is None
    assert store.insert_job(make_job("j2"), "key-1", "fp-b") == IdempotencyRecord("fp-a", "j1")
    assert store.get_job("j2") is None  # nothing inserted on reuse


def test_idempotency_keys_are_per_tenant(store: Store) -> None:
    assert store.insert_job(make_job("j1", "acme"), "key-1", "fp") is None
    assert store.insert_job(make_job("j2", "globex"), "key-1", "fp") is None
    assert store.get_job("j2") is not None
    # A colon in a tenant id cannot alias another tenant's key.
    assert store.insert_job(make_job("j3", "a:b"), "c", "fp") is None
    assert store.insert_job(make_job("j4", "a"), "b:c", "fp") is None
    assert store.get_job("j4") is not None


def test_idempotent_inserts_race_to_one_job(store: Store) -> None:
    outcomes = race(10, lambda i: (i, store.insert_job(make_job(f"j{i}"), "same-key", "fp")))
    winners = [i for i, record in outcomes if record is None]
    assert len(winners) == 1
    earlier = IdempotencyRecord("fp", f"j{winners[0]}")
    assert [record for _i, record in outcomes if record is not None] == [earlier] * 9
    assert [i for i in range(10) if store.get_job(f"j{i}") is not None] == winners


def test_delete_job_frees_its_idempotency_key(store: Store) -> None:
    store.insert_job(make_job("j1"), "key-1", "fp")
    store.delete_job("j1")
    assert store.get_job("j1") is None
    assert store.due_jobs(T0, 10) == []
    assert store.insert_job(make_job("j2"), "key-1", "fp") is None


def test_claim_is_exclusive_across_threads(store: Store) -> None:
    store.insert_job(make_job())
    wins = race(20, lambda i: store.claim_job("j1", f"w{i}", T0, 60))
    assert wins.count(True) == 1


def _claim_in_process(url: str, owner: str, barrier: Any, results: Any) -> None:
    store = open_store(url)
    barrier.wait()
    results.put((owner, store.claim_job("j1", owner, T0, 60)))
    store.close()


def test_claim_is_exclusive_across_processes(store: Store, store_url: str) -> None:
    store.insert_job(make_job())
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # import once, then fork each claimant
    barrier, results = ctx.Barrier(4), ctx.Queue()
    processes = [
        ctx.Process(target=_claim_in_process, args=(store_url, f"p{i}", barrier, results))
        for i in range(4)
    ]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=30) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert sum(won for _owner, won in outcomes) == 1


def test_claim_respects_next_poll_at_unless_forced(store: Store) -> None:
    store.insert_job(make_job(next_poll_at=T0 + 10))
    assert store.claim_job("j1", "a", T0, 60) is False
    assert store.claim_job("j1", "a", T0 + 9.99, 60) is False
    assert store.claim_job("j1", "a", T0, 60, force=True) is True


def test_force_does_not_steal_a_held_lease(store: Store) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    assert store.claim_job("j1", "b", T0 + 1, 60, force=True) is False


def test_due_exactly_now_is_claimable(store: Store) -> None:
    store.insert_job(make_job(next_poll_at=T0 + 0.123456))
    assert store.claim_job("j1", "a", T0 + 0.123455, 60) is False  # sub-millisecond precision
    assert store.claim_job("j1", "a", T0 + 0.123456, 60)


@pytest.mark.parametrize("state", [JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED])
def test_final_jobs_cannot_be_claimed(store: Store, state: JobState) -> None:
    store.insert_job(make_job(state=state))
    assert store.claim_job("j1", "a", T0, 60) is False
    assert store.claim_job("j1", "a", T0, 60, force=True) is False


def test_unknown_job_cannot_be_claimed(store: Store) -> None:
    assert store.claim_job("ghost", "a", T0, 60) is False
    assert store.extend_lease("ghost", "a", T0 + 60) is False
    store.release_job("ghost", "a")
    assert store.get_job("ghost") is None


def test_lease_expiry_lets_another_claim(store: Store) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 10)
    assert store.claim_job("j1", "b", T0 + 9.9, 10) is False
    assert store.due_jobs(T0 + 10, 10) == ["j1"]  # a's worker died: the job is due again
    assert store.claim_job("j1", "b", T0 + 10, 10) is True
    # a's lease is gone: it can neither extend nor release b's.
    assert store.extend_lease("j1", "a", T0 + 100) is False
    store.release_job("j1", "a")
    assert store.claim_job("j1", "c", T0 + 11, 10) is False


def test_extend_lease_by_owner_only(store: Store) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 10)
    assert store.extend_lease("j1", "b", T0 + 500) is False
    assert store.extend_lease("j1", "a", T0 + 500) is True
    assert store.claim_job("j1", "b", T0 + 100, 10) is False  # extended past T0 + 10
    assert store.due_jobs(T0 + 499, 10) == []
    assert store.due_jobs(T0 + 500, 10) == ["j1"]
    assert store.claim_job("j1", "b", T0 + 500, 10) is True


def test_release_by_owner_only(store: Store) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    store.release_job("j1", "b")
    assert store.claim_job("j1", "c", T0 + 1, 60) is False
    store.release_job("j1", "a")
    assert store.due_jobs(T0 + 1, 10) == ["j1"]
    assert store.claim_job("j1", "c", T0 + 1, 60) is True


def test_save_does_not_drop_the_lease(store: Store) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    job = store.get_job("j1")
    assert job is not None
    job.state = JobState.RUNNING
    assert store.save_job(job)
    assert store.claim_job("j1", "b", T0 + 1, 60) is False
    assert store.due_jobs(T0 + 1, 10) == []


def test_due_jobs_order_and_filters(store: Store) -> None:
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


def test_finishing_a_job_takes_it_off_the_due_list(store: Store) -> None:
    store.insert_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.next_poll_at = float("inf")  # stored, compared and read back as "never"
    assert store.save_job(job)
    assert store.due_jobs(T0 + 10**9, 10) == []
    reread = store.get_job("j1")
    assert reread is not None and reread.next_poll_at == float("inf")
    job.state, job.next_poll_at = JobState.COMPLETE, T0
    assert store.save_job(job)
    assert store.due_jobs(T0 + 10, 10) == []


def test_expired_jobs(store: Store) -> None:
    store.insert_job(make_job("old", state=JobState.COMPLETE, expires_at=T0 - 1))
    store.insert_job(make_job("edge", state=JobState.FAILED, expires_at=T0))
    store.insert_job(make_job("fresh", state=JobState.COMPLETE, expires_at=T0 + 1))
    store.insert_job(make_job("active"))
    expired = store.expired_jobs(T0, 100)
    assert sorted(job.id for job in expired) == ["edge", "old"]
    assert all(isinstance(job, Job) for job in expired)
    assert len(store.expired_jobs(T0, 1)) == 1


def test_expires_at_set_by_save_is_seen_by_expired_jobs(store: Store) -> None:
    store.insert_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.state, job.expires_at = JobState.COMPLETE, T0 + 5
    assert store.save_job(job)
    assert store.expired_jobs(T0 + 4, 10) == []
    assert [j.id for j in store.expired_jobs(T0 + 5, 10)] == ["j1"]
    assert store.due_jobs(T0 + 100, 10) == []


def test_two_stores_see_each_others_writes(store: Store, open_another: Callable[[], Store]) -> None:
    other = open_another()
    store.insert_job(make_job())
    job = other.get_job("j1")
    assert job is not None
    job.phase = "from-other"
    assert other.save_job(job)
    reread = store.get_job("j1")
    assert reread is not None and reread.phase == "from-other"
    assert store.claim_job("j1", "a", T0, 60)
    assert not other.claim_job("j1", "b", T0 + 1, 60)
    other.set_value("k", "v", T0)
    assert store.get_value("k", T0) == "v"
    assert other.enqueue("q", "d1", "p", T0)
    assert store.claim_item("q", "d1", "a", T0, 60) == "p"
    assert other.claim_item("q", "d1", "b", T0 + 1, 60) is None


# --- values -----------------------------------------------------------------------------


def test_values_get_set_delete(store: Store) -> None:
    assert store.get_value("k", T0) is None
    store.set_value("k", "v1", T0)
    assert store.get_value("k", T0 + 10**9) == "v1"
    store.set_value("k", "v2", T0)
    assert store.get_value("k", T0) == "v2"
    store.delete_value("k")
    assert store.get_value("k", T0) is None
    store.delete_value("missing")


def test_value_ttl_expiry(store: Store) -> None:
    store.set_value("k", "v", T0, ttl=10)
    assert store.get_value("k", T0 + 9.99) == "v"
    assert store.get_value("k", T0 + 10) is None
    store.set_value("k", "forever", T0 + 20)
    assert store.get_value("k", T0 + 10**6) == "forever"


def test_add_value_is_set_if_absent(store: Store) -> None:
    assert store.add_value("k", "first", T0) == "first"
    assert store.add_value("k", "second", T0) == "first"
    assert store.get_value("k", T0) == "first"


def test_add_value_replaces_an_expired_value(store: Store) -> None:
    assert store.add_value("k", "first", T0, ttl=5) == "first"
    assert store.add_value("k", "second", T0 + 4, ttl=5) == "first"
    assert store.add_value("k", "second", T0 + 5, ttl=5) == "second"
    assert store.get_value("k", T0 + 9) == "second"
    assert store.get_value("k", T0 + 10) is None


def test_add_value_has_one_winner_across_threads(store: Store) -> None:
    results = race(10, lambda i: store.add_value("secret", f"v{i}", T0))
    assert len(set(results)) == 1
    assert store.get_value("secret", T0) == results[0]


def test_ping(store: Store) -> None:
    store.ping()


# --- outbox -----------------------------------------------------------------------------


def test_enqueue_is_once_per_id_and_queue(store: Store) -> None:
    assert store.enqueue("deliveries", "d1", "p1", T0) is True
    assert store.enqueue("deliveries", "d1", "p2", T0) is False
    assert store.enqueue("other", "d1", "p3", T0) is True
    assert store.claim_item("deliveries", "d1", "w", T0, 60) == "p1"


def test_due_items_order_and_filters(store: Store) -> None:
    store.enqueue("q", "late", "", T0 - 1)
    store.enqueue("q", "early", "", T0 - 30)
    store.enqueue("q", "future", "", T0 + 1)
    store.enqueue("q", "leased", "", T0 - 40)
    store.enqueue("q:x", "elsewhere", "", T0 - 50)
    assert store.claim_item("q", "leased", "w", T0 - 5, 60) == ""
    assert store.due_items("q", T0, 10) == ["early", "late"]
    assert store.due_items("q", T0, 1) == ["early"]
    # An item whose lease ran out (its worker died) is due again; where it sorts differs
    # (SQLite: by due time, Redis: by lease end), the rest keep their order.
    after = store.due_items("q", T0 + 55, 10)
    assert sorted(after) == ["early", "future", "late", "leased"]
    assert [i for i in after if i != "leased"] == ["early", "late", "future"]


def test_claim_item_is_exclusive_and_respects_due_time(store: Store) -> None:
    store.enqueue("q", "d1", "payload", T0 + 10)
    assert store.claim_item("q", "d1", "a", T0, 60) is None
    assert store.claim_item("q", "d1", "a", T0 + 10, 60) == "payload"
    assert store.claim_item("q", "d1", "b", T0 + 69.9, 60) is None
    assert store.due_items("q", T0 + 69.9, 10) == []
    assert store.claim_item("q", "d1", "b", T0 + 70, 60) == "payload"  # a's lease ran out
    assert store.claim_item("q", "ghost", "a", T0, 60) is None


def test_claim_item_is_exclusive_across_threads(store: Store) -> None:
    store.enqueue("q", "d1", "payload", T0)
    payloads = race(20, lambda i: store.claim_item("q", "d1", f"w{i}", T0, 60))
    assert (payloads.count("payload"), payloads.count(None)) == (1, 19)


def test_reschedule_item_by_owner_only(store: Store) -> None:
    store.enqueue("q", "d1", "try-1", T0)
    assert store.claim_item("q", "d1", "a", T0, 60) == "try-1"
    store.reschedule_item("q", "d1", "b", "stolen", T0)
    assert store.claim_item("q", "d1", "b", T0 + 1, 60) is None
    store.reschedule_item("q", "d1", "a", "try-2", T0 + 30)
    assert store.due_items("q", T0 + 29, 10) == []
    assert store.due_items("q", T0 + 30, 10) == ["d1"]
    assert store.claim_item("q", "d1", "b", T0 + 30, 60) == "try-2"


def test_delete_item(store: Store) -> None:
    store.enqueue("q", "d1", "p", T0)
    store.delete_item("q", "d1")
    assert store.due_items("q", T0, 10) == []
    assert store.claim_item("q", "d1", "a", T0, 60) is None
    assert store.enqueue("q", "d1", "again", T0) is True
