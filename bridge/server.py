"""Run the WSGI app under gunicorn, configured in code (no gunicorn.conf needed)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from bridge.config import Settings


class BridgeServer(BaseApplication):  # type: ignore[misc]
    """A gunicorn application that builds the bridge in each worker (after the fork)."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        self.app: Any = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("worker_exit", self._worker_exit)

    def load(self) -> Any:
        from handlers import create_app

        self.app = create_app(self.settings)
        return self.app

    def _worker_exit(self, _server: Any, _worker: Any) -> None:
        # Graceful shutdown: gunicorn has let in-flight requests finish; now let the
        # worker threads finish the job steps they hold (a step cut short would only
        # wait for its lease to run out, but there is no need to).
        if self.app is not None:
            self.app.extensions["bridge"].close()


def gunicorn_options(bind: str, workers: int, threads: int) -> dict[str, Any]:
    """Production defaults: threads for I/O-bound polling, keep-alive above a load
    balancer's 60 s idle timeout, graceful shutdown that lets requests finish."""
    return {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 120,
        "graceful_timeout": 30,
        "keepalive": 75,
        # No gunicorn access log: its request line would carry download tokens. The app
        # logs each request itself with the route pattern instead (handlers/metrics.py).
        "accesslog": None,
        "forwarded_allow_ips": "127.0.0.1",
    }


def run_gunicorn(settings: Settings, *, bind: str, workers: int, threads: int) -> None:
    """Serve until stopped, logging JSON lines with every configured secret redacted."""
    from bridge.bootstrap import configured_secrets
    from bridge.observability import configure_logging

    configure_logging(configured_secrets(settings))
    BridgeServer(settings, gunicorn_options(bind, workers, threads)).run()
