"""The in-process background worker: advances jobs nobody is polling, and sweeps old ones.

A scheduler thread asks the store which jobs are due and hands them to a thread pool. The
store's leases make this safe to run in several processes at once; a job a crashed process
was working on becomes due again when its lease runs out, so nothing is lost.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from bridge.service import ExportService

log = logging.getLogger(__name__)
_DELIVERIES = "<deliveries>"


class Worker:
    """Threads that keep jobs moving without anyone polling them."""

    def __init__(
        self,
        service: ExportService,
        threads: int = 4,
        idle_wait: float = 0.5,
        sweep_every: float = 60.0,
    ) -> None:
        self.service = service
        self.threads = max(1, threads)
        self.idle_wait = idle_wait
        self.sweep_every = sweep_every
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._scheduler: threading.Thread | None = None
        service.on_due.append(lambda _job_id: self.nudge())

    def start(self) -> Worker:
        """Start the scheduler and the pool (idempotent)."""
        if self._scheduler is None:
            self._stop.clear()
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bridge-worker")
            self._scheduler = threading.Thread(
                target=self._run, name="bridge-scheduler", daemon=True
            )
            self._scheduler.start()
        return self

    def nudge(self) -> None:
        """Look for due jobs now rather than at the next tick."""
        self._wake.set()

    def stop(self, wait: bool = True) -> None:
        """Stop taking jobs; with *wait*, let the steps under way finish."""
        self._stop.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
        self._scheduler = None

    def run_once(self) -> int:
        """Advance every due job once, in this thread; return how many were taken."""
        taken = 0
        for job_id in self.service.store.due_jobs(self.service.clock(), 100):
            if self.service.advance(job_id) is not None:
                taken += 1
        if self.service.deliveries is not None:
            taken += self.service.deliveries.run_due()
        return taken

    def _run(self) -> None:
        next_sweep = self.service.clock()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self._dispatch()
                if self.service.clock() >= next_sweep:
                    self.service.sweep()
                    next_sweep = self.service.clock() + self.sweep_every
            except Exception:
                log.exception("worker scheduler error")
            self._wake.wait(self.idle_wait)

    def _dispatch(self) -> None:
        deliveries = self.service.deliveries
        if deliveries is not None and self._reserve(_DELIVERIES):
            self._submit(_DELIVERIES, deliveries.run_due)
        with self._lock:
            free = self.threads + 1 - len(self._inflight)
        if free <= 0:
            return
        for job_id in self.service.store.due_jobs(self.service.clock(), free * 2):
            if self._reserve(job_id):
                self._submit(job_id, functools.partial(self.service.advance, job_id))

    def _reserve(self, key: str) -> bool:
        with self._lock:
            if key in self._inflight or len(self._inflight) > self.threads:
                return False
            self._inflight.add(key)
            return True

    def _submit(self, key: str, task: Callable[[], object]) -> None:
        # Outside the lock: a task that is already done runs its callback right here.
        assert self._pool is not None
        future = self._pool.submit(task)
        future.add_done_callback(functools.partial(self._done, key))

    def _done(self, job_id: str, future: Future[Any]) -> None:
        with self._lock:
            self._inflight.discard(job_id)
        if future.exception() is not None:
            log.error("job step failed", exc_info=future.exception(), extra={"job": job_id})
        elif future.result():
            # Only a task that did something may have made more work due right away;
            # waking on every task would spin the scheduler while idle.
            self._wake.set()
