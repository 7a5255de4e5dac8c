"""AWS Lambda entry points: the HTTP API, and the scheduled background worker.

``handler`` serves API Gateway events — HTTP API (payload 2.0), REST API (1.0) and ALB —
through apig-wsgi; binary responses (downloads) come back base64-encoded with
``isBase64Encoded: true``. ``scheduled`` is invoked by an EventBridge schedule: it takes due
job steps until nothing is due before the next tick or the invocation's time is nearly up,
then sweeps expired jobs. The app and its bridge are built once per container, on first
use, from ``BRIDGE_*`` environment variables (or ``BRIDGE_CONFIG``).

Limits that shape the deployment (see serverless.yml and docs/deploying.md):

* API Gateway gives an integration 29 s: ``BRIDGE_MAX_WAIT=20`` caps ``Prefer: wait`` well
  below it, and callers poll ``GET /v1/exports/{id}`` (``Retry-After``) after that.
* A synchronous response carries at most 6 MB: files are always handed out as links, and with
  ``BRIDGE_DOWNLOAD_MODE=presigned`` on S3 they are pre-signed S3 URLs, so file bytes never
  pass through the function.
* Threads are frozen between invocations: set ``BRIDGE_WORKER_THREADS=0`` for the HTTP
  function; the ``scheduled`` function does the background work. State must be shared:
  Redis (``BRIDGE_DATABASE_URL=rediss://…``) and S3 (``BRIDGE_ARTIFACTS_URL=s3://…``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from apig_wsgi import make_lambda_handler
from flask import Flask

from bridge.bootstrap import Bridge
from handlers import create_app

SAFETY_SECONDS = 10.0
"""Time left unused at the end of a scheduled run (a step under way must finish)."""
DEFAULT_BUDGET = 50.0
"""Seconds a scheduled run may take when the context does not say (outside Lambda)."""
HORIZON = 60.0
"""A scheduled run keeps going while some job falls due within this (the next tick)."""
IDLE_WAIT = 0.5

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

_lock = threading.Lock()
_app: Flask | None = None
_http: LambdaHandler | None = None


def app() -> Flask:
    """The container's Flask app, built on first use."""
    global _app, _http
    with _lock:
        if _app is None:
            _app = create_app()
            _http = make_lambda_handler(_app, binary_support=True)
        return _app


def reset() -> None:
    """Close and forget the container's app (tests; a new configuration)."""
    global _app, _http
    with _lock:
        if _app is not None:
            bridge: Bridge = _app.extensions["bridge"]
            bridge.close()
        _app, _http = None, None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """API Gateway (v1 or v2) or ALB event in, proxy response out."""
    app()
    assert _http is not None
    return _http(event, context)


def _seconds_left(context: Any) -> float:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return remaining() / 1000.0 if callable(remaining) else DEFAULT_BUDGET


def scheduled(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Take due job steps within this invocation's time, then sweep expired jobs."""
    service = app().extensions["bridge"].service
    stop_at = time.monotonic() + _seconds_left(context) - SAFETY_SECONDS
    steps = 0
    while time.monotonic() < stop_at:
        due = service.store.due_jobs(service.clock(), 25)
        for job_id in due:
            if time.monotonic() >= stop_at:
                break
            if service.advance(job_id) is not None:
                steps += 1
        if not due:
            if not service.store.due_jobs(service.clock() + HORIZON, 1):
                break  # nothing before the next tick: stop paying for an idle function
            time.sleep(min(IDLE_WAIT, max(0.0, stop_at - time.monotonic())))
    return {"steps": steps, "swept": service.sweep()}
