"""The export-job engine behind the simulated Scroll Word/PDF/HTML exporters.

Shared by the REST sandbox (``scroll_rest``) and the Scroll Cloud macro renderer, so both
speak about the same jobs. Progress is a pure function of the injected clock: nothing runs
in the background, and a test moves a job along by advancing a :class:`ManualClock`.

Contract sources: ``seeds/scroll-exporter-rest-api.txt`` and ``upstreams.md`` §1. Choices
the vendor documents leave open (marked UNCONFIRMED there) are made here and documented:

* error body ``{"status": <int>, "message": "<text>"}`` (the macro seed shows this shape for
  macro errors and says it "corresponds to the error objects produced by the REST API");
* a missing or unknown ``templateId``, a missing ``pageId`` or a bad ``scope`` is 400, an
  unknown page is 404, an unknown or forgotten job is 404;
* a missing ``scope`` means ``current``; a numeric ``pageId`` is accepted like a string;
* unknown or placeholder values of the optional fields (``locale``, ``versionId``,
  ``variantId``, ``languageKey``, ``timeZone``, even the literal ``"string"``) and unknown
  extra fields are ignored, as the Cloud service is seen to do;
* a terminal job (complete, error or cancelled) is forgotten ``retention_seconds`` after it
  ended ("Export job information is removed 10 minutes after the completion of the job").
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from bridge.sandbox.files import EXTENSIONS, GeneratedFile, make_file
from bridge.sandbox.harness import Clock
from bridge.sandbox.pages import Page, PageTree

PRODUCTS: dict[str, str] = {"scroll-office": "docx", "scroll-pdf": "pdf", "scroll-html": "html"}
"""Servlet/product key -> output format (a key of ``files.CONTENT_TYPES``)."""

DC_TEMPLATE_UUIDS: dict[str, str] = {
    # The Word UUID is the one in the vendor's export-sync example URL.
    "scroll-office": "205721cc-6689-47ac-ae43-a98cf7f1d9ec",
    "scroll-pdf": "0d3b213f-5c1e-4a8b-9f2d-7e6a1b3c4d5e",
    "scroll-html": "7c1e9a52-3b8d-4f60-a2e4-91d5c0b6e873",
}
"""One Data-Center-style template id (a UUID) per product."""

MACRO_SEED_TEMPLATE = "d6d04ab9-53c0-42d9-9ae2-f4903275f654"
"""The template id in the macro-integration seed's Scroll Word example."""

DEFAULT_TEMPLATES: dict[str, frozenset[str]] = {
    "scroll-office": frozenset(
        {
            "com.k15t.scroll.office.default-template-1",
            "com.k15t.scroll.office.default-template-2",
            DC_TEMPLATE_UUIDS["scroll-office"],
            MACRO_SEED_TEMPLATE,
        }
    ),
    "scroll-pdf": frozenset(
        {
            "com.k15t.scroll.pdf.default-template-documentation",
            "com.k15t.scroll.pdf.default-template-article",
            DC_TEMPLATE_UUIDS["scroll-pdf"],
        }
    ),
    "scroll-html": frozenset({"com.k15t.scroll.html.helpcenter", DC_TEMPLATE_UUIDS["scroll-html"]}),
}
"""Accepted template ids per product: the Cloud built-ins, the REST seed's example, a UUID."""

SCOPES = ("current", "descendants")
TOTAL_STEPS = 3
FAILING_STEP = 2
"""Exports of a page in ``failing_pages`` end in status ``error`` when they reach this step."""


class ScrollError(Exception):
    """An error answer of the Scroll REST API: an HTTP status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    def body(self) -> dict[str, object]:
        """The JSON error object (shape UNCONFIRMED for REST; taken from the macro seed)."""
        return {"status": self.status, "message": self.message}


@dataclass
class _Job:
    """One export job; its progress is derived from its timestamps."""

    id: str
    product: str
    owner: str
    pages: list[Page]
    started_at: float
    duration: float
    fails: bool
    cancel_requested_at: float | None = None
    file_name: str = ""


@dataclass(frozen=True)
class _State:
    """A job's status at one instant; ``ended_at`` is set once it is terminal."""

    status: str
    step: int
    step_progress: int
    ended_at: float | None


