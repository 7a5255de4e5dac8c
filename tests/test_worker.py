"""Tests for bridge.worker (and the job steps it drives in bridge.service), with a real
SQLiteStore, a real LocalArtifactStore and a fake backend."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.artifacts import LocalArtifactStore
from bridge.backends.base import (
    Backend,
    BackendConfig,
    BackendServices,
    Download,
    Handle,
    JobContext,
    Ready,
    Running,
    Step,
)
from bridge.config import RetrySettings, Settings
from bridge.errors import (
    UpstreamRejectedError,
    UpstreamUnavailableError,
    ValidationError,
)
from bridge.http import UpstreamClient
from bridge.models import Caller, Job, JobState
from bridge.sandbox.harness import ManualClock
from bridge.service import ExportService
from bridge.signing import LinkSigner
from bridge.stores import SQLiteStore
from bridge.tenants import TenantDirectory
from bridge.worker import Worker

T0 = 1_700_000_000.0
POLL = 2.0
CONTENT = [b"%PDF-1.7\n", b"x" * 300_000, b"\n%%EOF\n"]
BODY = {"source": {"pageId": "65538"}, "format": "pdf"}
CALLER = Caller("acme")


class FakeConfig(BackendConfig):
    """No settings needed."""


class FakeBackend(Backend):
    """Starts an upstream job, is Ready on the 2nd poll, then streams CONTENT.

    ``poll_errors``/``start_errors`` are raised (first in, first out) before answering.
    """

    name = "fake"
    formats = frozenset({"pdf"})
    Config = FakeConfig

    def __init__(self, services: BackendServices) -> None:
        super().__init__(services)
        self.calls: list[tuple[str, str]] = []
        self.start_errors: list[Exception] = []
        self.poll_errors: list[Exception] = []
        self.content: Callable[[], Iterator[bytes]] = lambda: iter(CONTENT)
        self.size: int | None = sum(map(len, CONTENT))
        self._lock = threading.Lock()

    def _record(self, verb: str, ctx: JobContext, errors: list[Exception]) -> None:
        with self._lock:
            self.calls.append((verb, ctx.job_id))
            if errors:
                raise errors.pop(0)

    def start(self, ctx: JobContext, request: Any) -> Step:
        self._record("start", ctx, self.start_errors)
        return Running({"upstreamId": f"up-{ctx.job_id}", "polls": 0}, 10, "queued upstream")

    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        self._record("poll", ctx, self.poll_errors)
        polls = handle["polls"] + 1
        if polls >= 2:
            return Ready({**handle, "polls": polls})
        return Running({**handle, "polls": polls}, 50, "exporting")

    @contextmanager
    def _download(self) -> Iterator[Download]:
        yield Download(self.content(), "report.pdf", "application/pdf", self.size)

    def fetch(self, ctx: JobContext, handle: Handle) -> AbstractContextManager[Download]:
        self._record("fetch", ctx, [])
        return self._download()

    def verbs(self, job_id: str) -> list[str]:
        return [verb for verb, jid in self.calls if jid == job_id]


@dataclass
class Rig:
    """An ExportService wired by hand, as bridge.bootstrap would, around the fake backend."""

    service: ExportService
    backend: FakeBackend
    store: SQLiteStore
    artifacts: LocalArtifactStore
    clock: Callable[[], float]

    def job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        assert job is not None
        return job


def build_rig(tmp_path: Path, clock: Callable[[], float], **settings: Any) -> Rig:
    settings.setdefault("poll_interval", POLL)
    config = Settings(
        tenants=[{"id": "acme", "backends": {"fake": {}}, "default_backend": {"pdf": "fake"}}],
        **settings,
    )
    services = BackendServices(
        settings=config,
        clock=clock,
        make_client=lambda name: UpstreamClient(name, config.retry, clock=clock),
    )
    backend = FakeBackend(services)
    backends: dict[str, Backend] = {"fake": backend}
    store = SQLiteStore(str(tmp_path / "db" / "bridge.sqlite3"))
    artifacts = LocalArtifactStore(tmp_path / "artifacts")
    service = ExportService(
        config,
        store,
        artifacts,
        LinkSigner([("k1", b"k" * 32)]),
        backends,
        TenantDirectory.from_config(config.tenants, backends),
        clock,
    )
    return Rig(service, backend, store, artifacts, clock)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def rig(tmp_path: Path, clock: ManualClock) -> Iterator[Rig]:
    built = build_rig(tmp_path, clock, retry=RetrySettings(job_attempts=3))
    yield built
    built.store.close()
    built.backend.close()


def create(rig: Rig) -> str:
    job, new = rig.service.create(CALLER, BODY)
    assert new and job.state is JobState.QUEUED
    return job.id


def started(rig: Rig, worker: Worker, clock: ManualClock) -> str:
    """A job that has been started upstream and whose first poll is due now."""
    job_id = create(rig)
    assert worker.run_once() == 1
    clock.advance(POLL)
    return job_id


def artifact_files(rig: Rig) -> list[Path]:
    return [p for p in rig.artifacts.root.rglob("*") if p.is_file()]


def test_run_once_drives_a_job_to_complete(rig: Rig, clock: ManualClock) -> None:
    finished: list[Job] = []
    rig.service.on_finished.append(finished.append)
    worker = Worker(rig.service, threads=1)
    job_id = create(rig)

    assert worker.run_once() == 1
    job = rig.job(job_id)
    assert (job.state, job.progress, job.next_poll_at) == (JobState.RUNNING, 10, T0 + POLL)
    assert job.handle == {"upstreamId": f"up-{job_id}", "polls": 0}

    assert worker.run_once() == 0  # not due yet: no upstream call
    assert rig.backend.verbs(job_id) == ["start"]

    clock.advance(POLL)
    assert worker.run_once() == 1
    job = rig.job(job_id)
    assert (job.state, job.progress, job.phase) == (JobState.RUNNING, 50, "exporting")

    clock.advance(POLL)
    assert worker.run_once() == 1
    job = rig.job(job_id)
    assert job.state is JobState.COMPLETE
    assert (job.progress, job.phase, job.error, job.attempts) == (100, "complete", None, 0)
    assert rig.backend.verbs(job_id) == ["start", "poll", "poll", "fetch"]

    data = b"".join(CONTENT)
    assert job.artifact is not None
    assert job.artifact.filename == "report.pdf"
    assert job.artifact.content_type == "application/pdf"
    assert job.artifact.size == len(data)
    assert job.artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(rig.artifacts.open(job.artifact.key)) == data
    assert job.expires_at == clock() + rig.service.settings.artifact_ttl

    assert [j.id for j in finished] == [job_id]
    clock.advance(3600)
    assert worker.run_once() == 0  # final jobs are never due again


def test_completed_job_gets_a_working_download_link(rig: Rig, clock: ManualClock) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    worker.run_once()
    clock.advance(POLL)
    worker.run_once()
    link = rig.service.link(rig.job(job_id))
    assert link is not None
    token = link.url.split("/v1/downloads/")[1].split("/")[0]
    job, artifact = rig.service.open_download(token)
    assert job.id == job_id and artifact.size == sum(map(len, CONTENT))


def test_the_handle_survives_a_new_service_on_the_same_files(
    rig: Rig, clock: ManualClock, tmp_path: Path
) -> None:
    """A restart (new process, same store) picks the job up where it was."""
    job_id = started(rig, Worker(rig.service), clock)
    Worker(rig.service).run_once()  # first poll: polls=1 in the handle
    restarted = build_rig(tmp_path, clock, retry=RetrySettings(job_attempts=3))
    try:
        clock.advance(POLL)
        assert Worker(restarted.service).run_once() == 1
        assert restarted.job(job_id).state is JobState.COMPLETE
        assert restarted.backend.verbs(job_id) == ["poll", "fetch"]
    finally:
        restarted.store.close()
        restarted.backend.close()


def test_crash_in_poll_fails_the_job_without_leaking_details(
    rig: Rig, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    rig.backend.poll_errors.append(KeyError("password=hunter2"))
    assert worker.run_once() == 1
    job = rig.job(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.code == "internal_error"
    assert job.error.upstream_status is None
    for leak in ("hunter2", "KeyError", "Traceback", "password"):
        assert leak not in job.error.message
    assert job.expires_at is not None
    assert "hunter2" in caplog.text  # the operator still gets the details in the log


def test_crash_in_start_fails_the_job(rig: Rig) -> None:
    rig.backend.start_errors.append(RuntimeError("boom"))
    job_id = create(rig)
    Worker(rig.service).run_once()
    job = rig.job(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "internal_error"


def test_crash_mid_download_fails_the_job_and_keeps_no_file(rig: Rig, clock: ManualClock) -> None:
    def broken() -> Iterator[bytes]:
        yield b"%PDF-1.7\n"
        raise RuntimeError("socket closed")

    rig.backend.content = broken
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    worker.run_once()
    clock.advance(POLL)
    worker.run_once()
    job = rig.job(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error.code == "internal_error"
    assert job.artifact is None
    assert artifact_files(rig) == []


def test_short_download_fails_and_keeps_no_file(rig: Rig, clock: ManualClock) -> None:
    rig.backend.content = lambda: iter(CONTENT[:1])  # fewer bytes than Download.size
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    worker.run_once()
    clock.advance(POLL)
    worker.run_once()
    job = rig.job(job_id)
    assert job.state is not JobState.COMPLETE
    assert job.artifact is None
    assert artifact_files(rig) == []


def test_retryable_error_reschedules_then_fails_after_job_attempts(
    rig: Rig, clock: ManualClock
) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    for attempt in (1, 2):
        rig.backend.poll_errors.append(
            UpstreamUnavailableError("HTTP 503", backend="fake", upstream_status=503)
        )
        assert worker.run_once() == 1
        job = rig.job(job_id)
        assert job.state is JobState.RUNNING
        assert job.attempts == attempt
        assert job.error is None
        assert job.next_poll_at > clock()
        assert worker.run_once() == 0  # rescheduled, not retried at once
        clock.advance(job.next_poll_at - clock())
    rig.backend.poll_errors.append(
        UpstreamUnavailableError("HTTP 503", backend="fake", upstream_status=503)
    )
    assert worker.run_once() == 1
    job = rig.job(job_id)
    assert job.state is JobState.FAILED
    assert job.attempts == 3
    assert job.error is not None
    assert (job.error.code, job.error.upstream_status) == ("upstream_unavailable", 503)
    assert rig.backend.verbs(job_id) == ["start", "poll", "poll", "poll"]


def test_retry_after_sets_the_next_poll(rig: Rig, clock: ManualClock) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    rig.backend.poll_errors.append(UpstreamUnavailableError("429", retry_after=30.0))
    worker.run_once()
    assert rig.job(job_id).next_poll_at == clock() + 30.0
    clock.advance(29.9)
    assert worker.run_once() == 0
    clock.advance(0.1)
    assert worker.run_once() == 1


def test_success_after_trouble_resets_attempts(rig: Rig, clock: ManualClock) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    rig.backend.poll_errors.append(UpstreamUnavailableError("503"))
    worker.run_once()
    assert rig.job(job_id).attempts == 1
    clock.advance(3600)
    worker.run_once()
    job = rig.job(job_id)
    assert (job.state, job.attempts) == (JobState.RUNNING, 0)


def test_non_retryable_upstream_error_fails_at_once(rig: Rig, clock: ManualClock) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    rig.backend.poll_errors.append(
        UpstreamRejectedError("fake upstream answered HTTP 404: gone", upstream_status=404)
    )
    worker.run_once()
    job = rig.job(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert (job.error.code, job.error.upstream_status) == ("upstream_rejected", 404)
    assert "gone" in job.error.message


def test_bridge_error_from_a_backend_fails_with_its_code(rig: Rig) -> None:
    rig.backend.start_errors.append(ValidationError("options.locale: bad"))
    job_id = create(rig)
    Worker(rig.service).run_once()
    job = rig.job(job_id)
    assert job.error is not None
    assert (job.state, job.error.code) == (JobState.FAILED, "validation_error")


def test_run_once_skips_a_job_leased_by_someone_else(rig: Rig, clock: ManualClock) -> None:
    job_id = create(rig)
    assert rig.store.claim_job(job_id, "another-process", clock(), 120)
    assert Worker(rig.service).run_once() == 0
    assert rig.backend.calls == []


def test_expired_jobs_are_swept_with_their_files(rig: Rig, clock: ManualClock) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    worker.run_once()
    clock.advance(POLL)
    worker.run_once()
    assert artifact_files(rig)
    clock.advance(rig.service.settings.artifact_ttl - 1)
    assert rig.service.sweep() == 0
    clock.advance(1)
    assert rig.service.sweep() == 1
    assert rig.store.get_job(job_id) is None
    assert artifact_files(rig) == []


def test_worker_threads_complete_jobs_in_the_background(tmp_path: Path) -> None:
    rig = build_rig(tmp_path, time.time, poll_interval=0.01)
    worker = Worker(rig.service, threads=3, idle_wait=0.02).start()
    assert worker.start() is worker  # idempotent
    try:
        job_ids = [create(rig) for _ in range(5)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(rig.job(j).state is JobState.COMPLETE for j in job_ids):
                break
            time.sleep(0.02)
    finally:
        worker.stop()
        rig.store.close()
        rig.backend.close()
    assert [rig.job(j).state for j in job_ids] == [JobState.COMPLETE] * 5
    for job_id in job_ids:
        # Leases kept the threads from stepping any job twice.
        assert rig.backend.verbs(job_id) == ["start", "poll", "poll", "fetch"]
    alive = {t.name for t in threading.enumerate()}
    assert "bridge-scheduler" not in alive
    assert not any(name.startswith("bridge-worker") for name in alive)


def test_stop_without_start_is_harmless(rig: Rig) -> None:
    Worker(rig.service).stop()


def test_create_nudges_a_started_worker(rig: Rig) -> None:
    worker = Worker(rig.service)
    worker._wake.clear()
    create(rig)
    assert worker._wake.is_set()


def test_long_download_keeps_its_lease(rig: Rig, clock: ManualClock) -> None:
    """A download longer than the lease renews it, so no other worker can step in."""
    stolen: list[bool] = []
    job_ids: list[str] = []

    def slow() -> Iterator[bytes]:
        for chunk in [b"x" * 1000] * 10:
            clock.advance(30)  # 300 s in all, far past one 120 s lease
            stolen.append(rig.store.claim_job(job_ids[0], "intruder", clock(), 120))
            yield chunk

    rig.backend.content, rig.backend.size = slow, 10_000
    worker = Worker(rig.service)
    job_ids.append(started(rig, worker, clock))
    worker.run_once()
    clock.advance(POLL)
    worker.run_once()
    assert stolen == [False] * 10
    job = rig.job(job_ids[0])
    assert job.state is JobState.COMPLETE
    assert job.artifact is not None and job.artifact.size == 10_000


def test_status_read_leaves_the_download_to_the_worker(rig: Rig, clock: ManualClock) -> None:
    worker = Worker(rig.service)
    job_id = started(rig, worker, clock)
    rig.service.get(CALLER, job_id)  # a caller's read: first poll
    clock.advance(POLL)
    job = rig.service.get(CALLER, job_id)  # second poll: Ready, but no fetch on a read
    assert job.ready and job.state is JobState.RUNNING
    assert rig.backend.verbs(job_id) == ["start", "poll", "poll"]
    assert worker.run_once() == 1  # due at once
    assert rig.job(job_id).state is JobState.COMPLETE
    assert rig.backend.verbs(job_id) == ["start", "poll", "poll", "fetch"]


def test_an_idle_worker_waits_instead_of_spinning(tmp_path: Path) -> None:
    """With nothing to do, the scheduler looks for work once per tick, not in a busy loop
    (a busy loop starves the request threads of the GIL)."""
    import time

    from bridge.bootstrap import build_bridge
    from bridge.config import load_settings

    bridge = build_bridge(
        load_settings(
            database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}",
            artifacts_url=f"file:{tmp_path / 'artifacts'}",
            encryption_key_file=str(tmp_path / "key"),
        ),
        start_worker=False,
    )
    looks = []
    due_jobs = bridge.store.due_jobs
    bridge.store.due_jobs = lambda *a, **k: looks.append(1) or due_jobs(*a, **k)  # type: ignore[method-assign]
    worker = Worker(bridge.service, threads=2, idle_wait=0.1).start()
    try:
        time.sleep(1.0)
    finally:
        worker.stop()
        bridge.close()
    assert len(looks) <= 30  # ~10 ticks; a spinning scheduler makes thousands
