"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from handlers.auth import bridge
from handlers.errors import problem

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """The process can serve: the store and the artifact store answer."""
    checks: dict[str, str] = {}
    the_bridge = bridge()
    for name, ping in (("store", the_bridge.store.ping), ("artifacts", the_bridge.artifacts.ping)):
        try:
            ping()
            checks[name] = "ok"
        except Exception as exc:  # a readiness probe reports, it does not raise
            checks[name] = f"failing: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return jsonify({"status": "ok", "checks": checks})
    return problem(503, "Not ready", "A dependency is failing.", "not_ready", checks=checks)
