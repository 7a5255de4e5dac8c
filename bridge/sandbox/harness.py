"""Run sandbox applications on loopback and control their time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

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
