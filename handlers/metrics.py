"""``/metrics`` for Prometheus, and per-request ids, timing and counts."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from bridge.bootstrap import Bridge
from bridge.observability import (
    HTTP_REQUESTS,
    HTTP_SECONDS,
    QUEUE_DEPTH,
    REQUEST_ID,
    new_request_id,
)

bp = Blueprint("metrics", __name__)
log = logging.getLogger("bridge.access")


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus exposition of this process's metrics."""
    return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)


def _begin() -> None:
    g.started = time.perf_counter()
    g.request_id_token = REQUEST_ID.set(new_request_id(request.headers.get("X-Request-Id")))


def _end(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    seconds = time.perf_counter() - g.get("started", time.perf_counter())
    HTTP_SECONDS.labels(route).observe(seconds)
    log.info(
        "request",
        extra={
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "ms": round(seconds * 1000, 1),
        },
    )
    request_id = REQUEST_ID.get()
    if request_id:
        response.headers["X-Request-Id"] = request_id
    return response


def _teardown(_exc: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        REQUEST_ID.reset(token)


def bridge_of(app: Flask) -> Bridge:
    value: Bridge = app.extensions["bridge"]
    return value


def init_app(app: Flask) -> None:
    """Install request ids, timing and the ``/metrics`` route."""
    app.before_request(_begin)
    app.after_request(_end)
    app.teardown_request(_teardown)
    app.register_blueprint(bp)
    store, clock = bridge_of(app).store, bridge_of(app).service.clock
    QUEUE_DEPTH.set_function(lambda: len(store.due_jobs(clock(), 10_000)))
