"""End to end over loopback: callers → bridge → Forge Markdown (and Confluence v2) sandboxes."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from bridge.backends.base import JobContext
from bridge.backends.forge_markdown import ENV_IDS, ForgeMarkdownBackend, ForgeMarkdownConfig
from bridge.config import hash_api_key
from bridge.errors import ConfigurationError
from bridge.sandbox.forge_markdown import ForgeMarkdownSandbox
from bridge.sandbox.pages import demo_tree, wide_tree
from bridge.sandbox.suite import FORGE_TOKEN, SandboxSuite
from tests.conftest import ACME_KEY, RunningBridge
from tests.e2e.test_scroll_rest import start_export, wait_for

ROOT = "500000"


@pytest.fixture
def suite() -> Iterator[SandboxSuite]:
    """The sandbox with the demo pages, a 1,000-page tree and a page with a non-ASCII title."""
    pages = demo_tree()
    pages.pages.update(wide_tree(ROOT, pages=1000).pages)
    pages.add("1005", "Über Café", parent_id="1003", body="Grüße aus Köln.")
    with SandboxSuite(pages=pages, job_seconds=0.3) as running:
        yield running


Start = Callable[..., RunningBridge]


def bridge_for(start_bridge: Start, suite: SandboxSuite, **forge: Any) -> RunningBridge:
    """A bridge whose forge-markdown configuration is the suite's, with *forge* on top."""
    backends = suite.tenant_backends()
    backends["forge-markdown"] = {**backends["forge-markdown"], "retry_backoff": 0.01, **forge}
    backends["forge-markdown"] = {
        k: v for k, v in backends["forge-markdown"].items() if v is not None
    }
    tenant = {"id": "acme", "api_keys": [hash_api_key(ACME_KEY)], "backends": backends}
    return start_bridge(tenants=[tenant])


def run(bridge: RunningBridge, source: dict[str, Any], **options: Any) -> dict[str, Any]:
    body = {"backend": "forge-markdown", "format": "markdown", "source": source}
    response = start_export(bridge, {**body, "options": options})
    assert response.status_code == 202, response.text
    return wait_for(bridge, response.json()["id"], timeout=30)


def fetched(job: dict[str, Any]) -> bytes:
    assert job["state"] == "complete", job
    response = requests.get(job["download"]["url"], timeout=10)
    assert response.status_code == 200
    return response.content


def entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


def unlimited_export(suite: SandboxSuite, page_id: str, attachments: bool = False) -> bytes:
    """What one bulkExport without Forge's limits would produce, for comparison."""
    unlimited = ForgeMarkdownSandbox(
        suite.pages, tokens=(FORGE_TOKEN,), max_pages=5000, max_response_bytes=1 << 30
    )
    unlimited.attachments = suite.forge.attachments
    response = unlimited.app.test_client().post(
        f"/svc/confluence/{unlimited.cloud_id}/apps/{unlimited.app_id}_{ENV_IDS['production']}"
        "/bulkExport",
        json={
            "pageId": page_id,
            "bulkExport": True,
            "maxPages": 5000,
            "includeAttachments": attachments,
        },
        headers={"Authorization": f"Bearer {FORGE_TOKEN}"},
    )
    assert response.status_code == 200
    return base64.b64decode(response.get_json()["zipBase64"])


# --- small exports -------------------------------------------------------------------------


def test_single_page_is_utf8_markdown(start_bridge: Start, suite: SandboxSuite) -> None:
    job = run(bridge_for(start_bridge, suite), {"pageId": "1005"})
    assert fetched(job).decode("utf-8") == "# Über Café\n\nGrüße aus Köln.\n"
    assert job["download"]["filename"] == "page-1005.md"
    assert job["download"]["contentType"] == "text/markdown; charset=utf-8"
    call = suite.forge.calls[-1]
    assert call.path.endswith(f"_{ENV_IDS['production']}/singleExport")
    assert call.headers["Authorization"] == f"Bearer {FORGE_TOKEN}"


def test_single_page_with_attachments_is_a_zip(start_bridge: Start, suite: SandboxSuite) -> None:
    suite.forge.add_attachment("1002", "shot.png", b"\x89PNG shot")
    job = run(bridge_for(start_bridge, suite), {"pageId": "1002"}, includeAttachments=True)
    assert entries(fetched(job)) == [
        ("getting-started.md", b"# Getting Started\n\nInstall, then run.\n"),
        ("attachments/shot.png", b"\x89PNG shot"),
    ]
    assert job["download"]["filename"] == "getting-started.zip"


