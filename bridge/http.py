"""Every outbound HTTP call: bounded, retried politely, and mapped to the bridge's errors.

One place turns ``requests`` exceptions and unhappy status codes into
:class:`~bridge.errors.UpstreamError` subclasses, so nothing from ``requests`` escapes a
backend. Retries use capped, jittered exponential backoff and honour ``Retry-After``
(seconds or an HTTP date); a wait longer than ``max_inline_wait`` is not slept but handed
back to the caller as ``retry_after`` so the job is rescheduled instead of blocking a thread.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import ipaddress
import json
import math
import random
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from bridge.config import RetrySettings
from bridge.errors import (
    UpstreamError,
    UpstreamRejectedError,
    UpstreamResponseError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from bridge.observability import REQUEST_ID, UPSTREAM_CALLS, UPSTREAM_RETRIES

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Statuses worth another try; 500 only for idempotent calls."""
DOWNLOAD_CHUNK = 256 * 1024


def parse_retry_after(value: str | None, now: float, cap: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped.

    Unparseable values give ``None``; negative ones give 0; huge ones give *cap*.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def backoff_delay(attempt: int, policy: RetrySettings, rand: Callable[[], float]) -> float:
    """Full-jitter exponential backoff for retry number *attempt* (1-based)."""
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2.0 ** (attempt - 1))
    return ceiling * rand()


@dataclass(frozen=True)
class HostPolicy:
    """Which hosts an upstream-supplied URL may point at (SSRF protection)."""

    allowed: frozenset[str]
    """``host`` or ``host:port`` entries; ``*.example.com`` matches subdomains."""
    allow_loopback: bool = False

    def check(self, url: str, backend: str) -> None:
        """:raises UpstreamResponseError: if *url* is not http(s) to an allowed host."""
        # Parse as urllib3 will when requests connects, and refuse anything ambiguous
        # (a backslash or whitespace makes parsers disagree about the host).
        try:
            if any(c in url for c in "\\ \t\r\n") or not url.isprintable():
                raise ValueError("ambiguous characters")
            parts = parse_url(url)
            host = (parts.host or "").lower().strip("[]")
            port = parts.port
        except (ValueError, LocationParseError):
            host, port, parts = "", None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise UpstreamResponseError(
                f"upstream gave an unusable URL {url[:200]!r}", backend=backend
            )
        netloc = f"{host}:{port}" if port else host
        for entry in self.allowed:
            entry = entry.lower()
            matches = entry in (host, netloc) or (
                entry.startswith("*.") and host.endswith(entry[1:])
            )
            if matches and (self.allow_loopback or not _is_internal(host)):
                return
        raise UpstreamResponseError(
            f"upstream pointed the bridge at a host it may not fetch from: {host!r}",
            backend=backend,
        )


