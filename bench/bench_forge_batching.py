"""Forge Markdown batching: a 1,000-page tree export, batches in parallel vs one at a time.

Runs the ``forge-markdown`` backend (walk → batches → merge) against the loopback Forge and
Confluence v2 sandboxes. The Forge sandbox really sleeps ``--page-cost`` seconds per exported
page, so the batches' wall time dominates as it would against the real app. Prints both
wall times and their ratio.

    .venv/bin/python bench/bench_forge_batching.py [--pages 1000] [--page-cost 0.005]
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from typing import Any

from bridge.backends.base import BackendServices, JobContext
from bridge.backends.forge_markdown import ForgeMarkdownBackend
from bridge.config import load_settings
from bridge.http import UpstreamClient
from bridge.models import ExportRequest
from bridge.sandbox.confluence_v2 import ConfluenceV2Sandbox
from bridge.sandbox.forge_markdown import ForgeMarkdownSandbox
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.pages import wide_tree

TOKEN = "bench-token"
ROOT = "500000"


def export_once(forge_url: str, v2_url: str, parallelism: int, pages: int) -> float:
    """Export the whole tree through the backend; return the wall time in seconds."""
    settings = load_settings()
    services = BackendServices(
        settings, time.time, lambda name: UpstreamClient(name, settings.retry, timeout=60)
    )
    backend = ForgeMarkdownBackend(services)
    raw: dict[str, Any] = {
        "cloud_id": "sandbox-cloud-id",
        "api_url": forge_url,
        "token": TOKEN,
        "confluence_url": f"{v2_url}/ex/confluence/sandbox-cloud-id",
        "parallelism": parallelism,
    }
    ctx = JobContext("bench", "bench", backend.parse_config(raw, "forge-markdown"))
    request = ExportRequest.model_validate(
        {"format": "markdown", "source": {"pageId": ROOT, "scope": "descendants"}}
    )
    started = time.perf_counter()
    handle = backend.start(ctx, request).handle
    with backend.fetch(ctx, handle) as download:
        data = b"".join(download.chunks)
    elapsed = time.perf_counter() - started
    backend.close()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = sum(name.endswith(".md") for name in archive.namelist())
    if files != pages:
        raise SystemExit(f"expected {pages} page files, got {files}")
    return elapsed


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--page-cost", type=float, default=0.005, help="seconds per page")
    parser.add_argument("--parallelism", type=int, default=4)
    args = parser.parse_args()

    tree = wide_tree(ROOT, pages=args.pages)
    forge = ForgeMarkdownSandbox(
        tree, tokens=(TOKEN,), page_cost_seconds=args.page_cost, sleep_page_cost=True
    )
    v2 = ConfluenceV2Sandbox(tree, tokens=(TOKEN,))
    with ServerThread(forge.app) as forge_server, ServerThread(v2.app) as v2_server:
        parallel = export_once(forge_server.url, v2_server.url, args.parallelism, args.pages)
        calls = len(forge.exports)
        sequential = export_once(forge_server.url, v2_server.url, 1, args.pages)
    print(
        f"{args.pages} pages, {calls} batches, {args.page_cost * 1000:g} ms/page: "
        f"parallelism {args.parallelism} {parallel:.2f} s, sequential {sequential:.2f} s, "
        f"speed-up x{sequential / parallel:.2f}"
    )


if __name__ == "__main__":
    main()
