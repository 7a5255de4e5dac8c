"""meta-inf "Content Exporter for Confluence" Remote API (Cloud only).

Written from seeds/content-exporter-remote-api.md and upstreams.md §2. Only the paths, the
``CEX-API-KEY`` header, the region hosts and the example body are documented; everything
below marked UNCONFIRMED is the sandbox's most plausible reading, kept configurable:

- ``POST /api/remoteExport/{pageId}/init`` answers the hash as JSON ``{"hash": ...}`` or as a
  plain-text body (``hash_response``), so clients must accept both.
- A missing key is ``401``, a wrong (or rotated-out) key ``403``.
- The body must be JSON (``415`` otherwise). ``rootContentId`` must equal the URL page id
  (number or string); ``outputFormat`` and ``exportType`` are required and must be in
  :data:`OUTPUT_FORMATS` / :data:`EXPORT_TYPES`; unknown keys are tolerated.
- ``SELECTED`` exports need ``selectedContentIdList`` naming the root or its descendants.
  A non-empty ``labels`` list keeps only descendants carrying one of those labels.
- Poll phases are :data:`PHASES`; a finished export reports ``done: true`` with phase
  ``CONVERTING_PAGES`` and ``progressValue: 100``, exactly as the documented example does.
- Downloading before the export is done is ``409``; an unknown hash, or one older than
  ``retention_seconds`` after completion, is ``404``.
- Exports run as the admin who generated the key: pages in :attr:`restricted` are invisible to
  that admin, so a restricted root is ``404`` and restricted descendants are left out.
"""

from __future__ import annotations

import hmac
import io
import re
import secrets
import threading
import time
import zipfile
from dataclasses import dataclass
from typing import Any, Final, Literal

from flask import Flask, Response, request

from bridge.sandbox.files import EXTENSIONS, make_file
from bridge.sandbox.harness import Clock, FaultInjector, RecordedCall, instrument, json_response
from bridge.sandbox.pages import Page, PageTree

APPLICATION_URLS: Final = {
    "us": "https://content-exporter-new.addon.meta-inf.hu",
    "eu": "https://content-exporter-new.addon-eu.meta-inf.hu",
}
API_KEY_HEADER: Final = "CEX-API-KEY"

OUTPUT_FORMATS: Final = {
    "PDF_MERGE": ("pdf", True),
    "PDF_ZIP": ("pdf", False),
    "WORD_MERGE": ("docx", True),
    "WORD_ZIP": ("docx", False),
    "HTML_ZIP": ("html", False),
}
"""Accepted ``outputFormat`` values → (file format, merged into one file?). UNCONFIRMED
except ``PDF_MERGE``."""

EXPORT_TYPES: Final = frozenset({"CURRENT_PAGE", "ALL_CHILD", "DIRECT_CHILD", "SELECTED"})
"""Accepted ``exportType`` values. UNCONFIRMED except ``ALL_CHILD``."""

PHASES: Final = (("COLLECTING_PAGES", 0.1), ("CONVERTING_PAGES", 1.0))
"""Poll phases and the fraction of ``export_seconds`` at which each ends. UNCONFIRMED except
``CONVERTING_PAGES``."""

DONE_PHASE: Final = "CONVERTING_PAGES"


