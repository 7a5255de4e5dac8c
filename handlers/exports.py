"""``/v1/exports``: start, read and cancel export jobs."""

from __future__ import annotations

import math
import re

from flask import Blueprint, Response, jsonify, request, url_for

from bridge.errors import FieldError, ValidationError
from bridge.models import Job, JobState
from bridge.views import job_view
from handlers.auth import bridge, current_caller

bp = Blueprint("exports", __name__, url_prefix="/v1/exports")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*\"?(\d{1,6})\"?", re.IGNORECASE)


def _json_body() -> object:
    if not request.is_json:
        raise ValidationError(
            "Send the export request as JSON.",
            [FieldError("body", "Content-Type must be application/json.")],
        )
    body = request.get_json(silent=True)
    if body is None:
        raise ValidationError("The body is not valid JSON.", [FieldError("body", "Invalid JSON.")])
    return body


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationError(
            "The Idempotency-Key header is invalid.",
            [FieldError("Idempotency-Key", "1 to 255 visible ASCII characters.")],
        )
    return key


def _prefer_wait() -> int | None:
    match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    return int(match.group(1)) if match else None


def _job_response(job: Job, status: int) -> Response:
    service = bridge().service
    response = jsonify(job_view(job, service))
    response.status_code = status
    response.headers["Location"] = url_for("exports.get_export", job_id=job.id)
    if not job.state.final:
        wait = (
            max(1.0, job.next_poll_at - service.clock()) if math.isfinite(job.next_poll_at) else 1.0
        )
        response.headers["Retry-After"] = str(max(1, min(60, math.ceil(wait))))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("")
def create_export() -> Response:
    """Start an export; 202 with the queued job (or the finished job under ``Prefer: wait``)."""
    caller = current_caller()
    service = bridge().service
    job, created = service.create(caller, _json_body(), _idempotency_key())
    wait = _prefer_wait()
    if wait is not None and not job.state.final:
        job = service.wait(caller, job.id, min(wait, bridge().settings.max_wait))
    if job.state.final:
        response = _job_response(job, 201 if created else 200)
    else:
        response = _job_response(job, 202 if created else 200)
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response


@bp.get("/<job_id>")
def get_export(job_id: str) -> Response:
    """Read a job (advancing it if an upstream poll is due); a fresh link when complete."""
    job = bridge().service.get(current_caller(), job_id)
    return _job_response(job, 200)


@bp.delete("/<job_id>")
def cancel_export(job_id: str) -> Response:
    """Cancel a job; 200 with the cancelled job, 409 if it already finished."""
    job = bridge().service.cancel(current_caller(), job_id)
    assert job.state is JobState.CANCELLED
    return _job_response(job, 200)
