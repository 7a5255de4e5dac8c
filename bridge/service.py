"""The export service: create, read, cancel and advance jobs, and hand out downloads.

This is where the pieces meet: a caller's normalized request becomes a stored job; a
backend moves it along (start → poll → fetch); the finished file goes into the artifact
store; a signed link lets the caller download it. No Flask here — the HTTP edge and the
worker both call this.

Advancing a job takes its *lease* in the store first, so however many readers, threads
and processes look at a job, only one talks to the upstream at a time, and at most once
per ``poll_interval``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bridge.artifacts import ArtifactStore, PresignedDownloads
from bridge.backends.base import Backend, Cancelled, JobContext, Ready, Running, Step
from bridge.config import Settings
from bridge.crypto import SecretBox
from bridge.delivery import Deliveries, check_callback_url
from bridge.errors import (
    BridgeError,
    ConflictError,
    FieldError,
    IdempotencyKeyReusedError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableError,
    UnsupportedRequestError,
    UpstreamError,
    UpstreamUnavailableError,
    ValidationError,
)
from bridge.http import backoff_delay
from bridge.models import Artifact, Caller, ExportRequest, Job, JobError, JobState, parse_model
from bridge.observability import JOB_SECONDS, JOBS_FINISHED, REQUEST_ID
from bridge.signing import LinkClaims, LinkSigner
from bridge.stores.base import Store
from bridge.tenants import Tenant, TenantDirectory

log = logging.getLogger(__name__)

# Which backends ``auto`` tries, in order, for each format.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "pdf": ("scroll-macro", "scroll-rest", "content-exporter"),
    "docx": ("scroll-macro", "scroll-rest", "content-exporter"),
    "html": ("scroll-macro", "scroll-rest", "content-exporter"),
    "markdown": ("forge-markdown",),
}


@dataclass(frozen=True)
class DownloadLink:
    """A signed link to a job's file."""

    url: str
    expires_at: int


