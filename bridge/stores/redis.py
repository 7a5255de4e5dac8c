"""Redis store: the scale-out :class:`~bridge.stores.base.Store`, shared by many processes.

Keys, all under a prefix (``bridge:``, or ``?prefix=`` on the URL)::

    {p}job:{id}          hash: data (the job as JSON), version, state, next_poll_at,
                         expires_at, lease_owner, lease_until, idem (its idempotency key)
    {p}due               sorted set of unfinished jobs, scored by the earliest time one may
                         be claimed without ``force``: max(next_poll_at, lease_until)
    {p}expiry            sorted set of jobs that have an expires_at, scored by it
    {p}idem:{n}:{tenant}:{key}   hash: fingerprint, job_id  (n = len(tenant), so ``:`` in
                         a tenant id cannot make two keys collide)
    {p}kv:{key}          hash: v (the value), x (when it expires; absent: never)
    {p}outbox:{n}:{queue}        sorted set of a delayed queue's item ids, scored like ``due``:
                         max(due_at, lease_until)
    {p}item:{n}:{queue}:{id}     hash: payload, due_at, lease_owner, lease_until

Scoring by max(due, lease end) makes "due and unleased" one range query; the one
difference from SQLite's order is that an item whose lease ran out without a release (its
worker died) sorts by when the lease ended rather than by its due time.

Every write that checks before it writes (insert with an idempotency key, the versioned
save, claim, extend, release, delete, set-if-absent, and the outbox's enqueue, claim and
reschedule) is one Lua script, hence atomic across threads and processes; ``due_jobs``,
``due_items`` and ``expired_jobs`` are one ``ZRANGEBYSCORE`` each.

Time is the caller's, as in SQLite: leases, due times and value expiry are compared with
the ``now`` passed in (so an injected clock behaves the same on both stores). Redis's own
key expiry only collects garbage: a finished job and its idempotency key expire
``expiry_margin`` seconds after the job's ``expires_at`` (the sweeper deletes the file
before that), and a value with a TTL expires with it. Floats travel to Lua as ``repr``
strings and are only compared there (``tonumber``), never re-formatted, because Lua prints
14 significant digits. Redis Cluster is not supported (keys of one job span hash slots).
"""

from __future__ import annotations

import json
import math
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis

from bridge.errors import ConfigurationError
from bridge.models import Job
from bridge.stores.base import IdempotencyRecord

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PREFIX = "bridge:"

_LUA_COMMON = """
local ACTIVE = {queued = true, running = true}
local function later(a, b)
  if tonumber(a) >= tonumber(b) then return a end
  return b
end
local function reindex(job, due, id)
  local f = redis.call('HMGET', job, 'state', 'next_poll_at', 'lease_until')
  if ACTIVE[f[1]] then
    redis.call('ZADD', due, later(f[2], f[3]), id)
  else
    redis.call('ZREM', due, id)
  end
end
local function retention(job, expiry, id, expires_at, ttl_ms)
  local idem = redis.call('HGET', job, 'idem')
  if expires_at == '' then
    redis.call('ZREM', expiry, id)
    redis.call('PERSIST', job)
    if idem and idem ~= '' then redis.call('PERSIST', idem) end
  else
    redis.call('ZADD', expiry, expires_at, id)
    redis.call('PEXPIRE', job, ttl_ms)
    if idem and idem ~= '' then redis.call('PEXPIRE', idem, ttl_ms) end
  end
end
"""

# KEYS: job, due, expiry, idem | ARGV: id, fingerprint, use_idem, state, next_poll_at,
# expires_at, version, data, ttl_ms
_INSERT = (
    _LUA_COMMON
    + """
if ARGV[3] == '1' then
  local rec = redis.call('HMGET', KEYS[4], 'fingerprint', 'job_id')
  if rec[2] then return {rec[1], rec[2]} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('job exists') end
local idem = ''
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[4], 'fingerprint', ARGV[2], 'job_id', ARGV[1])
  idem = KEYS[4]
end
redis.call('HSET', KEYS[1], 'data', ARGV[8], 'version', ARGV[7], 'state', ARGV[4],
  'next_poll_at', ARGV[5], 'expires_at', ARGV[6], 'lease_owner', '', 'lease_until', '0',
  'idem', idem)
reindex(KEYS[1], KEYS[2], ARGV[1])
retention(KEYS[1], KEYS[3], ARGV[1], ARGV[6], ARGV[9])
return 0
"""
)