def test_small_tree_is_one_call_with_attachments(start_bridge: Start, suite: SandboxSuite) -> None:
    suite.forge.add_attachment("1001", "cover.png", b"cover")
    suite.forge.add_attachment("1004", "rows.csv", b"a,b")
    bridge = bridge_for(start_bridge, suite, include_attachments=True)
    job = run(bridge, {"pageId": "1001", "scope": "descendants"})
    assert entries(fetched(job)) == entries(unlimited_export(suite, "1001", attachments=True))
    assert job["download"]["filename"] == "product-handbook.zip"
    assert [(e.endpoint, e.page_ids[0]) for e in suite.forge.exports] == [("bulkExport", "1001")]


def test_space_export(start_bridge: Start, suite: SandboxSuite) -> None:
    job = run(bridge_for(start_bridge, suite), {"spaceKey": "DOCS"})
    names = [name for name, _ in entries(fetched(job))]
    assert "product-handbook.md" in names and "product-handbook/architecture/uber-cafe.md" in names
    assert job["download"]["filename"] == "DOCS.zip"


def test_space_at_the_page_cap_fails_rather_than_being_cut(
    start_bridge: Start, suite: SandboxSuite
) -> None:
    job = run(bridge_for(start_bridge, suite), {"spaceKey": "BIG"})
    assert job["state"] == "failed"
    assert "at least 100 pages" in job["error"]["message"]


# --- batching past 100 pages ----------------------------------------------------------------


def test_thousand_page_tree_is_batched_and_merged(start_bridge: Start, suite: SandboxSuite) -> None:
    job = run(bridge_for(start_bridge, suite), {"pageId": ROOT, "scope": "descendants"})
    merged = entries(fetched(job))

    assert merged == entries(unlimited_export(suite, ROOT))
    assert sum(name.endswith(".md") for name, _ in merged) == 1000
    assert "big-root/page-500001/page-500011/page-500111.md" in dict(merged)
    assert job["download"]["filename"] == "big-root.zip"
    exports = suite.forge.exports
    assert len(exports) == 91 and max(len(e.page_ids) for e in exports) <= 100
    assert all(e.status == 200 for e in exports)
    listings = [c for c in suite.confluence_v2.calls if c.path.endswith("/descendants")]
    assert len(listings) > 1 and all(c.path.startswith("/ex/confluence/") for c in listings)


def test_timed_out_batches_are_split(start_bridge: Start, suite: SandboxSuite) -> None:
    suite.forge.page_cost_seconds = 0.5  # more than 50 pages in a call overruns 25 s
    job = run(bridge_for(start_bridge, suite), {"pageId": ROOT, "scope": "descendants"})
    assert entries(fetched(job)) == entries(unlimited_export(suite, ROOT))
    statuses = [e.status for e in suite.forge.exports]
    assert statuses.count(424) == 1  # the one 100-page subtree
    assert all(len(e.page_ids) <= 50 for e in suite.forge.exports if e.status == 200)


def test_a_flaky_batch_is_retried(start_bridge: Start, suite: SandboxSuite) -> None:
    suite.forge.flaky("500005", 2)
    job = run(bridge_for(start_bridge, suite), {"pageId": ROOT, "scope": "descendants"})
    assert sum(name.endswith(".md") for name, _ in entries(fetched(job))) == 1000
    tries = [e.status for e in suite.forge.exports if "500005" in e.page_ids]
    assert tries == [500, 500, 200]


def test_a_batch_that_keeps_failing_fails_the_job_naming_pages(
    start_bridge: Start, suite: SandboxSuite
) -> None:
    suite.forge.fail_pages.add("500123")
    job = run(bridge_for(start_bridge, suite), {"pageId": ROOT, "scope": "descendants"})
    assert job["state"] == "failed"
    message = job["error"]["message"]
    assert "500123 'Page 500123'" in message and "Missing pages" in message
    assert "could not be exported" in message
    assert job["error"]["upstreamStatus"] == 500
    assert [e.status for e in suite.forge.exports if "500123" in e.page_ids] == [500, 500, 500]


# --- errors ----------------------------------------------------------------------------------


def _bad_token(suite: SandboxSuite) -> dict[str, Any]:
    return {"token": "expired-token"}


def _apis_off(suite: SandboxSuite) -> dict[str, Any]:
    suite.forge.rest_apis_enabled = False
    return {}


