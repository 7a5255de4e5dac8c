"""Tests for bridge.stores.redis against a real redis-server: the SQLite store's contract
(versions, idempotency keys, leases, due and expired jobs, expiring values) plus Redis's
own garbage collection and URL handling."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from bridge.errors import ConfigurationError
from bridge.models import Job, JobState
from bridge.stores import open_store
from bridge.stores.base import IdempotencyRecord
from bridge.stores.redis import RedisStore, split_url
from tests.redis_fixtures import redis_server, redis_url  # noqa: F401

T0 = 1_700_000_000.0


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:  # noqa: F811
    s = RedisStore.from_url(redis_url)
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


def test_insert_and_get(store: RedisStore) -> None:
    job = make_job()
    job.handle = {"jobId": "up-1", "cookies": {"JSESSIONID": "x"}}
    assert store.insert_job(job) is None
    assert store.get_job("j1") == job
    assert store.get_job("nope") is None


def test_inserting_an_existing_id_fails(store: RedisStore) -> None:
    store.insert_job(make_job())
    with pytest.raises(redis.ResponseError):
        store.insert_job(make_job())


def test_save_bumps_the_version_and_persists(store: RedisStore) -> None:
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


def test_save_with_a_stale_version_fails_and_writes_nothing(store: RedisStore) -> None:
    store.insert_job(make_job())
    first, second = store.get_job("j1"), store.get_job("j1")
    assert first is not None and second is not None
    first.phase = "mine"
    assert store.save_job(first)
    second.phase = "theirs"
    assert store.save_job(second) is False
    assert second.version == 0
    loaded = store.get_job("j1")
    assert loaded is not None and loaded.phase == "mine" and loaded.version == 1


def test_concurrent_saves_of_one_version_have_one_winner(store: RedisStore) -> None:
    store.insert_job(make_job())
    copies = [store.get_job("j1") for _ in range(10)]
    barrier = threading.Barrier(10)
    results: list[bool] = []

    def save(job: Job | None) -> None:
        assert job is not None
        barrier.wait()
        results.append(store.save_job(job))

    threads = [threading.Thread(target=save, args=(job,)) for job in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False] * 9 + [True]


def test_save_of_an_unknown_job_fails(store: RedisStore) -> None:
    assert store.save_job(make_job("ghost")) is False
    assert store.get_job("ghost") is None


def test_idempotency_key_returns_the_first_record(store: RedisStore) -> None:
    assert store.insert_job(make_job("j1"), "key-1", "fp-a") is None
    assert store.insert_job(make_job("j2"), "key-1", "fp-b") == IdempotencyRecord("fp-a", "j1")
    assert store.get_job("j2") is None


def test_idempotency_keys_are_per_tenant(store: RedisStore) -> None:
    assert store.insert_job(make_job("j1", "acme"), "key-1", "fp") is None
    assert store.insert_job(make_job("j2", "globex"), "key-1", "fp") is None
    # A colon in a tenant id cannot alias another tenant's key.
    assert store.insert_job(make_job("j3", "a:b"), "c", "fp") is None
    assert store.insert_job(make_job("j4", "a"), "b:c", "fp") is None
    assert store.get_job("j4") is not None


def test_idempotent_inserts_race_to_one_job(store: RedisStore) -> None:
    barrier = threading.Barrier(10)
    created: list[str] = []

    def insert(i: int) -> None:
        barrier.wait()
        if store.insert_job(make_job(f"j{i}"), "same-key", "fp") is None:
            created.append(f"j{i}")

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(created) == 1


def test_delete_job_frees_its_idempotency_key(store: RedisStore) -> None:
    store.insert_job(make_job("j1"), "key-1", "fp")
    store.delete_job("j1")
    assert store.get_job("j1") is None
    assert store.due_jobs(T0, 10) == []
    assert store.insert_job(make_job("j2"), "key-1", "fp") is None


def _claim_in_process(url: str, owner: str, barrier: Any, results: Any) -> None:
    store = RedisStore.from_url(url)
    barrier.wait()
    results.put((owner, store.claim_job("j1", owner, T0, 60)))
    store.close()


def test_claim_is_exclusive_across_threads(store: RedisStore) -> None:
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

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(wins) == 1


def test_claim_is_exclusive_across_processes(store: RedisStore, redis_url: str) -> None:  # noqa: F811
    store.insert_job(make_job())
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    processes = [
        ctx.Process(target=_claim_in_process, args=(redis_url, f"p{i}", barrier, results))
        for i in range(4)
    ]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=30) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert sum(won for _owner, won in outcomes) == 1


def test_claim_respects_next_poll_at_unless_forced(store: RedisStore) -> None:
    store.insert_job(make_job(next_poll_at=T0 + 10))
    assert store.claim_job("j1", "a", T0, 60) is False
    assert store.claim_job("j1", "a", T0 + 9.99, 60) is False
    assert store.claim_job("j1", "a", T0, 60, force=True) is True


def test_force_does_not_steal_a_held_lease(store: RedisStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    assert store.claim_job("j1", "b", T0 + 1, 60, force=True) is False


def test_due_exactly_now_is_claimable(store: RedisStore) -> None:
    store.insert_job(make_job(next_poll_at=T0 + 0.123456))
    assert store.claim_job("j1", "a", T0 + 0.123455, 60) is False  # sub-millisecond precision
    assert store.claim_job("j1", "a", T0 + 0.123456, 60)


@pytest.mark.parametrize("state", [JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED])
def test_final_jobs_cannot_be_claimed(store: RedisStore, state: JobState) -> None:
    store.insert_job(make_job(state=state))
    assert store.claim_job("j1", "a", T0, 60) is False
    assert store.claim_job("j1", "a", T0, 60, force=True) is False


def test_unknown_job_cannot_be_claimed(store: RedisStore) -> None:
    assert store.claim_job("ghost", "a", T0, 60) is False
    assert store.extend_lease("ghost", "a", T0 + 60) is False
    store.release_job("ghost", "a")
    assert store.get_job("ghost") is None


def test_lease_expiry_lets_another_claim(store: RedisStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 10)
    assert store.claim_job("j1", "b", T0 + 9.9, 10) is False
    assert store.claim_job("j1", "b", T0 + 10, 10) is True
    assert store.extend_lease("j1", "a", T0 + 100) is False
    store.release_job("j1", "a")
    assert store.claim_job("j1", "c", T0 + 11, 10) is False


def test_extend_lease_by_owner_only(store: RedisStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 10)
    assert store.extend_lease("j1", "b", T0 + 500) is False
    assert store.extend_lease("j1", "a", T0 + 500) is True
    assert store.claim_job("j1", "b", T0 + 100, 10) is False
    assert store.due_jobs(T0 + 499, 10) == []
    assert store.due_jobs(T0 + 500, 10) == ["j1"]
    assert store.claim_job("j1", "b", T0 + 500, 10) is True


def test_release_by_owner_only(store: RedisStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    store.release_job("j1", "b")
    assert store.claim_job("j1", "c", T0 + 1, 60) is False
    store.release_job("j1", "a")
    assert store.due_jobs(T0 + 1, 10) == ["j1"]
    assert store.claim_job("j1", "c", T0 + 1, 60) is True


def test_save_does_not_drop_the_lease(store: RedisStore) -> None:
    store.insert_job(make_job())
    assert store.claim_job("j1", "a", T0, 60)
    job = store.get_job("j1")
    assert job is not None
    job.state = JobState.RUNNING
    assert store.save_job(job)
    assert store.claim_job("j1", "b", T0 + 1, 60) is False
    assert store.due_jobs(T0 + 1, 10) == []


def test_due_jobs_order_and_filters(store: RedisStore) -> None:
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


def test_finishing_a_job_takes_it_off_the_due_list(store: RedisStore) -> None:
    store.insert_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.next_poll_at = float("inf")  # stored, compared and read back as "never"
    assert store.save_job(job)
    assert store.due_jobs(T0 + 10**9, 10) == []
    job.state, job.next_poll_at = JobState.COMPLETE, T0
    assert store.save_job(job)
    assert store.due_jobs(T0 + 10, 10) == []


def test_expired_jobs(store: RedisStore) -> None:
    store.insert_job(make_job("old", state=JobState.COMPLETE, expires_at=T0 - 1))
    store.insert_job(make_job("edge", state=JobState.FAILED, expires_at=T0))
    store.insert_job(make_job("fresh", state=JobState.COMPLETE, expires_at=T0 + 1))
    store.insert_job(make_job("active"))
    expired = store.expired_jobs(T0, 100)
    assert sorted(job.id for job in expired) == ["edge", "old"]
    assert all(isinstance(job, Job) for job in expired)
    assert len(store.expired_jobs(T0, 1)) == 1


def test_expires_at_set_by_save_is_seen_by_expired_jobs(store: RedisStore) -> None:
    store.insert_job(make_job())
    job = store.get_job("j1")
    assert job is not None
    job.state, job.expires_at = JobState.COMPLETE, T0 + 5
    assert store.save_job(job)
    assert store.expired_jobs(T0 + 4, 10) == []
    assert [j.id for j in store.expired_jobs(T0 + 5, 10)] == ["j1"]
    assert store.due_jobs(T0 + 100, 10) == []


def test_finished_jobs_and_their_keys_expire_in_redis_after_retention_and_margin(
    redis_url: str,  # noqa: F811
) -> None:
    store = RedisStore.from_url(redis_url)
    store.expiry_margin = 100
    store.insert_job(make_job(), "key-1", "fp")
    assert store.client.pttl("bridge:job:j1") == -1  # an unfinished job never expires
    job = store.get_job("j1")
    assert job is not None
    job.state, job.updated_at, job.expires_at = JobState.COMPLETE, T0, T0 + 3600
    assert store.save_job(job)
    for key in ("bridge:job:j1", "bridge:idem:4:acme:key-1"):
        assert 3699_000 < store.client.pttl(key) <= 3700_000
    store.close()


def test_a_job_collected_by_redis_leaves_no_stale_index_entry(store: RedisStore) -> None:
    store.insert_job(make_job("old", state=JobState.COMPLETE, expires_at=T0 - 1))
    store.client.delete("bridge:job:old")  # as Redis's own expiry would
    assert store.expired_jobs(T0, 10) == []
    assert store.client.zcard("bridge:expiry") == 0


def test_two_stores_see_each_others_writes(redis_url: str) -> None:  # noqa: F811
    first, second = RedisStore.from_url(redis_url), RedisStore.from_url(redis_url)
    try:
        first.insert_job(make_job())
        job = second.get_job("j1")
        assert job is not None
        job.phase = "from-second"
        assert second.save_job(job)
        reread = first.get_job("j1")
        assert reread is not None and reread.phase == "from-second"
        assert first.claim_job("j1", "a", T0, 60)
        assert not second.claim_job("j1", "b", T0 + 1, 60)
    finally:
        first.close()
        second.close()


def test_prefixes_keep_two_bridges_apart(redis_url: str) -> None:  # noqa: F811
    one = RedisStore.from_url(redis_url + "?prefix=one:")
    two = RedisStore.from_url(redis_url + "?prefix=two:")
    try:
        one.insert_job(make_job())
        one.set_value("k", "v", T0)
        assert two.get_job("j1") is None
        assert two.get_value("k", T0) is None
        assert two.due_jobs(T0, 10) == []
        assert one.client.exists("one:job:j1") == 1
    finally:
        one.close()
        two.close()


# --- values -----------------------------------------------------------------------------


def test_values_get_set_delete(store: RedisStore) -> None:
    assert store.get_value("k", T0) is None
    store.set_value("k", "v1", T0)
    assert store.get_value("k", T0 + 10**9) == "v1"
    store.set_value("k", "v2", T0)
    assert store.get_value("k", T0) == "v2"
    store.delete_value("k")
    assert store.get_value("k", T0) is None
    store.delete_value("missing")


def test_value_ttl_expiry(store: RedisStore) -> None:
    store.set_value("k", "v", T0, ttl=10)
    assert store.get_value("k", T0 + 9.99) == "v"
    assert store.get_value("k", T0 + 10) is None
    assert 9_000 < store.client.pttl("bridge:kv:k") <= 10_000  # Redis collects it too
    store.set_value("k", "forever", T0 + 20)
    assert store.get_value("k", T0 + 10**6) == "forever"
    assert store.client.pttl("bridge:kv:k") == -1


def test_add_value_is_set_if_absent(store: RedisStore) -> None:
    assert store.add_value("k", "first", T0) == "first"
    assert store.add_value("k", "second", T0) == "first"
    assert store.get_value("k", T0) == "first"


def test_add_value_replaces_an_expired_value(store: RedisStore) -> None:
    assert store.add_value("k", "first", T0, ttl=5) == "first"
    assert store.add_value("k", "second", T0 + 4, ttl=5) == "first"
    assert store.add_value("k", "second", T0 + 5, ttl=5) == "second"
    assert store.get_value("k", T0 + 9) == "second"
    assert store.get_value("k", T0 + 10) is None


def test_add_value_has_one_winner_across_threads(store: RedisStore) -> None:
    barrier = threading.Barrier(10)
    results: list[str] = []

    def race(value: str) -> None:
        barrier.wait()
        results.append(store.add_value("secret", value, T0))

    threads = [threading.Thread(target=race, args=(f"v{i}",)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 10
    assert len(set(results)) == 1
    assert store.get_value("secret", T0) == results[0]


def test_ping(store: RedisStore) -> None:
    store.ping()


def test_ping_fails_when_redis_is_unreachable() -> None:
    from tests.redis_fixtures import free_port

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        store.ping()


# --- outbox -----------------------------------------------------------------------------


def test_enqueue_is_once_per_id_and_queue(store: RedisStore) -> None:
    assert store.enqueue("deliveries", "d1", "p1", T0) is True
    assert store.enqueue("deliveries", "d1", "p2", T0) is False
    assert store.enqueue("other", "d1", "p3", T0) is True
    assert store.claim_item("deliveries", "d1", "w", T0, 60) == "p1"


def test_due_items_order_and_filters(store: RedisStore) -> None:
    store.enqueue("q", "late", "", T0 - 1)
    store.enqueue("q", "early", "", T0 - 30)
    store.enqueue("q", "future", "", T0 + 1)
    store.enqueue("q", "leased", "", T0 - 40)
    store.enqueue("q:x", "elsewhere", "", T0 - 50)
    assert store.claim_item("q", "leased", "w", T0 - 5, 60) == ""
    assert store.due_items("q", T0, 10) == ["early", "late"]
    assert store.due_items("q", T0, 1) == ["early"]
    # An item whose lease ran out (its worker died) sorts by when the lease ended.
    assert store.due_items("q", T0 + 55, 10) == ["early", "late", "future", "leased"]


def test_claim_item_is_exclusive_and_respects_due_time(store: RedisStore) -> None:
    store.enqueue("q", "d1", "payload", T0 + 10)
    assert store.claim_item("q", "d1", "a", T0, 60) is None
    assert store.claim_item("q", "d1", "a", T0 + 10, 60) == "payload"
    assert store.claim_item("q", "d1", "b", T0 + 69.9, 60) is None
    assert store.claim_item("q", "d1", "b", T0 + 70, 60) == "payload"  # a's lease ran out
    assert store.claim_item("q", "ghost", "a", T0, 60) is None


def test_reschedule_item_by_owner_only(store: RedisStore) -> None:
    store.enqueue("q", "d1", "try-1", T0)
    assert store.claim_item("q", "d1", "a", T0, 60) == "try-1"
    store.reschedule_item("q", "d1", "b", "stolen", T0)
    assert store.claim_item("q", "d1", "b", T0 + 1, 60) is None
    store.reschedule_item("q", "d1", "a", "try-2", T0 + 30)
    assert store.due_items("q", T0 + 29, 10) == []
    assert store.claim_item("q", "d1", "b", T0 + 30, 60) == "try-2"


def test_delete_item(store: RedisStore) -> None:
    store.enqueue("q", "d1", "p", T0)
    store.delete_item("q", "d1")
    assert store.due_items("q", T0, 10) == []
    assert store.claim_item("q", "d1", "a", T0, 60) is None
    assert store.enqueue("q", "d1", "again", T0) is True


# --- URLs ---------------------------------------------------------------------------------


def test_open_store_picks_redis_for_redis_urls(redis_url: str) -> None:  # noqa: F811
    store = open_store(redis_url)
    assert isinstance(store, RedisStore)
    store.ping()
    store.close()


def test_split_url_takes_the_prefix_off() -> None:
    assert split_url("redis://h:1/2") == ("redis://h:1/2", "bridge:")
    assert split_url("rediss://h/0?prefix=x:&ssl_cert_reqs=none") == (
        "rediss://h/0?ssl_cert_reqs=none",
        "x:",
    )
    assert split_url("unix:///run/redis.sock?db=1") == ("unix:///run/redis.sock?db=1", "bridge:")
    with pytest.raises(ConfigurationError):
        split_url("memcached://h")