class _Rejected(Exception):
    """A request the Remote API refuses with *status*."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"status": status, "message": message}


@dataclass
class ExportJob:
    """One export started through ``init``."""

    hash: str
    root_id: str
    page_ids: tuple[str, ...]
    output_format: str
    export_type: str
    run_as: str
    started_at: float
    body: dict[str, Any]


class ContentExporterSandbox:
    """The Content Exporter Remote API over a :class:`PageTree`, timed by an injectable clock."""

    def __init__(
        self,
        pages: PageTree,
        clock: Clock = time.time,
        *,
        api_key: str = "sandbox-cex-key",
        region: Literal["us", "eu"] = "us",
        export_seconds: float = 1.0,
        retention_seconds: float = 3600,
        hash_response: Literal["text", "json"] = "json",
        admin_account_id: str = "sandbox-admin",
    ) -> None:
        if region not in APPLICATION_URLS:
            raise ValueError(f"unknown region {region!r}")
        self.pages = pages
        self.clock = clock
        self.api_key = api_key
        self.region = region
        self.export_seconds = export_seconds
        self.retention_seconds = retention_seconds
        self.hash_response = hash_response
        self.admin_account_id = admin_account_id
        self.restricted: set[str] = set()
        self.jobs: dict[str, ExportJob] = {}
        self.calls: list[RecordedCall] = []
        self.faults = FaultInjector()
        self.inject = self.faults.add
        """Queue a fault: ``inject(status, times=, path_contains=, retry_after=, body=)``."""
        self._lock = threading.Lock()
        self.app = self._build_app()

    @property
    def application_url(self) -> str:
        """The real application URL this sandbox stands in for (by region)."""
        return APPLICATION_URLS[self.region]

    def regenerate_key(self) -> str:
        """Toggle the Remote API off and on: a new key replaces the old one, which stops working."""
        self.api_key = secrets.token_urlsafe(24)
        return self.api_key

    # --- app wiring ---

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        instrument(app, self.calls, self.faults, _error_body)
        app.before_request(self._authorize)
        app.add_url_rule("/api/remoteExport/<page_id>/init", "init", self._init, methods=["POST"])
        app.add_url_rule("/api/remoteExport/poll", "poll", self._poll)
        app.add_url_rule("/api/remoteExport/download", "download", self._download)

        @app.errorhandler(_Rejected)
        def _rejected(error: _Rejected) -> Response:
            return json_response(_error_body(error.status, str(error)), error.status)

        return app

    def _authorize(self) -> Response | None:
        key = request.headers.get(API_KEY_HEADER)
        if not key:
            return json_response(_error_body(401, f"Missing {API_KEY_HEADER} header"), 401)
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            return json_response(_error_body(403, "Invalid API key"), 403)
        return None

    # --- views ---

    def _init(self, page_id: str) -> Response:
        """Start an export of *page_id* and answer its hash."""
        if not request.is_json:
            raise _Rejected(415, "Content-Type must be application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _Rejected(400, "Request body must be a JSON object")
        _validate_body(body, page_id)
        root = self.pages.get(page_id)
        if root is None or page_id in self.restricted:
            raise _Rejected(404, f"Page {page_id} not found")
        job = ExportJob(
            hash=secrets.token_hex(16),
            root_id=page_id,
            page_ids=tuple(p.id for p in self._select(root, body)),
            output_format=body["outputFormat"],
            export_type=body["exportType"],
            run_as=self.admin_account_id,
            started_at=self.clock(),
            body=body,
        )
        with self._lock:
            self.jobs[job.hash] = job
        if self.hash_response == "text":
            return Response(job.hash, mimetype="text/plain")
        return json_response({"hash": job.hash})

    def _poll(self) -> Response:
        """Report the progress of the export named by ``hash``."""
        job = self._job()
        progress = self._progress(job)
        done = progress >= 1.0
        phase = DONE_PHASE if done else next(name for name, end in PHASES if progress < end)
        value = 100 if done else min(99, int(progress * 100))
        return json_response(
            {"done": done, "progressData": {"phase": phase, "progressValue": value}}
        )

    def _download(self) -> Response:
        """Stream the finished export named by ``hash``."""
        job = self._job()
        if self._progress(job) < 1.0:
            raise _Rejected(409, "Export is not finished yet")
        fmt, merged = OUTPUT_FORMATS[job.output_format]
        pages = [self.pages.pages[pid] for pid in job.page_ids]
        root = self.pages.pages[job.root_id]
        if merged:
            file = make_file(fmt, root.title, _merged_text(pages), root.pad_to)
            chunks, size = file.chunks(), file.size
            content_type, extension = file.content_type, file.extension
        else:
            data = _zip_per_page(fmt, pages)
            chunks, size = iter((data,)), len(data)
            content_type, extension = "application/zip", "zip"
        response = Response(chunks, content_type=content_type)
        response.headers["Content-Length"] = str(size)
        filename = f"{_safe_name(root.title)}.{extension}"
        response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response

    # --- helpers ---

    def _job(self) -> ExportJob:
        job_hash = request.args.get("hash")
        if not job_hash:
            raise _Rejected(400, "Missing hash parameter")
        with self._lock:
            job = self.jobs.get(job_hash)
        if job is None or self._expired(job):
            raise _Rejected(404, "Export not found")
        return job

    def _progress(self, job: ExportJob) -> float:
        if self.export_seconds <= 0:
            return 1.0
        return (self.clock() - job.started_at) / self.export_seconds

    def _expired(self, job: ExportJob) -> bool:
        finished_at = job.started_at + self.export_seconds
        return self.clock() > finished_at + self.retention_seconds

    def _select(self, root: Page, body: dict[str, Any]) -> list[Page]:
        """The pages an export includes, root first, in tree order, as the admin sees them."""
        export_type = body["exportType"]
        if export_type == "CURRENT_PAGE":
            candidates: list[Page] = []
        elif export_type == "DIRECT_CHILD":
            candidates = [self.pages.pages[c] for c in root.children]
        else:
            candidates = list(self.pages.descendants(root.id))
        if export_type == "SELECTED":
            wanted = {str(i) for i in body["selectedContentIdList"]}
            unknown = wanted - {p.id for p in candidates} - {root.id}
            if unknown:
                raise _Rejected(400, f"Selected content is not under the root: {sorted(unknown)}")
            candidates = [p for p in candidates if p.id in wanted]
        labels = body.get("labels")
        if labels:
            candidates = [p for p in candidates if set(p.labels) & set(labels)]
        return [root] + [p for p in candidates if p.id not in self.restricted]


def _validate_body(body: dict[str, Any], page_id: str) -> None:
    """Reject what the init call cannot accept (see the module docstring)."""
    root = body.get("rootContentId")
    if root is None or isinstance(root, bool) or not isinstance(root, int | str):
        raise _Rejected(400, "rootContentId must be the page id, as a number or a string")
    if str(root) != page_id:
        raise _Rejected(400, "rootContentId must equal the page id in the URL")
    if body.get("outputFormat") not in OUTPUT_FORMATS:
        raise _Rejected(400, f"outputFormat must be one of {sorted(OUTPUT_FORMATS)}")
    if body.get("exportType") not in EXPORT_TYPES:
        raise _Rejected(400, f"exportType must be one of {sorted(EXPORT_TYPES)}")
    selected = body.get("selectedContentIdList")
    if selected is not None and not _is_id_list(selected):
        raise _Rejected(400, "selectedContentIdList must be a list of content ids")
    if body["exportType"] == "SELECTED" and not selected:
        raise _Rejected(400, "SELECTED exports need a selectedContentIdList")
    labels = body.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(isinstance(x, str) for x in labels)
    ):
        raise _Rejected(400, "labels must be null or a list of strings")
    toc_level = body.get("tocLevel")
    if toc_level is not None and (type(toc_level) is not int or not 1 <= toc_level <= 6):
        raise _Rejected(400, "tocLevel must be an integer from 1 to 6")
    for flag in ("fontResize", "headingNumbering"):
        if flag in body and not isinstance(body[flag], bool):
            raise _Rejected(400, f"{flag} must be a boolean")
    margins = body.get("margins")
    if margins is not None and not (
        isinstance(margins, list) and all(_is_margin(m) for m in margins)
    ):
        raise _Rejected(400, "margins must be a list of {top, bottom, left, right} numbers")


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        not isinstance(i, bool) and isinstance(i, int | str) and str(i).isdigit() for i in value
    )


def _is_margin(value: Any) -> bool:
    return isinstance(value, dict) and all(
        not isinstance(v, bool) and isinstance(v, int | float) for v in value.values()
    )


def _merged_text(pages: list[Page]) -> str:
    return " ".join(f"[{page.title}] {page.body}" for page in pages)


def _zip_per_page(fmt: str, pages: list[Page]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for page in pages:
            data = make_file(fmt, page.title, page.body).read()
            name = f"{_safe_name(page.title)}-{page.id}.{EXTENSIONS[fmt]}"
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _safe_name(title: str) -> str:
    return re.sub(r"[^A-Za-z0-9._ -]+", "_", title).strip() or "export"
