"""SQLite store: the embedded default. Safe across threads and processes (WAL, leases)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bridge.errors import ConfigurationError
from bridge.models import Job
from bridge.stores.base import IdempotencyRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    state TEXT NOT NULL,
    next_poll_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    expires_at REAL,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_poll_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant_id TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE TABLE IF NOT EXISTS outbox (
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    payload TEXT NOT NULL,
    due_at REAL NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (queue, due_at);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
);
"""

_ACTIVE = ("queued", "running")


class SQLiteStore:
    """The :class:`~bridge.stores.base.Store` on one SQLite file (one connection per thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``."""
        parts = urlsplit(url)
        path = unquote(parts.path)[1:] if parts.path.startswith("/") else ""
        if parts.netloc or not path:
            raise ConfigurationError(f"database_url {url!r}: use sqlite:///path/to/file.db")
        return cls(path)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # --- jobs -------------------------------------------------------------------------

    def insert_job(
        self, job: Job, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> IdempotencyRecord | None:
        with self._tx() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT fingerprint, job_id FROM idempotency WHERE tenant_id=? AND key=?",
                    (job.tenant_id, idempotency_key),
                ).fetchone()
                if row is not None:
                    return IdempotencyRecord(row[0], row[1])
                db.execute(
                    "INSERT INTO idempotency (tenant_id, key, fingerprint, job_id)"
                    " VALUES (?,?,?,?)",
                    (job.tenant_id, idempotency_key, fingerprint, job.id),
                )
            db.execute(
                "INSERT INTO jobs (id, tenant_id, state, next_poll_at, expires_at, version, data)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.tenant_id,
                    job.state.value,
                    job.next_poll_at,
                    job.expires_at,
                    job.version,
                    json.dumps(job.to_dict()),
                ),
            )
        return None

    def get_job(self, job_id: str) -> Job | None:
        row = self._conn().execute("SELECT data FROM jobs WHERE id=?", (job_id,)).fetchone()
        return Job.from_dict(json.loads(row[0])) if row else None

    def save_job(self, job: Job) -> bool:
        expected = job.version
        job.version = expected + 1
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET state=?, next_poll_at=?, expires_at=?, version=?, data=?"
                " WHERE id=? AND version=?",
                (
                    job.state.value,
                    job.next_poll_at,
                    job.expires_at,
                    job.version,
                    json.dumps(job.to_dict()),
                    job.id,
                    expected,
                ),
            )
        if cursor.rowcount != 1:
            job.version = expected
            return False
        return True

    def claim_job(
        self, job_id: str, owner: str, now: float, lease: float, force: bool = False
    ) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_owner=?, lease_until=? WHERE id=? AND state IN (?,?)"
                " AND lease_until <= ? AND (? OR next_poll_at <= ?)",
                (owner, now + lease, job_id, *_ACTIVE, now, force, now),
            )
        return cursor.rowcount == 1

    def extend_lease(self, job_id: str, owner: str, until: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_until=? WHERE id=? AND lease_owner=?", (until, job_id, owner)
            )
        return cursor.rowcount == 1

    def release_job(self, job_id: str, owner: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET lease_owner=NULL, lease_until=0 WHERE id=? AND lease_owner=?",
                (job_id, owner),
            )

    def due_jobs(self, now: float, limit: int) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT id FROM jobs WHERE state IN (?,?) AND next_poll_at <= ?"
                " AND lease_until <= ? ORDER BY next_poll_at LIMIT ?",
                (*_ACTIVE, now, now, limit),
            )
            .fetchall()
        )
        return [row[0] for row in rows]

    def expired_jobs(self, now: float, limit: int) -> list[Job]:
        rows = (
            self._conn()
            .execute(
                "SELECT data FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        return [Job.from_dict(json.loads(row[0])) for row in rows]

    def delete_job(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            db.execute("DELETE FROM idempotency WHERE job_id=?", (job_id,))

    # --- values ---------------------------------------------------------------------

    def get_value(self, key: str, now: float) -> str | None:
        row = (
            self._conn()
            .execute(
                "SELECT value FROM kv WHERE key=? AND (expires_at IS NULL OR expires_at > ?)",
                (key, now),
            )
            .fetchone()
        )
        return str(row[0]) if row else None

    def set_value(self, key: str, value: str, now: float, ttl: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?,?,?) ON CONFLICT(key)"
                " DO UPDATE SET value=excluded.value, expires_at=excluded.expires_at",
                (key, value, None if ttl is None else now + ttl),
            )

    def add_value(self, key: str, value: str, now: float, ttl: float | None = None) -> str:
        with self._tx() as db:
            row = db.execute(
                "SELECT value FROM kv WHERE key=? AND (expires_at IS NULL OR expires_at > ?)",
                (key, now),
            ).fetchone()
            if row is not None:
                return str(row[0])
            db.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?,?,?)",
                (key, value, None if ttl is None else now + ttl),
            )
        return value

    def delete_value(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM kv WHERE key=?", (key,))

    # --- outbox ---------------------------------------------------------------------

    def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> bool:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO outbox (queue, id, payload, due_at) VALUES (?,?,?,?)",
                (queue, item_id, payload, due_at),
            )
        return cursor.rowcount == 1

    def due_items(self, queue: str, now: float, limit: int) -> list[str]:
        rows = (
            self._conn()
            .execute(
                "SELECT id FROM outbox WHERE queue=? AND due_at <= ? AND lease_until <= ?"
                " ORDER BY due_at LIMIT ?",
                (queue, now, now, limit),
            )
            .fetchall()
        )
        return [row[0] for row in rows]

    def claim_item(
        self, queue: str, item_id: str, owner: str, now: float, lease: float
    ) -> str | None:
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE outbox SET lease_owner=?, lease_until=? WHERE queue=? AND id=?"
                " AND due_at <= ? AND lease_until <= ?",
                (owner, now + lease, queue, item_id, now, now),
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(
                "SELECT payload FROM outbox WHERE queue=? AND id=?", (queue, item_id)
            ).fetchone()
        return str(row[0])

    def reschedule_item(
        self, queue: str, item_id: str, owner: str, payload: str, due_at: float
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET payload=?, due_at=?, lease_owner=NULL, lease_until=0"
                " WHERE queue=? AND id=? AND lease_owner=?",
                (payload, due_at, queue, item_id, owner),
            )

    def delete_item(self, queue: str, item_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE queue=? AND id=?", (queue, item_id))

    def ping(self) -> None:
        self._conn().execute("SELECT 1").fetchone()

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
