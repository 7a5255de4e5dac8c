"""Fault injection at the wire: a WSGI middleware in front of a sandbox upstream.

Faults are queued per path substring and used up in order. Unlike the sandboxes' own
``inject`` (which answers with a status), these break the HTTP exchange itself: bodies
cut short of their Content-Length, connections dropped mid-body, answers too slow for the
bridge's timeout, and bodies that are not what they claim to be.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Fault:
    kind: str  # "truncate" | "sleep" | "body"
    path_contains: str
    times: int = 1
    seconds: float = 0.0
    status: str = "200 OK"
    body: bytes = b""
    content_type: str = "application/json"


class Faulty:
    """Wrap *app*; :meth:`add` schedules faults for matching requests."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.faults: list[Fault] = []
        self.lock = threading.Lock()
        self.hits: list[str] = []

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def _take(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.path_contains in path and fault.times > 0:
                    fault.times -= 1
                    self.hits.append(f"{fault.kind}:{path}")
                    return fault
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        fault = self._take(environ.get("PATH_INFO", ""))
        if fault is None:
            return self.app(environ, start_response)
        if fault.kind == "sleep":
            time.sleep(fault.seconds)
            return self.app(environ, start_response)
        if fault.kind == "body":
            start_response(
                fault.status,
                [("Content-Type", fault.content_type), ("Content-Length", str(len(fault.body)))],
            )
            return [fault.body]
        if fault.kind == "truncate":
            return self._truncated(environ, start_response)
        raise ValueError(fault.kind)

    def _truncated(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Pass the real answer through, but stop after half of its body."""
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, capture))
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], [*headers, ("Content-Length", str(len(body)))])

        def cut() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            raise ConnectionResetError("fault: connection dropped mid-body")

        return cut()