def _is_internal(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback or address.is_link_local


class UpstreamClient:
    """A ``requests`` session for one backend, with timeouts, retries and error mapping."""

    def __init__(
        self,
        backend: str,
        policy: RetrySettings,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        user_agent: str = "confluence-export-bridge",
    ) -> None:
        self.backend = backend
        self.policy = policy
        self.timeout = (connect_timeout, timeout)
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent
        # The session is shared by every job and tenant of a backend: it must never keep
        # cookies. Backends that need them (a DC session, a load balancer's affinity)
        # keep them per job and send them explicitly.
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._sleep = sleep
        self._clock = clock
        self._rand = rand

    def request(
        self,
        method: str,
        url: str,
        *,
        expected: Collection[int] = (200,),
        idempotent: bool | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        """Send a request, retrying what is safe to retry, and return an *expected* response.

        Non-idempotent calls (POST by default) are retried only when the upstream cannot
        have acted: connection refused, 429, or 503.

        :raises UpstreamError: a subclass saying what went wrong, with the upstream status.
        """
        if idempotent is None:
            idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        kwargs.setdefault("timeout", self.timeout)
        request_id = REQUEST_ID.get()
        if request_id:
            kwargs["headers"] = {"X-Request-Id": request_id, **(kwargs.get("headers") or {})}
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                UPSTREAM_RETRIES.labels(self.backend).inc()
            try:
                response = self.session.request(method, url, stream=stream, **kwargs)
            except requests.exceptions.RequestException as exc:
                error = self._map_exception(exc)
                UPSTREAM_CALLS.labels(self.backend, error.code).inc()
                can_retry = idempotent or (
                    isinstance(exc, requests.exceptions.ConnectionError)
                    and not isinstance(exc, requests.exceptions.ReadTimeout)
                )
                if not (can_retry and error.retryable):
                    raise error from exc
                self._wait_or_raise(attempt, None, error)
                continue
            UPSTREAM_CALLS.labels(self.backend, str(response.status_code)).inc()
            if response.status_code in expected:
                return response
            error = self._error_for(response)
            retryable_status = response.status_code in (429, 503) or (
                idempotent and response.status_code in RETRY_STATUSES
            )
            response.close()
            if not retryable_status:
                raise error
            self._wait_or_raise(attempt, error.retry_after, error)

    def _wait_or_raise(self, attempt: int, retry_after: float | None, error: UpstreamError) -> None:
        if attempt >= self.policy.attempts:
            raise error
        delay = (
            retry_after
            if retry_after is not None
            else backoff_delay(attempt, self.policy, self._rand)
        )
        if delay > self.policy.max_inline_wait:
            raise error
        self._sleep(delay)

    def _error_for(self, response: requests.Response) -> UpstreamError:
        status = response.status_code
        detail = _summarize_body(response)
        message = f"{self.backend} upstream answered HTTP {status}" + (
            f": {detail}" if detail else ""
        )
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), self._clock(), self.policy.retry_after_cap
            )
            if status == 504:
                return UpstreamTimeoutError(
                    message, backend=self.backend, upstream_status=status, retry_after=retry_after
                )
            return UpstreamUnavailableError(
                message, backend=self.backend, upstream_status=status, retry_after=retry_after
            )
        if 400 <= status < 500:
            return UpstreamRejectedError(message, backend=self.backend, upstream_status=status)
        return UpstreamResponseError(message, backend=self.backend, upstream_status=status)

    def _map_exception(self, exc: requests.exceptions.RequestException) -> UpstreamError:
        name = type(exc).__name__
        if isinstance(exc, requests.exceptions.Timeout):
            return UpstreamTimeoutError(
                f"{self.backend} upstream timed out ({name})", backend=self.backend
            )
        if isinstance(
            exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
        ):
            return UpstreamUnavailableError(
                f"{self.backend} upstream unreachable ({name})", backend=self.backend
            )
        return UpstreamResponseError(
            f"{self.backend} upstream request failed ({name})", backend=self.backend
        )

    @contextlib.contextmanager
    def mapped_errors(self) -> Iterator[None]:
        """Map ``requests`` exceptions raised inside the block (e.g. while streaming)."""
        try:
            yield
        except requests.exceptions.RequestException as exc:
            raise self._map_exception(exc) from exc

    def iter_body(self, response: requests.Response) -> Iterator[bytes]:
        """Stream a response body in chunks; fail if it ends short of ``Content-Length``."""
        expected = response.headers.get("Content-Length")
        received = 0
        with response, self.mapped_errors():
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                received += len(chunk)
                yield chunk
        if expected is not None and expected.isdigit() and received != int(expected):
            raise UpstreamUnavailableError(
                f"{self.backend} download was cut short: {received} of {expected} bytes",
                backend=self.backend,
            )

    def json(self, response: requests.Response) -> Any:
        """Decode a JSON body or raise :class:`UpstreamResponseError`."""
        try:
            return response.json()
        except ValueError:
            raise UpstreamResponseError(
                f"{self.backend} upstream sent invalid JSON (HTTP {response.status_code}): "
                f"{_summarize_body(response)}",
                backend=self.backend,
                upstream_status=response.status_code,
            ) from None

    def close(self) -> None:
        self.session.close()


def _summarize_body(response: requests.Response, limit: int = 2048) -> str:
    """A short, single-line excerpt of an error body for messages; reads at most *limit* bytes."""
    try:
        raw = next(response.iter_content(limit), b"")
    except (requests.exceptions.RequestException, RuntimeError, StopIteration):
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error_description", "error", "detail"):
            if isinstance(data.get(key), str):
                return " ".join(data[key].split())[:300]
    return " ".join(text.split())[:300]