# KEYS: job, due, expiry | ARGV: id, expected, version, state, next_poll_at, expires_at,
# data, ttl_ms
_SAVE = (
    _LUA_COMMON
    + """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'state', ARGV[4], 'next_poll_at', ARGV[5],
  'expires_at', ARGV[6], 'data', ARGV[7])
reindex(KEYS[1], KEYS[2], ARGV[1])
retention(KEYS[1], KEYS[3], ARGV[1], ARGV[6], ARGV[8])
return 1
"""
)

# KEYS: job, due | ARGV: id, owner, now, until, force
_CLAIM = (
    _LUA_COMMON
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'next_poll_at', 'lease_until')
if not f[1] or not ACTIVE[f[1]] then return 0 end
local now = tonumber(ARGV[3])
if tonumber(f[3]) > now then return 0 end
if ARGV[5] ~= '1' and tonumber(f[2]) > now then return 0 end
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[2], 'lease_until', ARGV[4])
reindex(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: job, due | ARGV: id, owner, until ('0' releases)
_LEASE = (
    _LUA_COMMON
    + """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[2] then return 0 end
if ARGV[3] == '0' then
  redis.call('HSET', KEYS[1], 'lease_owner', '', 'lease_until', '0')
else
  redis.call('HSET', KEYS[1], 'lease_until', ARGV[3])
end
reindex(KEYS[1], KEYS[2], ARGV[1])
return 1
"""
)

# KEYS: job, due, expiry | ARGV: id
_DELETE = """
local idem = redis.call('HGET', KEYS[1], 'idem')
if idem and idem ~= '' and redis.call('HGET', idem, 'job_id') == ARGV[1] then
  redis.call('DEL', idem)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# KEYS: item, outbox | ARGV: id, payload, due_at
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'payload', ARGV[2], 'due_at', ARGV[3], 'lease_owner', '',
  'lease_until', '0')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: item, outbox | ARGV: id, owner, now, until
_CLAIM_ITEM = """
local f = redis.call('HMGET', KEYS[1], 'due_at', 'lease_until', 'payload')
if not f[1] then return false end
local now = tonumber(ARGV[3])
if tonumber(f[1]) > now or tonumber(f[2]) > now then return false end
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[2], 'lease_until', ARGV[4])
local score = ARGV[4]
if tonumber(f[1]) > tonumber(ARGV[4]) then score = f[1] end
redis.call('ZADD', KEYS[2], score, ARGV[1])
return f[3]
"""

# KEYS: item, outbox | ARGV: id, owner, payload, due_at
_RESCHEDULE_ITEM = """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'payload', ARGV[3], 'due_at', ARGV[4], 'lease_owner', '',
  'lease_until', '0')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

# KEYS: kv | ARGV: value, now, expires_at ('' = never), ttl_ms
_ADD_VALUE = """
local f = redis.call('HMGET', KEYS[1], 'v', 'x')
if f[1] and (not f[2] or tonumber(f[2]) > tonumber(ARGV[2])) then return f[1] end
redis.call('DEL', KEYS[1])
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'x', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return ARGV[1]
"""


def _num(value: float) -> str:
    """A float as a string Redis and Lua both parse exactly (infinity as ±1e300)."""
    if math.isinf(value):
        return "1e300" if value > 0 else "-1e300"
    return repr(float(value))


def _ttl_ms(seconds: float) -> str:
    return str(max(1, math.ceil(seconds * 1000)))


