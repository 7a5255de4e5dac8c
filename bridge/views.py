"""The public JSON shape of a job (the API and callbacks both send it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from bridge.models import Job
from bridge.service import ExportService


def iso(timestamp: float) -> str:
    """Unix time → RFC 3339 UTC with a ``Z``."""
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def job_view(job: Job, service: ExportService) -> dict[str, Any]:
    """The job as callers see it, with a freshly signed download link when complete."""
    view: dict[str, Any] = {
        "id": job.id,
        "backend": job.backend,
        "state": job.state.value,
        "progress": job.progress,
        "phase": job.phase,
        "format": job.request.get("format"),
        "source": job.request.get("source"),
        "asUser": job.as_user,
        "createdAt": iso(job.created_at),
        "updatedAt": iso(job.updated_at),
        "error": None,
        "download": None,
    }
    if job.error is not None:
        view["error"] = {
            "code": job.error.code,
            "message": job.error.message,
            "upstreamStatus": job.error.upstream_status,
        }
    link = service.link(job)
    if link is not None and job.artifact is not None:
        view["download"] = {
            "url": link.url,
            "expiresAt": iso(link.expires_at),
            "filename": job.artifact.filename,
            "contentType": job.artifact.content_type,
            "size": job.artifact.size,
            "sha256": job.artifact.sha256,
        }
    return view


def attachment_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    fallback = filename.encode("ascii", "replace").decode("ascii")
    for bad, good in (('"', "'"), ("\\", "_"), ("?", "_")):
        fallback = fallback.replace(bad, good)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
