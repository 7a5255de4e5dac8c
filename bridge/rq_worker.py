"""Background work on RQ workers: ``background = "rq"`` with a ``redis://`` ``database_url``.

How it fits together:

* Web processes run no worker threads. When a job has work to do now (just created, or its
  upstream finished and the file is ready to copy), ``service.on_due`` enqueues
  :func:`advance_task` for it on the RQ queue ``export-bridge``.
* ``export-bridge worker`` builds the bridge once for its process and runs an RQ
  ``SimpleWorker`` (tasks run in that process, one at a time, on that bridge) plus a
  scheduler thread. Every tick the scheduler enqueues the store's due jobs — polls whose
  interval has passed, retries whose backoff has passed, and jobs whose lease ran out because
  a process died — and every ``sweep_every`` seconds it deletes expired jobs and files.
  Scale out by running more worker processes; each runs its own scheduler, harmlessly.
* Enqueueing is deduplicated per job by a marker key, ``{prefix}rq:queued:{job_id}``, set
  with ``NX`` and a TTL and deleted by the task when it starts: a job waits in the queue at
  most once however many web processes and schedulers see it due. A marker whose task was
  lost expires after :data:`MARKER_TTL` seconds and the job is enqueued again.
* The task is idempotent: ``service.advance`` takes the job's lease first and does nothing
  if the job is not due or another process holds it. Retries and backoff live in the service
  (the job's ``next_poll_at``), not in RQ: the scheduler re-enqueues a job when it is due.
* A worker killed mid-task loses nothing: its lease on the job runs out and the job is due
  again (the file copy restarts from the upstream; partial uploads are never visible).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from redis import Redis
from rq import Queue, SimpleWorker

from bridge.bootstrap import Bridge, build_bridge
from bridge.config import Settings, load_settings
from bridge.errors import ConfigurationError
from bridge.service import ExportService
from bridge.stores.redis import SCHEMES, connect, split_url

log = logging.getLogger(__name__)

QUEUE = "export-bridge"
MARKER_TTL = 60.0
"""Seconds a job's queued-marker lives if its task never starts."""
TASK_TIMEOUT = 3600
"""RQ's hard limit for one step; a long download renews the job's lease meanwhile."""

_bridge: Bridge | None = None
_bridge_lock = threading.Lock()


def process_bridge() -> Bridge:
    """This worker process's bridge: the one :func:`run_worker` built, or one built now
    from ``$BRIDGE_CONFIG`` and the environment (for a plain ``rq worker``)."""
    global _bridge
    with _bridge_lock:
        if _bridge is None:
            _bridge = build_bridge(load_settings(), start_worker=False)
        return _bridge


def advance_task(job_id: str) -> None:
    """The RQ task: take the job's next step (a no-op if it is not due or is leased)."""
    bridge = process_bridge()
    dispatcher = bridge.extras.get("rq")
    if isinstance(dispatcher, RQDispatcher):
        dispatcher.started(job_id)
    bridge.service.advance(job_id)


class RQDispatcher:
    """Puts job steps on the RQ queue, at most once per job at a time."""

    def __init__(self, redis_url: str, queue: str = QUEUE, marker_ttl: float = MARKER_TTL) -> None:
        if urlsplit(redis_url).scheme not in SCHEMES:
            raise ConfigurationError(
                'background = "rq" needs a Redis database_url (redis://, rediss:// or unix://)'
            )
        self.connection: Redis = connect(redis_url, decode_responses=False)
        self.prefix = split_url(redis_url)[1]
        self.queue = Queue(queue, connection=self.connection)
        self.marker_ttl_ms = int(marker_ttl * 1000)

    def _marker(self, job_id: str) -> str:
        return f"{self.prefix}rq:queued:{job_id}"

    def enqueue(self, job_id: str) -> bool:
        """Queue a step of *job_id* unless one is already waiting; ``True`` if queued."""
        marker = self._marker(job_id)
        if not self.connection.set(marker, b"1", nx=True, px=self.marker_ttl_ms):
            return False
        try:
            self.queue.enqueue(
                "bridge.rq_worker.advance_task",
                job_id,
                job_timeout=TASK_TIMEOUT,
                result_ttl=0,
                failure_ttl=86400,
                description=f"advance export job {job_id}",
            )
        except BaseException:
            self.connection.delete(marker)
            raise
        return True

    def started(self, job_id: str) -> None:
        """The task for *job_id* is running: later due times may queue it again."""
        self.connection.delete(self._marker(job_id))

    def on_due(self, job_id: str) -> None:
        """``service.on_due`` listener; a failure is logged (the scheduler catches up)."""
        try:
            self.enqueue(job_id)
        except Exception:
            log.warning("could not enqueue a job step", exc_info=True, extra={"job": job_id})

    def schedule_due(self, service: ExportService, limit: int = 500) -> int:
        """Enqueue every due job; return how many were newly queued."""
        return sum(
            self.enqueue(job_id) for job_id in service.store.due_jobs(service.clock(), limit)
        )

    def close(self) -> None:
        """Close the Redis connection pool."""
        self.connection.close()


def attach(bridge: Bridge) -> RQDispatcher:
    """Make *bridge* hand its due jobs to RQ instead of in-process threads."""
    dispatcher = RQDispatcher(bridge.settings.database_url)
    bridge.service.on_due.append(dispatcher.on_due)
    bridge.extras["rq"] = dispatcher
    bridge.closers.append(dispatcher.close)
    return dispatcher


class Scheduler:
    """A daemon thread that enqueues due jobs every *tick* seconds and sweeps now and then."""

    def __init__(
        self,
        service: ExportService,
        dispatcher: RQDispatcher,
        tick: float = 1.0,
        sweep_every: float = 60.0,
    ) -> None:
        self.service = service
        self.dispatcher = dispatcher
        self.tick = tick
        self.sweep_every = sweep_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-rq-scheduler", daemon=True)

    def start(self) -> Scheduler:
        """Start the thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread after its current pass."""
        self._stop.set()
        self._thread.join(timeout=10)

    def run_once(self, sweep: bool = False) -> int:
        """One pass: enqueue due jobs (and sweep if asked); return how many were queued."""
        queued = self.dispatcher.schedule_due(self.service)
        if sweep:
            self.service.sweep()
        return queued

    def _run(self) -> None:
        next_sweep = self.service.clock()
        while not self._stop.is_set():
            try:
                sweep = self.service.clock() >= next_sweep
                self.run_once(sweep)
                if sweep:
                    next_sweep = self.service.clock() + self.sweep_every
            except Exception:
                log.exception("rq scheduler pass failed")
            self._stop.wait(self.tick)


def run_worker(settings: Settings, *, burst: bool = False) -> None:
    """``export-bridge worker``: build the bridge, start the scheduler, and work the queue
    until stopped (SIGTERM lets the current step finish); with *burst*, until it is empty."""
    global _bridge
    if settings.background != "rq":
        settings = settings.model_copy(update={"background": "rq"})
    bridge = build_bridge(settings, start_worker=False)
    with _bridge_lock:
        _bridge = bridge
    dispatcher = bridge.extras["rq"]
    assert isinstance(dispatcher, RQDispatcher)
    scheduler = Scheduler(bridge.service, dispatcher, tick=min(1.0, settings.poll_interval))
    scheduler.run_once(sweep=True)
    if not burst:
        scheduler.start()
    try:
        SimpleWorker([dispatcher.queue], connection=dispatcher.connection).work(
            burst=burst, logging_level="INFO"
        )
    finally:
        if not burst:
            scheduler.stop()
        with _bridge_lock:
            _bridge = None
        bridge.close()