def _slow(suite: SandboxSuite) -> dict[str, Any]:
    suite.forge.page_cost_seconds = 30
    return {}


@pytest.mark.parametrize(
    ("page_id", "setup", "status", "words"),
    [
        ("1002", _bad_token, 401, "refused the OAuth token"),
        ("1002", _apis_off, 403, "App REST APIs are not enabled"),
        ("999999", lambda suite: {}, 404, "found no pages for page 999999"),
        ("1002", _slow, 424, "ran out of time"),
    ],
)
def test_upstream_statuses_become_clear_job_errors(
    start_bridge: Start,
    suite: SandboxSuite,
    page_id: str,
    setup: Callable[[SandboxSuite], dict[str, Any]],
    status: int,
    words: str,
) -> None:
    bridge = bridge_for(start_bridge, suite, **setup(suite))
    job = run(bridge, {"pageId": page_id})
    assert job["state"] == "failed"
    assert job["error"]["upstreamStatus"] == status
    assert words in job["error"]["message"]


def test_tree_walk_errors_are_clear(start_bridge: Start, suite: SandboxSuite) -> None:
    job = run(bridge_for(start_bridge, suite), {"pageId": "424242", "scope": "descendants"})
    assert job["state"] == "failed"
    assert "Reading the page tree from Confluence failed" in job["error"]["message"]
    assert job["error"]["upstreamStatus"] == 404


# --- routes, environments, tokens ------------------------------------------------------------


def test_site_gateway_route_and_staging_environment(
    start_bridge: Start, suite: SandboxSuite
) -> None:
    suite.forge.token_environments[FORGE_TOKEN] = "staging"
    bridge = bridge_for(
        start_bridge,
        suite,
        cloud_id=None,
        api_url=None,
        site_url=suite.url("forge"),
        environment="staging",
    )
    job = run(bridge, {"pageId": "1002"})
    assert fetched(job).startswith(b"# Getting Started")
    call = suite.forge.calls[-1]
    assert call.path == (
        f"/gateway/api/svc/confluence/apps/{suite.forge.app_id}_{ENV_IDS['staging']}/singleExport"
    )
    assert suite.forge.exports[-1].environment == "staging"


def test_urls_for_both_forms_and_an_explicit_environment_id() -> None:
    api = ForgeMarkdownConfig(cloud_id="c1d", token="t")  # type: ignore[arg-type]
    assert api.app_url("bulkExport") == (
        f"https://api.atlassian.com/svc/confluence/c1d/apps/{api.app_id}_"
        f"{ENV_IDS['production']}/bulkExport"
    )
    assert api.v2_base == "https://api.atlassian.com/ex/confluence/c1d"
    site = ForgeMarkdownConfig(site_url="https://acme.atlassian.net/wiki/", env_id="e-1")
    assert site.app_url("singleExport") == (
        f"https://acme.atlassian.net/gateway/api/svc/confluence/apps/{site.app_id}_e-1/singleExport"
    )
    assert site.v2_base == "https://acme.atlassian.net"
    with pytest.raises(ValueError, match="cloud_id"):
        ForgeMarkdownConfig()


def test_a_job_token_wins_over_the_configured_one() -> None:
    backend_token = ForgeMarkdownBackend._token
    config = ForgeMarkdownConfig(cloud_id="c", token="configured")  # type: ignore[arg-type]
    assert backend_token(JobContext("j", "t", config)) == "configured"
    with_user = JobContext("j", "t", config, secrets={"user_token": "users-own"})
    assert backend_token(with_user) == "users-own"
    with pytest.raises(ConfigurationError, match="no OAuth token"):
        backend_token(JobContext("j", "t", ForgeMarkdownConfig(cloud_id="c")))


def test_only_markdown_and_known_options(start_bridge: Start, suite: SandboxSuite) -> None:
    bridge = bridge_for(start_bridge, suite)
    pdf = start_export(
        bridge, {"backend": "forge-markdown", "format": "pdf", "source": {"pageId": "1002"}}
    )
    assert pdf.status_code == 422
    bad = start_export(
        bridge,
        {
            "backend": "forge-markdown",
            "format": "markdown",
            "source": {"pageId": "1002"},
            "options": {"maxPages": 5},
        },
    )
    assert bad.status_code == 422  # well-formed, but not an option this backend has
    assert [e["field"] for e in bad.json()["errors"]] == ["options.maxPages"]
