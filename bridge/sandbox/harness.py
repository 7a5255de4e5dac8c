"""Run sandbox applications on loopback and control their time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

Clock = Callable[[], float]
"""A source of the current Unix time in seconds (``time.time`` in production)."""


class ManualClock:
    """A clock that only moves when told to; starts at the real current time."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds*."""
        with self._lock:
            self._now += seconds


class _QuietHandler(WSGIRequestHandler):
    """Serve without an access-log line per request (the demo and tests stay readable)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class ServerThread:
    """Serve a WSGI app on ``127.0.0.1`` on a free port in a daemon thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, app: Any = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server: BaseWSGIServer = make_server(
            host, port, self._dispatch, threaded=True, request_handler=_QuietHandler
        )
        # Request threads must not keep the process alive at exit.
        setattr(self._server, "daemon_threads", True)  # noqa: B010
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name=f"sandbox:{self.port}",
            daemon=True,
        )

    def _dispatch(self, environ: Any, start_response: Any) -> Any:
        # The app may be set after the port is known (its config needs its own URL).
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"starting"]
        return self.app(environ, start_response)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- request log and fault injection, shared by the sandbox upstreams ------------------


@dataclass(frozen=True)
class RecordedCall:
    """One request a sandbox upstream received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Fault:
    status: int
    remaining: int
    path_contains: str
    retry_after: float | str | None
    body: str | None


def _default_error_body(status: int) -> Any:
    return {"code": status, "message": "Injected fault"}


class FaultInjector:
    """Faults queued by tests, answered before the upstream looks at the request.

    *error_body* renders the upstream's own error object for an injected status.
    """

    def __init__(self, error_body: Callable[[int], Any] = _default_error_body) -> None:
        self._error_body = error_body
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def add(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str = "",
        retry_after: float | str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next *times* requests whose path contains *path_contains* with *status*
        (and *body* instead of the upstream's error object, and a ``Retry-After``)."""
        with self._lock:
            self._faults.append(_Fault(status, times, path_contains, retry_after, body))

    def take(self, path: str) -> Response | None:
        """Consume the first fault matching *path* and build its response, if any."""
        with self._lock:
            fault = next((f for f in self._faults if f.path_contains in path), None)
            if fault is None:
                return None
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.remove(fault)
        if fault.body is None:
            response = json_response(self._error_body(fault.status), fault.status)
        else:
            response = Response(fault.body, status=fault.status)
        if fault.retry_after is not None:
            value = fault.retry_after
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            response.headers["Retry-After"] = str(value)
        return response


def json_response(payload: Any, status: int = 200) -> Response:
    """Serialize *payload* as an ``application/json`` response."""
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def instrument(
    app: Flask,
    calls: list[RecordedCall],
    faults: FaultInjector,
    error_body: Callable[[int, str], Any],
) -> None:
    """Record every request, answer injected faults first, and render HTTP errors as JSON."""

    @app.before_request
    def _record_and_inject() -> Response | None:
        calls.append(
            RecordedCall(
                method=request.method,
                path=request.path,
                query=request.args.to_dict(),
                headers=dict(request.headers.items()),
                body=request.get_data(),
            )
        )
        return faults.take(request.path)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = json_response(error_body(status, error.name), status)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response