class ExportService:
    """Everything the bridge does with export jobs."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        artifacts: ArtifactStore,
        signer: LinkSigner,
        backends: dict[str, Backend],
        tenants: TenantDirectory,
        clock: Callable[[], float] = time.time,
        secret_box: SecretBox | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.signer = signer
        self.backends = backends
        self.tenants = tenants
        self.clock = clock
        self.secret_box = secret_box
        self.on_due: list[Callable[[str], None]] = []
        """Called with a job id when it has work to do now (the worker listens)."""
        self.on_finished: list[Callable[[Job], None]] = []
        """Called with a job once it reaches a final state."""
        self.deliveries: Deliveries | None = None
        """Queues callbacks/attachments of finishing jobs (set by the bootstrap)."""

    # --- caller operations -------------------------------------------------------------

    def create(
        self, caller: Caller, body: object, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Validate *body*, store a queued job, and return it with ``True`` if it is new.

        With an ``Idempotency-Key`` used before by this tenant, return the earlier job
        (``False``) when the body is the same, and refuse when it is not.
        """
        request = parse_model(ExportRequest, body)
        tenant = self.tenants.get(caller.tenant_id)
        as_user = self._as_user(caller, request)
        if as_user != request.as_user:
            # asUser defaults to the authenticated user; backends must see whom the job runs as.
            request = request.model_copy(update={"as_user": as_user})
        name = self.choose_backend(tenant, request)
        try:
            self._check_semantics(tenant, name, request)
        except ValidationError as exc:
            # Well-formed but not doable for this tenant/backend: 422, fields still named.
            raise UnprocessableError(exc.message, exc.errors) from None
        now = self.clock()
        job = Job(
            id=uuid.uuid4().hex,
            tenant_id=tenant.id,
            backend=name,
            request=request.to_json(),
            created_at=now,
            updated_at=now,
            as_user=as_user,
            next_poll_at=now,
            secrets=self._seal_caller_secrets(caller, as_user),
        )
        fingerprint = _fingerprint({"request": job.request, "asUser": as_user})
        earlier = self.store.insert_job(job, idempotency_key, fingerprint)
        if earlier is not None:
            if earlier.fingerprint != fingerprint:
                raise IdempotencyKeyReusedError(
                    "This Idempotency-Key was already used with a different request."
                )
            existing = self.store.get_job(earlier.job_id)
            if existing is None:
                raise NotFoundError("The job created with this Idempotency-Key is gone.")
            return existing, False
        log.info("job created", extra={"job": job.id, "tenant": tenant.id, "backend": name})
        self._announce(job.id)
        return job, True

    def _check_semantics(self, tenant: Tenant, backend: str, request: ExportRequest) -> None:
        """What the schema cannot say: backend options and requirements, callbacks, attach."""
        self.backends[backend].validate(tenant.backends[backend], request)
        if request.callback is not None:
            if not tenant.callback_secret:
                raise ValidationError(
                    "This tenant cannot receive callbacks.",
                    [FieldError("callback", "No callback_secret is configured for this tenant.")],
                )
            check_callback_url(str(request.callback.url), self.settings.allow_private_callbacks)
        if request.attach_to_page and request.page_id is None:
            raise ValidationError(
                "Only a page export can be attached to its page.",
                [FieldError("attachToPage", "Export a page (source.pageId) to attach it.")],
            )

    def choose_backend(self, tenant: Tenant, request: ExportRequest) -> str:
        """The backend that serves *request* for *tenant*.

        :raises UnsupportedRequestError: the named backend, or every candidate for
            ``auto``, is not configured or cannot serve the request (with the reasons).
        """
        if request.backend != "auto":
            candidates: tuple[str, ...] = (request.backend,)
        else:
            preferred = tenant.default_backend.get(request.format)
            order = AUTO_ORDER.get(request.format, ())
            candidates = ((preferred,) if preferred else ()) + tuple(
                b for b in order if b != preferred
            )
        reasons = []
        for name in candidates:
            backend = self.backends.get(name)
            config = tenant.backends.get(name)
            if backend is None or config is None:
                reasons.append(f"{name} is not configured for this tenant")
                continue
            reason = backend.unsupported(config, request)
            if reason is None:
                return name
            reasons.append(reason)
        raise UnsupportedRequestError(
            f"No configured backend can export this request: {'; '.join(reasons)}."
        )

    def _seal_caller_secrets(self, caller: Caller, as_user: str | None) -> dict[str, str]:
        """Keep the caller's own product token for the job, sealed, when it acts for
        that same user (a Forge invocation's ``x-forge-oauth-user``)."""
        if caller.product_token is None or as_user != caller.user or self.secret_box is None:
            return {}
        sealed = {"user_token": self.secret_box.seal(caller.product_token)}
        if caller.product_base_url:
            sealed["product_base_url"] = self.secret_box.seal(caller.product_base_url)
        return sealed

    def context(self, job: Job, config: Any) -> JobContext:
        """The backend's view of *job*, with its sealed secrets opened."""
        secrets: dict[str, str] = {}
        if job.secrets and self.secret_box is not None:
            try:
                secrets = {k: self.secret_box.open(v) for k, v in job.secrets.items()}
            except ValueError:
                log.warning("cannot open a job's secrets", extra={"job": job.id})
        return JobContext(job.id, job.tenant_id, config, job.as_user, secrets)

    def _as_user(self, caller: Caller, request: ExportRequest) -> str | None:
        if request.as_user is None or request.as_user == caller.user:
            return caller.user if request.as_user is None else request.as_user
        if not caller.admin:
            raise PermissionDeniedError(
                "Only tenant-admin credentials may export as another user (asUser)."
            )
        return request.as_user

    def get(self, caller: Caller, job_id: str) -> Job:
        """Return the caller's job, first advancing it if an upstream poll is due."""
        job = self._owned(caller, job_id)
        if not job.state.final and not job.ready and job.next_poll_at <= self.clock():
            job = self.advance(job_id, fetch=False) or self._owned(caller, job_id)
        return job

    def wait(
        self,
        caller: Caller,
        job_id: str,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Job:
        """Read the job until it is final or *timeout* seconds have passed."""
        deadline = self.clock() + timeout
        job = self.get(caller, job_id)
        while not job.state.final and self.clock() < deadline:
            sleep(min(0.1, max(0.0, deadline - self.clock())))
            job = self.get(caller, job_id)
        return job

    def cancel(self, caller: Caller, job_id: str) -> Job:
        """Cancel the caller's job (and the upstream job where the upstream can).

        :raises ConflictError: the job already completed or failed.
        """
        for _ in range(10):
            job = self._owned(caller, job_id)
            if job.state is JobState.CANCELLED:
                return job
            if job.state.final:
                raise ConflictError(f"The job is already {job.state.value}; nothing to cancel.")
            if job.state is JobState.RUNNING:
                self._cancel_upstream(job)
            job.state = JobState.CANCELLED
            job.phase = "cancelled"
            self._finish(job)
            if self.store.save_job(job):
                self._finished(job)
                return job
        raise ConflictError("The job kept changing; try cancelling again.")

    def link(self, job: Job) -> DownloadLink | None:
        """A freshly signed link to the job's file (``None`` until it is complete)."""
        if job.state is not JobState.COMPLETE or job.artifact is None:
            return None
        now = self.clock()
        expires = int(now + self.settings.link_ttl)
        if job.expires_at is not None:
            expires = min(expires, int(job.expires_at))
        if self.settings.download_mode == "presigned" and isinstance(
            self.artifacts, PresignedDownloads
        ):
            artifact = job.artifact
            url = self.artifacts.presigned_url(
                artifact.key, artifact.filename, artifact.content_type, int(expires - now)
            )
            return DownloadLink(url, expires)
        token = self.signer.sign(LinkClaims(job.id, job.tenant_id, expires))
        filename = quote(job.artifact.filename, safe="")
        return DownloadLink(
            f"{self.settings.public_url.rstrip('/')}/v1/downloads/{token}/{filename}", expires
        )

    def open_download(self, token: str, caller: Caller | None = None) -> tuple[Job, Artifact]:
        """Resolve a link token to its job and file.

        :raises LinkError: bad signature (403) or expired (410).
        :raises NotFoundError: the job or its file is gone, or belongs to another tenant.
        """
        claims = self.signer.verify(token, self.clock())
        job = self.store.get_job(claims.job_id)
        if job is None or job.tenant_id != claims.tenant_id or job.artifact is None:
            raise NotFoundError("The exported file is no longer available.")
        if caller is not None and caller.tenant_id != job.tenant_id:
            raise NotFoundError("The exported file is no longer available.")
        return job, job.artifact

    def _owned(self, caller: Caller, job_id: str) -> Job:
        """The job if this caller may see it: same tenant, and for a user (not an admin
        credential) only the jobs that run as that user."""
        job = self.store.get_job(job_id)
        if (
            job is None
            or job.tenant_id != caller.tenant_id
            or (not caller.admin and job.as_user != caller.user)
        ):
            raise NotFoundError(f"No export job {job_id!r}.")
        return job

    # --- moving jobs along -------------------------------------------------------------

    def advance(self, job_id: str, *, fetch: bool = True) -> Job | None:
        """Take the job's next step if it is due and nobody else is taking it.

        Returns the job as saved, or ``None`` when another caller holds it or it is not due.
        With ``fetch=False`` (a caller's status read) the file is left for the worker.
        """
        owner = uuid.uuid4().hex
        if not self.store.claim_job(job_id, owner, self.clock(), self.settings.job_lease):
            return None
        # Background steps log (and tell upstreams) the job id when no request id is set.
        token = REQUEST_ID.set(REQUEST_ID.get() or f"job-{job_id}")
        try:
            job = self.store.get_job(job_id)
            if job is None or job.state.final:
                return job
            return self._step(job, owner, fetch)
        finally:
            REQUEST_ID.reset(token)
            self.store.release_job(job_id, owner)

    def _step(self, job: Job, owner: str, fetch: bool) -> Job:
        tenant = self.tenants.find(job.tenant_id)
        backend = self.backends.get(job.backend)
        config = tenant.backends.get(job.backend) if tenant else None
        if tenant is None or backend is None or config is None:
            job.state, job.error = (
                JobState.FAILED,
                JobError("not_configured", f"The tenant no longer has {job.backend} configured."),
            )
            return self._save_step(job, None)
        ctx = self.context(job, config)
        started = job.state is JobState.QUEUED
        try:
            if job.state is JobState.QUEUED:
                request = ExportRequest.model_validate(job.request)
                self._apply(job, backend.start(ctx, request))
                if job.state is JobState.QUEUED:
                    job.state = JobState.RUNNING
                job.attempts = 0
            elif not job.ready:
                self._apply(job, backend.poll(ctx, job.handle))
                job.attempts = 0
            if job.ready and fetch and not job.state.final:
                self._fetch(job, backend, ctx, owner)
                job.attempts = 0
        except UpstreamError as exc:
            self._upstream_failed(job, exc)
        except BridgeError as exc:
            self._fail(job, exc.code, exc.message)
        except Exception:
            log.exception("job step crashed", extra={"job": job.id, "backend": job.backend})
            self._fail(job, "internal_error", "The bridge hit an internal error on this job.")
        return self._save_step(job, backend if started else None, ctx)

    def _apply(self, job: Job, step: Step) -> None:
        now = self.clock()
        job.handle = step.handle
        if isinstance(step, Running):
            job.state = JobState.RUNNING
            job.progress = max(job.progress, min(99, step.progress))
            job.phase = step.phase
            wait = max(self.settings.poll_interval, step.poll_after or 0.0)
            job.next_poll_at = now + wait
        elif isinstance(step, Ready):
            job.state = JobState.RUNNING
            job.ready = True
            job.progress = max(job.progress, 99)
            job.phase = step.phase
            job.next_poll_at = now
            self._announce(job.id)
        elif isinstance(step, Cancelled):
            job.state = JobState.CANCELLED
            job.phase = "cancelled"
            job.error = JobError("upstream_cancelled", step.message)
            self._finish(job)

    def _fetch(self, job: Job, backend: Backend, ctx: JobContext, owner: str) -> None:
        key = f"{job.tenant_id}/{job.id}"
        job.phase = "downloading"
        with backend.fetch(ctx, job.handle) as download:
            stored = self.artifacts.put(key, self._renewing(download.chunks, job.id, owner))
        if download.size is not None and stored.size != download.size:
            self.artifacts.delete(key)
            raise UpstreamUnavailableError(
                f"The download ended after {stored.size} of {download.size} bytes.",
                backend=job.backend,
            )
        job.artifact = Artifact(
            key, download.filename, download.content_type, stored.size, stored.sha256
        )
        job.state, job.progress, job.phase = JobState.COMPLETE, 100, "complete"
        self._finish(job)

    def _renewing(self, chunks: Iterator[bytes], job_id: str, owner: str) -> Iterator[bytes]:
        """Pass *chunks* through, renewing the job's lease while a long download runs."""
        lease = self.settings.job_lease
        renew_at = self.clock() + lease / 5
        for chunk in chunks:
            if self.clock() >= renew_at:
                if not self.store.extend_lease(job_id, owner, self.clock() + lease):
                    raise ConflictError("Lost the job's lease during the download.")
                renew_at = self.clock() + lease / 5
            yield chunk

    def _upstream_failed(self, job: Job, exc: UpstreamError) -> None:
        job.attempts += 1
        if exc.retryable and job.attempts < self.settings.retry.job_attempts:
            delay = exc.retry_after
            if delay is None:
                delay = max(
                    self.settings.poll_interval,
                    backoff_delay(job.attempts, self.settings.retry, lambda: 1.0),
                )
            job.next_poll_at = self.clock() + delay
            log.warning(
                "upstream trouble, will retry",
                extra={"job": job.id, "attempt": job.attempts, "error": exc.message},
            )
            return
        self._fail(job, exc.code, exc.message, exc.upstream_status)

    def _fail(self, job: Job, code: str, message: str, upstream_status: int | None = None) -> None:
        job.state = JobState.FAILED
        job.phase = "failed"
        job.error = JobError(code, message, upstream_status)
        self._finish(job)

    def _finish(self, job: Job) -> None:
        job.expires_at = self.clock() + self.settings.artifact_ttl
        if self.deliveries is not None:
            # Queued before the final state is saved: a crash in between loses nothing.
            self.deliveries.queue_for(job)

    def _save_step(
        self, job: Job, started_with: Backend | None, ctx: JobContext | None = None
    ) -> Job:
        job.updated_at = self.clock()
        if self.store.save_job(job):
            if job.state.final:
                self._finished(job)
            return job
        # Someone changed the job meanwhile: only a cancel does that. Undo our side effects.
        current = self.store.get_job(job.id)
        if job.artifact is not None:
            self.artifacts.delete(job.artifact.key)
        if current is not None and current.state is JobState.CANCELLED and started_with and ctx:
            self._cancel_upstream(job, started_with, ctx)
        return current or job

    def _cancel_upstream(
        self, job: Job, backend: Backend | None = None, ctx: JobContext | None = None
    ) -> None:
        tenant = self.tenants.find(job.tenant_id)
        backend = backend or self.backends.get(job.backend)
        config = tenant.backends.get(job.backend) if tenant else None
        if backend is None or (ctx is None and config is None):
            return
        ctx = ctx or self.context(job, config)
        try:
            backend.cancel(ctx, job.handle)
        except BridgeError as exc:
            log.warning("upstream cancel failed", extra={"job": job.id, "error": exc.message})

    def _announce(self, job_id: str) -> None:
        for listener in self.on_due:
            listener(job_id)

    def _finished(self, job: Job) -> None:
        JOBS_FINISHED.labels(job.backend, job.state.value).inc()
        JOB_SECONDS.labels(job.backend, job.state.value).observe(
            max(0.0, job.updated_at - job.created_at)
        )
        for listener in self.on_finished:
            try:
                listener(job)
            except Exception:
                log.exception("finished-job listener failed", extra={"job": job.id})

    # --- housekeeping ------------------------------------------------------------------

    def sweep(self, limit: int = 100) -> int:
        """Delete jobs (and files) whose retention has passed; return how many."""
        expired = self.store.expired_jobs(self.clock(), limit)
        for job in expired:
            if job.artifact is not None:
                self.artifacts.delete(job.artifact.key)
            self.store.delete_job(job.id)
        return len(expired)


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