class ScrollJobEngine:
    """Starts export jobs, reports their progress by the clock, serves their files.

    *job_seconds* is the running time of a one-page export (a ``descendants`` export takes
    that times the number of pages). *queue_seconds* is how long a job waits before it runs;
    cancelling a queued job shows only once it would have started (the seed: the status
    "will not immediately reflect that the job has been cancelled if the job is still
    queued"). *templates* maps each product to its accepted template ids.
    """

    def __init__(
        self,
        pages: PageTree,
        clock: Clock = time.time,
        *,
        job_seconds: float = 1.0,
        retention_seconds: float = 600.0,
        templates: Mapping[str, Collection[str]] | None = None,
        queue_seconds: float = 0.0,
    ) -> None:
        self.pages = pages
        self.clock = clock
        self.job_seconds = job_seconds
        self.retention_seconds = retention_seconds
        self.queue_seconds = queue_seconds
        source = DEFAULT_TEMPLATES if templates is None else templates
        self.templates: dict[str, frozenset[str]] = {
            product: frozenset(ids) for product, ids in source.items()
        }
        self.failing_pages: set[str] = set()
        """Page ids whose exports end in status ``error`` at step 2."""
        self.jobs_started = 0
        self._jobs: dict[str, _Job] = {}
        self._next_start_error: ScrollError | None = None
        self._lock = threading.Lock()

    # -- fault injection -------------------------------------------------------------

    def fail_next_start(self, status: int = 500, message: str = "Internal server error") -> None:
        """Make the next :meth:`start` raise ``ScrollError(status, message)``."""
        with self._lock:
            self._next_start_error = ScrollError(status, message)

    def make_job_fail(self, job_id: str) -> None:
        """Make a running job end in status ``error`` at step 2 (at once if already past it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise ScrollError(404, f"Export job {job_id} not found.")
            job.fails = True

    # -- the API ---------------------------------------------------------------------

    def start(self, product: str, params: Mapping[str, object], owner: str) -> str:
        """Validate the export parameters and start a job; return its id."""
        with self._lock:
            self._forget_expired_locked()
            if self._next_start_error is not None:
                error, self._next_start_error = self._next_start_error, None
                raise error
            pages = self._pages_to_export(product, params)
            now = self.clock()
            job = _Job(
                id=str(uuid.uuid4()),
                product=product,
                owner=owner,
                pages=pages,
                started_at=now,
                duration=self.job_seconds * len(pages),
                fails=any(page.id in self.failing_pages for page in pages),
                file_name=_file_name(pages[0].title, now, PRODUCTS[product]),
            )
            self._jobs[job.id] = job
            self.jobs_started += 1
            return job.id

    def export_now(self, product: str, params: Mapping[str, object]) -> tuple[GeneratedFile, str]:
        """A synchronous export (``export-sync``): the file and its name, without a job."""
        with self._lock:
            pages = self._pages_to_export(product, params)
            if any(page.id in self.failing_pages for page in pages):
                raise ScrollError(500, "The export failed.")
            return _render(product, pages), _file_name(
                pages[0].title, self.clock(), PRODUCTS[product]
            )

    def status(self, job_id: str, owner: str) -> dict[str, object]:
        """The job's status object; ``downloadUrl`` is left ``None`` for the HTTP layer."""
        with self._lock:
            _, state = self._find(job_id, owner)
            return {
                "status": state.status,
                "step": state.step,
                "totalSteps": TOTAL_STEPS,
                "stepProgress": state.step_progress,
                "downloadUrl": None,
            }

    def cancel(self, job_id: str, owner: str) -> None:
        """Cancel a queued or running job; a job that already ended is left as it is."""
        with self._lock:
            job, state = self._find(job_id, owner)
            if state.ended_at is None:
                job.cancel_requested_at = self.clock()

    def file(self, job_id: str) -> tuple[GeneratedFile, str]:
        """The exported file of a complete job and its file name (404 otherwise)."""
        with self._lock:
            job, state = self._find(job_id, owner=None)
            if state.status != "complete":
                raise ScrollError(404, f"Export job {job_id} has no result.")
            return _render(job.product, job.pages), job.file_name

    def owner_of(self, job_id: str) -> str:
        """The owner of a known job (404 for an unknown or forgotten one)."""
        with self._lock:
            job, _ = self._find(job_id, owner=None)
            return job.owner

    def forget_expired(self) -> None:
        """Drop jobs that ended more than ``retention_seconds`` ago (also done lazily)."""
        with self._lock:
            self._forget_expired_locked()

    # -- internals -------------------------------------------------------------------

    def _pages_to_export(self, product: str, params: Mapping[str, object]) -> list[Page]:
        """Validate the export parameters; the pages to export, the exported page first."""
        if product not in PRODUCTS:
            raise ScrollError(404, f"Unknown exporter {product!r}.")
        template_id = _required_string(params, "templateId")
        if template_id not in self.templates.get(product, frozenset()):
            raise ScrollError(400, f"Unknown template: {template_id}")
        page_id = _required_string(params, "pageId")
        scope = params.get("scope", "current")
        if scope not in SCOPES:
            raise ScrollError(400, f"Invalid scope {scope!r}; use one of {', '.join(SCOPES)}.")
        root = self.pages.get(page_id)
        if root is None:
            raise ScrollError(404, f"Page {page_id} not found.")
        if scope == "current":
            return [root]
        return [root, *self.pages.descendants(root.id)]

    def _find(self, job_id: str, owner: str | None) -> tuple[_Job, _State]:
        self._forget_expired_locked()
        job = self._jobs.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise ScrollError(404, f"Export job {job_id} not found.")
        return job, self._state(job, self.clock())

    def _forget_expired_locked(self) -> None:
        now = self.clock()
        for job_id, job in list(self._jobs.items()):
            ended_at = self._state(job, now).ended_at
            if ended_at is not None and now - ended_at >= self.retention_seconds:
                del self._jobs[job_id]

    def _state(self, job: _Job, now: float) -> _State:
        runs_at = job.started_at + self.queue_seconds
        if job.cancel_requested_at is not None:
            # A queued job notices its cancellation only when it would have started.
            cancelled_at = max(job.cancel_requested_at, runs_at)
            if now >= cancelled_at:
                step, progress = _progress(job, cancelled_at - runs_at)
                return _State("cancelled", step, progress, cancelled_at)
        if job.fails:
            failed_at = runs_at + job.duration * (FAILING_STEP - 1) / TOTAL_STEPS
            if now >= failed_at:
                return _State("error", FAILING_STEP, 0, failed_at)
        if now >= runs_at + job.duration:
            return _State("complete", TOTAL_STEPS, 100, runs_at + job.duration)
        step, progress = _progress(job, now - runs_at)
        return _State("incomplete", step, progress, None)


def _render(product: str, pages: list[Page]) -> GeneratedFile:
    """The exported file: the first page's title, every page's text, its ``pad_to`` size."""
    body = " ".join(f"{page.title}: {page.body}" for page in pages)
    return make_file(PRODUCTS[product], pages[0].title, body, pages[0].pad_to)


def _progress(job: _Job, elapsed: float) -> tuple[int, int]:
    """Step (1-based) and percent of that step after *elapsed* seconds of running."""
    if elapsed <= 0 or job.duration <= 0:
        return 1, 0
    done = min(elapsed / job.duration, 1.0) * TOTAL_STEPS
    step = min(int(done) + 1, TOTAL_STEPS)
    return step, min(int((done - (step - 1)) * 100), 100)


def _required_string(params: Mapping[str, object], name: str) -> str:
    value = params.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ScrollError(400, f"Missing required parameter '{name}'.")
    return value.strip()


def _file_name(title: str, started_at: float, fmt: str) -> str:
    """``Product-Handbook-20240101_120000.pdf``, as in the vendor's download URLs."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-") or "export"
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(started_at))
    return f"{slug}-{stamp}.{EXTENSIONS[fmt]}"
