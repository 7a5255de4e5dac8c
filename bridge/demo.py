"""``export-bridge demo``: the sandbox and a bridge on loopback, and real exports through them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.bootstrap import build_bridge
from bridge.client import BridgeClient
from bridge.config import hash_api_key, load_settings, new_api_key
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.suite import SandboxSuite
from handlers import create_app

# (label, request) pairs the demo runs, one per backend it can show.
DEMO_EXPORTS: list[tuple[str, dict[str, Any]]] = [
    (
        "Scroll PDF (REST, Data Center)",
        {
            "backend": "scroll-rest",
            "source": {"pageId": "1001", "scope": "descendants"},
            "format": "pdf",
        },
    ),
    (
        "Scroll Word (REST, sync export)",
        {
            "backend": "scroll-rest",
            "source": {"pageId": "1002"},
            "format": "docx",
            "options": {"mode": "sync"},
        },
    ),
    (
        "Scroll HTML (macro, Confluence Cloud, as user 557058:alice)",
        {
            "backend": "scroll-macro",
            "source": {"pageId": "1001"},
            "format": "html",
            "asUser": "557058:alice",
        },
    ),
    (
        "Content Exporter PDF (Remote API, US region)",
        {
            "backend": "content-exporter",
            "source": {"pageId": "1001", "scope": "descendants"},
            "format": "pdf",
            "options": {
                "tocTitle": "Contents",
                "pageSettings": {"size": "A4", "orientation": "LANDSCAPE"},
            },
        },
    ),
    (
        "Forge Markdown (a page tree as one ZIP)",
        {
            "backend": "forge-markdown",
            "source": {"pageId": "1001", "scope": "descendants"},
            "format": "markdown",
            "options": {"includeAttachments": True},
        },
    ),
]


def run_demo(workdir: Path, say: Callable[[str], None]) -> None:
    """Run every demo export and check each file; raise on the first failure."""
    api_key = new_api_key()
    with SandboxSuite() as suite:
        say(f"sandbox upstreams: {', '.join(f'{n} {s.url}' for n, s in suite.servers.items())}")
        server = ServerThread()
        settings = load_settings(
            public_url=server.url,
            database_url=f"sqlite:///{workdir / 'bridge.sqlite3'}",
            artifacts_url=f"file:{workdir / 'artifacts'}",
            encryption_key_file=str(workdir / "encryption.key"),
            allow_loopback_upstreams=True,  # the sandbox upstreams are on loopback
            poll_interval=0.5,
            tenants=[
                {
                    "id": "demo",
                    "api_keys": [hash_api_key(api_key)],
                    "backends": suite.tenant_backends(),
                }
            ],
        )
        bridge = build_bridge(settings)
        server.app = create_app(bridge=bridge)
        with server:
            say(f"bridge:            {server.url}  (state in {workdir})")
            client = BridgeClient(server.url, api_key)
            for label, request in DEMO_EXPORTS:
                say(f"\n== {label}")
                say(f"POST /v1/exports {request}")
                job = client.start(request)
                say(f"  -> 202 job {job['id']} ({job['backend']}, {job['state']})")
                job = client.wait(
                    job["id"], lambda j: say(f"  {j['state']:>9} {j['progress']:3d}%  {j['phase']}")
                )
                link = job["download"]
                target = workdir / link["filename"]
                size = client.download(link["url"], target)
                say(f"  signed link {link['url'][:70]}... (expires {link['expiresAt']})")
                say(f"  downloaded {size} bytes -> {target}  [{_describe(target)}]")
        bridge.close()
    say("\ndemo complete: every export went through the bridge end to end.")


def _describe(path: Path) -> str:
    head = path.read_bytes()[:8]
    if head.startswith(b"%PDF-"):
        return "PDF document"
    if head.startswith(b"PK"):
        return "ZIP container (DOCX / zipped HTML)"
    return "text"
