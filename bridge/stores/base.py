"""The store interface the service needs; SQLite and Redis implement it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bridge.models import Job


@dataclass(frozen=True)
class IdempotencyRecord:
    """An ``Idempotency-Key`` seen before: the body's fingerprint and the job it created."""

    fingerprint: str
    job_id: str


class Store(Protocol):
    """Jobs with optimistic versions and leases, idempotency keys, and expiring values."""

    def insert_job(
        self, job: Job, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> IdempotencyRecord | None:
        """Insert a new job. With an idempotency key already used by the tenant, insert
        nothing and return the earlier record instead. Job ids are fresh UUIDs; inserting
        an existing id is a programming error and raises (the store's own exception)."""

    def get_job(self, job_id: str) -> Job | None:
        """Return the job, or ``None``."""

    def save_job(self, job: Job) -> bool:
        """Write *job* if its ``version`` is still the stored one; bump the version.

        Returns ``False`` (and writes nothing) when someone else saved first.
        """

    def claim_job(
        self, job_id: str, owner: str, now: float, lease: float, force: bool = False
    ) -> bool:
        """Take the job's lease for *lease* seconds if it is due and unleased.

        Only one claimant wins, across threads and processes: this is what bounds
        upstream polls to one per interval however many callers read the job.
        ``force`` claims a job that is not due yet (still not one leased by another).
        """

    def extend_lease(self, job_id: str, owner: str, until: float) -> bool:
        """Push the lease of a job *owner* holds out to *until*; ``False`` if it lost it."""

    def release_job(self, job_id: str, owner: str) -> None:
        """Give the lease back (only if *owner* still holds it)."""

    def due_jobs(self, now: float, limit: int) -> list[str]:
        """Ids of unfinished, unleased jobs whose next step is due, roughly oldest first
        (a job whose lease lapsed may sort by the lease's end rather than its due time)."""

    def expired_jobs(self, now: float, limit: int) -> list[Job]:
        """Finished jobs whose artifact retention has passed."""

    def delete_job(self, job_id: str) -> None:
        """Forget a job."""

    def get_value(self, key: str, now: float) -> str | None:
        """Return an unexpired value."""

    def set_value(self, key: str, value: str, now: float, ttl: float | None = None) -> None:
        """Store a value, optionally expiring after *ttl* seconds."""

    def add_value(self, key: str, value: str, now: float, ttl: float | None = None) -> str:
        """Store *value* unless an unexpired value exists; return the value that won."""

    def delete_value(self, key: str) -> None:
        """Remove a value."""

    # A durable, delayed queue with leases (deliveries of finished jobs use it).

    def enqueue(self, queue: str, item_id: str, payload: str, due_at: float) -> bool:
        """Add an item unless one with this id is already queued; ``True`` if added."""

    def due_items(self, queue: str, now: float, limit: int) -> list[str]:
        """Ids of unleased items due by *now*, roughly oldest first (as :meth:`due_jobs`)."""

    def claim_item(
        self, queue: str, item_id: str, owner: str, now: float, lease: float
    ) -> str | None:
        """Lease a due item; return its payload, or ``None`` if it is not due or leased."""

    def reschedule_item(
        self, queue: str, item_id: str, owner: str, payload: str, due_at: float
    ) -> None:
        """Store a new payload and due time and release the lease (only the owner may)."""

    def delete_item(self, queue: str, item_id: str) -> None:
        """Remove an item (done, or given up)."""

    def ping(self) -> None:
        """Raise if the store is unusable (for ``/readyz``)."""

    def close(self) -> None:
        """Release connections at shutdown (call once, from the owning thread: on Redis it
        closes the shared pool)."""
