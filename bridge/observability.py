"""Logs, request ids and metrics.

- Logs are JSON lines with the request id of the HTTP request (or the job id of a
  background step) and whatever ``extra`` fields the call site passes. A filter redacts
  every configured secret and anything that looks like a bearer token or a signed link,
  whatever logger emitted it.
- The request id comes from the caller's ``X-Request-Id`` (when sane) or is made up, and is
  sent on to every upstream call.
- Metrics are Prometheus counters and histograms (``/metrics``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

HTTP_REQUESTS = Counter(
    "bridge_http_requests_total", "HTTP requests answered.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram("bridge_http_request_seconds", "HTTP request latency.", ["route"])
UPSTREAM_CALLS = Counter(
    "bridge_upstream_requests_total", "Calls to upstreams, by outcome.", ["backend", "outcome"]
)
UPSTREAM_RETRIES = Counter("bridge_upstream_retries_total", "Upstream retries.", ["backend"])
JOBS_FINISHED = Counter("bridge_jobs_finished_total", "Jobs that ended.", ["backend", "state"])
QUEUE_DEPTH = Gauge(
    "bridge_queue_depth", "Unfinished jobs whose next step is due now (sampled at scrape)."
)
JOB_SECONDS = Histogram(
    "bridge_job_duration_seconds",
    "Time from job creation to its end.",
    ["backend", "state"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)


def new_request_id(offered: str | None = None) -> str:
    """Use the caller's id when it is sane, else make one up."""
    if offered and _SANE_ID.match(offered):
        return offered
    return uuid.uuid4().hex


_TOKEN_PATTERNS = [
    re.compile(r"(?i)\b(bearer|jwt|basic)\s+[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)([?&](?:jwt|token|access_token|signature|X-Amz-Signature)=)[^&\s\"']+"),
    re.compile(r"/v1/downloads/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
]


class RedactingFilter(logging.Filter):
    """Replace configured secrets and token-looking strings in every record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        text = _TOKEN_PATTERNS[0].sub(lambda m: f"{m.group(1)} [redacted]", text)
        text = _TOKEN_PATTERNS[1].sub(lambda m: f"{m.group(1)}[redacted]", text)
        return _TOKEN_PATTERNS[2].sub("/v1/downloads/[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(
    secrets: Iterable[str] = (), level: str = "INFO", json_lines: bool = True
) -> RedactingFilter:
    """Send the root logger's records, redacted, to stderr (JSON lines by default)."""
    handler = _BridgeHandler(sys.stderr)
    handler.setFormatter(
        JSONFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _BridgeHandler)]:
        root.removeHandler(existing)  # configuring twice replaces, never duplicates
    root.addHandler(handler)
    root.setLevel(level)
    return redactor


class _BridgeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so it can replace its own)."""
