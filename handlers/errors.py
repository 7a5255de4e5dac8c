"""Errors → ``application/problem+json`` (RFC 9457), in exactly one place.

Every error answer, including Flask's own 404/405/413, has ``type``, ``title``,
``status`` and ``detail``; validation errors add ``errors: [{field, message}]``. Nothing
else reaches the client: an unexpected exception is logged and answered with a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json
from werkzeug.exceptions import HTTPException

from bridge.errors import (
    AuthenticationError,
    BridgeError,
    LinkExpiredError,
    UpstreamError,
    ValidationError,
)

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://confluence-export-bridge.dev/problems/"
PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> Response:
    """A problem+json response."""
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    return response


def bridge_error(exc: BridgeError) -> Response:
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationError):
        extra["errors"] = [{"field": e.field, "message": e.message} for e in exc.errors]
    if isinstance(exc, UpstreamError):
        extra["backend"] = exc.backend
        if exc.upstream_status is not None:
            extra["upstreamStatus"] = exc.upstream_status
    if isinstance(exc, AuthenticationError):
        extra["reason"] = exc.reason
    if isinstance(exc, LinkExpiredError):
        extra["expiredAt"] = exc.expired_at
    response = problem(exc.status_code, exc.title, exc.message, exc.code, **extra)
    if isinstance(exc, AuthenticationError):
        response.headers["WWW-Authenticate"] = 'Bearer realm="confluence-export-bridge"'
    if isinstance(exc, UpstreamError) and exc.retry_after is not None:
        response.headers["Retry-After"] = str(int(exc.retry_after))
    return response


def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    response = problem(
        status, exc.name, exc.description or exc.name, exc.name.lower().replace(" ", "_")
    )
    if status == 405 and exc.response is None:
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
    return response


def unexpected_error(exc: Exception) -> Response:
    log.exception("unhandled error")
    return problem(500, "Internal error", "The bridge hit an unexpected error.", "internal_error")


def register(app: Flask) -> None:
    """Install the handlers on *app*."""
    app.register_error_handler(BridgeError, bridge_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
