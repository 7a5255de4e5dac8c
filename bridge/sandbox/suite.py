"""All sandbox upstreams at once, on loopback, sharing one page catalogue and clock.

``export-bridge sandbox`` and ``export-bridge demo`` run this; tests use it too. It
also writes the tenant configuration that points a bridge at these upstreams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bridge.sandbox.harness import Clock, ServerThread
from bridge.sandbox.pages import PageTree, demo_tree
from bridge.sandbox.scroll_engine import ScrollJobEngine
from bridge.sandbox.scroll_rest import ScrollRestSandbox

SCROLL_PAT = "sandbox-pat"
DEMO_TEMPLATES = {
    "docx": "com.k15t.scroll.office.default-template-1",
    "pdf": "com.k15t.scroll.pdf.default-template-documentation",
    "html": "com.k15t.scroll.html.helpcenter",
}


@dataclass
class SandboxSuite:
    """The running sandbox upstreams and the servers they listen on."""

    pages: PageTree = field(default_factory=demo_tree)
    clock: Clock = time.time
    job_seconds: float = 1.0
    servers: dict[str, ServerThread] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scroll_engine = ScrollJobEngine(self.pages, self.clock, job_seconds=self.job_seconds)
        self.scroll_dc = ScrollRestSandbox(self.scroll_engine, flavor="dc", pats=(SCROLL_PAT,))

    def start(self) -> SandboxSuite:
        """Serve every upstream on its own loopback port."""
        apps = {"scroll-dc": self.scroll_dc.app}
        for name, app in apps.items():
            self.servers[name] = ServerThread(app).start()
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()

    def __enter__(self) -> SandboxSuite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, name: str) -> str:
        return self.servers[name].url

    def tenant_backends(self) -> dict[str, dict[str, Any]]:
        """The ``backends`` table of a tenant that uses every sandbox upstream."""
        return {
            "scroll-rest": {
                "flavor": "dc",
                "base_url": f"{self.url('scroll-dc')}{self.scroll_dc.context_path}",
                "auth": {"type": "bearer", "token": SCROLL_PAT},
                "templates": DEMO_TEMPLATES,
            },
        }