def split_url(url: str) -> tuple[str, str]:
    """Split ``?prefix=`` off a Redis URL: ``(url for redis-py, key prefix)``.

    :raises ConfigurationError: not a ``redis://``, ``rediss://`` or ``unix://`` URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(f"database_url {url!r}: use redis://, rediss:// or unix://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    base = url.partition("?")[0]
    return (f"{base}?{rest}" if rest else base), prefix


def connect(url: str, *, decode_responses: bool = True) -> redis.Redis:
    """A client for *url* (``?prefix=`` ignored) with bounded socket timeouts."""
    plain, _prefix = split_url(url)
    return redis.Redis.from_url(
        plain,
        decode_responses=decode_responses,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
    )


class RedisStore:
    """The :class:`~bridge.stores.base.Store` on Redis (see the module docstring for keys)."""

    def __init__(
        self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, expiry_margin: float = 86400.0
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.expiry_margin = expiry_margin
        self._due = f"{prefix}due"
        self._expiry = f"{prefix}expiry"
        self._insert = client.register_script(_INSERT)
        self._save = client.register_script(_SAVE)
        self._claim = client.register_script(_CLAIM)
        self._lease = client.register_script(_LEASE)
        self._delete = client.register_script(_DELETE)
        self._add_value = client.register_script(_ADD_VALUE)
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim_item = client.register_script(_CLAIM_ITEM)
        self._reschedule_item = client.register_script(_RESCHEDULE_ITEM)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """``redis://host:port/db``, ``rediss://…`` (TLS) or ``unix:///path.sock?db=0``;
        ``?prefix=name:`` namespaces the keys."""
        return cls(connect(url), split_url(url)[1])

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _idem_key(self, tenant_id: str, key: str) -> str:
        return f"{self.prefix}idem:{len(tenant_id)}:{tenant_id}:{key}"

    def _kv_key(self, key: str) -> str:
        return f"{self.prefix}kv:{key}"

    def _outbox_keys(self, queue: str, item_id: str) -> list[str]:
        """The item's hash and its queue's sorted set."""
        name = f"{len(queue)}:{queue}"
        return [f"{self.prefix}item:{name}:{item_id}", f"{self.prefix}outbox:{name}"]

    def _retention_ms(self, job: Job) -> str:
        if job.expires_at is None:
            return ""
        # Relative to the job's own clock, so a manual clock in the past does not expire it.
        return _ttl_ms(max(0.0, job.expires_at - job.updated_at) + self.expiry_margin)

    def _fields(self, job: Job) -> list[str]:
        """state, next_poll_at, expires_at, data, ttl_ms — as the scripts take them."""
        expires = "" if job.expires_at is None else _num(job.expires_at)
        return [
            job.state.value,
            _num(job.next_poll_at),
            expires,
            json.dumps(job.to_dict()),
            self._retention_ms(job),
        ]

    # --- jobs -------------------------------------------------------------------------

    def insert_job(
        self, job: Job, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> IdempotencyRecord | None:
        """Insert *job*, or return the record of an idempotency key used before."""
        state, next_poll_at, expires, data, ttl = self._fields(job)
        idem = self._idem_key(job.tenant_id, idempotency_key or "")
        result = self._insert(
            keys=[self._job_key(job.id), self._due, self._expiry, idem],
            args=[
                job.id,
                fingerprint,
                "1" if idempotency_key is not None else "0",
                state,
                next_poll_at,
                expires,
                str(job.version),
                data,
                ttl,
            ],
        )
        if isinstance(result, list):
            return IdempotencyRecord(str(result[0]), str(result[1]))
        return None

    def get_job(self, job_id: str) -> Job | None:
        """Return the job, or ``None``."""
        data = cast(str | None, self.client.hget(self._job_key(job_id), "data"))
        return Job.from_dict(json.loads(data)) if data is not None else None

    def save_job(self, job: Job) -> bool:
        """Write *job* if its version is still the stored one, bumping the version."""
        expected = job.version
        job.version = expected + 1
        state, next_poll_at, expires, data, ttl = self._fields(job)
        saved = self._save(
            keys=[self._job_key(job.id), self._due, self._expiry],
            args=[job.id, str(expected), str(job.version), state, next_poll_at, expires, data, ttl],
        )
        if int(saved) != 1:
            job.version = expected
            return False
        return True

    def claim_job(
        self, job_id: str, owner: str, now: float, lease: float, force: bool = False
    ) -> bool:
        """Take the job's lease if it is due (or *force*), unfinished and unleased."""
        claimed = self._claim(
            keys=[self._job_key(job_id), self._due],
            args=[job_id, owner, _num(now), _num(now + lease), "1" if force else "0"],
        )
        return int(claimed) == 1

    def extend_lease(self, job_id: str, owner: str, until: float) -> bool:
        """Push *owner*'s lease out to *until*; ``False`` if it lost the lease."""
        extended = self._lease(
            keys=[self._job_key(job_id), self._due], args=[job_id, owner, _num(until)]
        )
        return int(extended) == 1

    def release_job(self, job_id: str, owner: str) -> None:
        """Give the lease back if *owner* still holds it."""
        self._lease(keys=[self._job_key(job_id), self._due], args=[job_id, owner, "0"])

    def due_jobs(self, now: float, limit: int) -> list[str]:
        """Ids of unfinished, unleased jobs whose next step is due, earliest first."""
        ids = self.client.zrangebyscore(self._due, "-inf", _num(now), start=0, num=limit)
        return [str(job_id) for job_id in cast(list[str], ids)]

    def expired_jobs(self, now: float, limit: int) -> list[Job]:
        """Jobs whose ``expires_at`` has passed (their retention is over)."""
        ids = cast(
            list[str],
            self.client.zrangebyscore(self._expiry, "-inf", _num(now), start=0, num=limit),
        )
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._job_key(job_id), "data")
        jobs = []
        for job_id, data in zip(ids, pipe.execute(), strict=True):
            if data is None:  # Redis already collected it: drop the stale index entry.
                self.client.zrem(self._expiry, job_id)
                continue
            jobs.append(Job.from_dict(json.loads(data)))
        return jobs

    def delete_job(self, job_id: str) -> None:
        """Forget the job and the idempotency key that created it."""
        self._delete(keys=[self._job_key(job_id), self._due, self._expiry], args=[job_id])

    # --- values ---------------------------------------------------------------------

    def get_value(self, key: str, now: float) -> str | None:
        """Return the value unless it is missing or expired at *now*."""
        value, expires = cast(list[Any], self.client.hmget(self._kv_key(key), ["v", "x"]))
        if value is None or (expires is not None and float(expires) <= now):
            return None
        return str(value)

    def set_value(self, key: str, value: str, now: float, ttl: float | None = None) -> None:
        """Store *value*, expiring *ttl* seconds after *now* (``None``: never)."""
        name = self._kv_key(key)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(name)
        if ttl is None:
            pipe.hset(name, "v", value)
        else:
            pipe.hset(name, mapping={"v": value, "x": _num(now + ttl)})
            pipe.pexpire(name, int(_ttl_ms(ttl)))
        pipe.execute()

    def add_value(self, key: str, value: str, now: float, ttl: float | None = None) -> str:
        """Store *value* unless an unexpired value exists; return the value that won."""
        expires = "" if ttl is None else _num(now + ttl)
        won = self._add_value(
            keys=[self._kv_key(key)],
            args=[value, _num(now), expires, _ttl_ms(ttl) if ttl is not None else ""],
        )
        return str(won)

    def delete_value(self, key: str) -> None:
        """Remove a value."""
        self.client.delete(self._kv_key(key))

    # --- outbox: a durable, delayed queue with leases -------------------------------------

    def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> bool:
        """Add an item unless one with this id is already queued; ``True`` if added."""
        added = self._enqueue(
            keys=self._outbox_keys(queue, item_id), args=[item_id, payload, _num(due_at)]
        )
        return int(added) == 1

    def due_items(self, queue: str, now: float, limit: int) -> list[str]:
        """Ids of unleased items due by *now*, earliest first."""
        outbox = self._outbox_keys(queue, "")[1]
        ids = self.client.zrangebyscore(outbox, "-inf", _num(now), start=0, num=limit)
        return [str(item_id) for item_id in cast(list[str], ids)]

    def claim_item(
        self, queue: str, item_id: str, owner: str, now: float, lease: float
    ) -> str | None:
        """Lease a due, unleased item and return its payload (else ``None``)."""
        payload = self._claim_item(
            keys=self._outbox_keys(queue, item_id),
            args=[item_id, owner, _num(now), _num(now + lease)],
        )
        return None if payload is None else str(payload)

    def reschedule_item(
        self, queue: str, item_id: str, owner: str, payload: str, due_at: float
    ) -> None:
        """Store a new payload and due time and release the lease (owner only)."""
        self._reschedule_item(
            keys=self._outbox_keys(queue, item_id), args=[item_id, owner, payload, _num(due_at)]
        )

    def delete_item(self, queue: str, item_id: str) -> None:
        """Remove an item."""
        item, outbox = self._outbox_keys(queue, item_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(item)
        pipe.zrem(outbox, item_id)
        pipe.execute()

    def ping(self) -> None:
        """Raise if Redis does not answer."""
        self.client.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()
