"""Tests for what only bridge.stores.redis does: Redis-side expiry and garbage collection, key
prefixes, its order of lapsed leases, and URL handling. The contract it shares with SQLite is
in test_store_contract.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from bridge.errors import ConfigurationError
from bridge.models import JobState
from bridge.stores import open_store
from bridge.stores.redis import RedisStore, split_url
from tests.redis_fixtures import free_port, redis_server, redis_url  # noqa: F401
from tests.test_store_contract import T0, make_job


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:  # noqa: F811
    s = RedisStore.from_url(redis_url)
    yield s
    s.close()


# --- Redis's own expiry -----------------------------------------------------------------


def test_finished_jobs_and_their_keys_expire_in_redis_after_retention_and_margin(
    store: RedisStore,
) -> None:
    store.expiry_margin = 100
    store.insert_job(make_job(), "key-1", "fp")
    assert store.client.pttl("bridge:job:j1") == -1  # an unfinished job never expires
    job = store.get_job("j1")
    assert job is not None
    job.state, job.updated_at, job.expires_at = JobState.COMPLETE, T0, T0 + 3600
    assert store.save_job(job)
    for key in ("bridge:job:j1", "bridge:idem:4:acme:key-1"):
        assert 3699_000 < store.client.pttl(key) <= 3700_000


def test_a_job_collected_by_redis_leaves_no_stale_index_entry(store: RedisStore) -> None:
    store.insert_job(make_job("old", state=JobState.COMPLETE, expires_at=T0 - 1))
    store.client.delete("bridge:job:old")  # as Redis's own expiry would
    assert store.expired_jobs(T0, 10) == []
    assert store.client.zcard("bridge:expiry") == 0


def test_a_value_with_a_ttl_expires_in_redis_too(store: RedisStore) -> None:
    store.set_value("k", "v", T0, ttl=10)
    assert 9_000 < store.client.pttl("bridge:kv:k") <= 10_000
    store.set_value("k", "forever", T0 + 20)
    assert store.client.pttl("bridge:kv:k") == -1


# --- ordering ---------------------------------------------------------------------------


def test_an_item_whose_lease_ran_out_sorts_by_lease_end(store: RedisStore) -> None:
    store.enqueue("q", "early", "", T0 - 30)
    store.enqueue("q", "future", "", T0 + 1)
    store.enqueue("q", "leased", "", T0 - 40)
    assert store.claim_item("q", "leased", "w", T0 - 5, 60) == ""
    # Its worker died; it is due from T0 + 55, after "future" although queued first.
    assert store.due_items("q", T0 + 55, 10) == ["early", "future", "leased"]


# --- prefixes and URLs ------------------------------------------------------------------


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


def test_ping_fails_when_redis_is_unreachable() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(redis.ConnectionError):
        store.ping()


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
