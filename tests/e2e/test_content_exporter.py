"""End to end over loopback: callers → bridge → Content Exporter Remote API sandboxes (US, EU)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable
from typing import Any

import pytest
import requests

from bridge.backends.content_exporter import (
    DEFAULTS,
    ContentExporterConfig,
    ContentExporterOptions,
    init_body,
)
from bridge.config import hash_api_key
from bridge.errors import ValidationError
from bridge.models import ExportRequest
from bridge.sandbox.suite import CEX_KEY, SandboxSuite
from tests.conftest import ACME_KEY, RunningBridge
from tests.e2e.test_scroll_rest import start_export, wait_for

Start = Callable[..., RunningBridge]


def bridge_for(start_bridge: Start, suite: SandboxSuite, **cex: Any) -> RunningBridge:
    """A bridge whose content-exporter configuration is the suite's, with *cex* on top."""
    backends = suite.tenant_backends()
    backends["content-exporter"] = {**backends["content-exporter"], **cex}
    tenant = {"id": "acme", "api_keys": [hash_api_key(ACME_KEY)], "backends": backends}
    return start_bridge(tenants=[tenant])


def export(bridge: RunningBridge, **body: Any) -> dict[str, Any]:
    response = start_export(bridge, {"backend": "content-exporter", **body})
    assert response.status_code == 202, response.text
    return wait_for(bridge, response.json()["id"])


def init_calls(suite: SandboxSuite, region: str) -> list[dict[str, Any]]:
    sandbox = suite.content_exporter[region]
    return [json.loads(c.body) for c in sandbox.calls if c.path.endswith("/init")]


@pytest.mark.parametrize("region", ["us", "eu"])
def test_pdf_export_in_each_region(start_bridge: Start, suite: SandboxSuite, region: str) -> None:
    bridge = bridge_for(start_bridge, suite, url=suite.url(f"content-exporter-{region}"))
    job = export(bridge, format="pdf", source={"pageId": "1001", "scope": "descendants"})

    assert job["state"] == "complete", job
    data = requests.get(job["download"]["url"], timeout=5).content
    assert data.startswith(b"%PDF-")
    assert job["download"]["filename"] == "Product Handbook.pdf"
    assert job["download"]["contentType"] == "application/pdf"
    other = "eu" if region == "us" else "us"
    assert suite.content_exporter[other].calls == []
    calls = suite.content_exporter[region].calls
    assert {c.headers["Cex-Api-Key"] for c in calls} == {CEX_KEY}
    assert calls[0].path == "/api/remoteExport/1001/init"
    assert {c.query.get("hash") for c in calls[1:]} == set(suite.content_exporter[region].jobs)
    assert init_calls(suite, region) == [
        {**DEFAULTS, "rootContentId": 1001, "outputFormat": "PDF_MERGE", "exportType": "ALL_CHILD"}
    ]


@pytest.mark.parametrize(
    ("fmt", "output_format", "check"),
    [
        ("docx", "WORD_MERGE", lambda d: "word/document.xml" in zipfile.ZipFile(d).namelist()),
        ("html", "HTML_ZIP", lambda d: len(zipfile.ZipFile(d).namelist()) == 1),
    ],
)
def test_word_and_html_follow_the_format_and_scope(
    start_bridge: Start, suite: SandboxSuite, fmt: str, output_format: str, check: Any
) -> None:
    suite.content_exporter["us"].hash_response = "text"  # the hash as a plain-text body
    job = export(bridge_for(start_bridge, suite), format=fmt, source={"pageId": "1002"})
    assert job["state"] == "complete", job
    assert check(io.BytesIO(requests.get(job["download"]["url"], timeout=5).content))
    (body,) = init_calls(suite, "us")
    assert (body["outputFormat"], body["exportType"]) == (output_format, "CURRENT_PAGE")


def test_profile_then_options_shape_the_init_body(start_bridge: Start, suite: SandboxSuite) -> None:
    profile = {
        "name": "Corporate",
        "tocTitle": "Inhalt",
        "unit": "CM",
        "pageSettings": {"size": "LETTER", "orientation": "PORTRAIT"},
        "exportType": "DIRECT_CHILD",
    }
    options = {
        "tocLevel": 3,
        "pageSettings": {"size": "A3", "orientation": "LANDSCAPE"},
        "heading_numbering": True,
        "selectedContentIdList": [],
    }
    job = export(
        bridge_for(start_bridge, suite),
        format="pdf",
        source={"pageId": "1001", "scope": "descendants"},
        template=profile,
        options=options,
    )
    assert job["state"] == "complete", job
    (body,) = init_calls(suite, "us")
    assert "name" not in body
    assert body["tocTitle"] == "Inhalt" and body["unit"] == "CM"  # from the profile
    assert body["pageSettings"] == {"size": "A3", "orientation": "LANDSCAPE"}  # options win
    assert body["tocLevel"] == 3 and body["headingNumbering"] is True
    assert body["exportType"] == "DIRECT_CHILD"  # the profile's, not the scope's
    assert body["margins"] == DEFAULTS["margins"]  # the built-in default
    assert body["rootContentId"] == 1001


def test_a_configured_profile_is_named_as_the_template(
    start_bridge: Start, suite: SandboxSuite
) -> None:
    bridge = bridge_for(start_bridge, suite, profiles={"brief": {"tocLevel": 2}})
    job = export(bridge, format="pdf", source={"pageId": "1002"}, template="brief")
    assert job["state"] == "complete", job
    assert init_calls(suite, "us")[0]["tocLevel"] == 2


def test_running_exports_show_the_upstream_phase(start_bridge: Start, suite: SandboxSuite) -> None:
    suite.content_exporter["us"].export_seconds = 30
    bridge = bridge_for(start_bridge, suite)
    response = start_export(
        bridge, {"backend": "content-exporter", "format": "pdf", "source": {"pageId": "1002"}}
    )
    url = f"{bridge.url}/v1/exports/{response.json()['id']}"
    deadline = time.monotonic() + 5
    phases: set[str] = set()
    while "collecting pages" not in phases and time.monotonic() < deadline:
        phases.add(bridge.session().get(url).json()["phase"])
        time.sleep(0.05)
    assert "collecting pages" in phases
    bridge.session().delete(url)


def test_a_rotated_key_fails_the_job_clearly(start_bridge: Start, suite: SandboxSuite) -> None:
    bridge = bridge_for(start_bridge, suite, api_key="old-key")
    job = export(bridge, format="pdf", source={"pageId": "1002"})
    assert job["state"] == "failed"
    assert job["error"]["upstreamStatus"] == 403
    assert "refused the API key" in job["error"]["message"]


def test_a_page_the_admin_cannot_see_fails_the_job(
    start_bridge: Start, suite: SandboxSuite
) -> None:
    suite.content_exporter["us"].restricted.add("1003")
    job = export(bridge_for(start_bridge, suite), format="pdf", source={"pageId": "1003"})
    assert job["state"] == "failed"
    assert job["error"]["upstreamStatus"] == 404
    assert "cannot see it" in job["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"format": "pdf", "source": {"spaceKey": "DOCS"}}, 422, None),
        ({"format": "markdown", "source": {"pageId": "1002"}}, 422, None),
        (
            {
                "format": "pdf",
                "source": {"pageId": "1002"},
                "options": {"outputFormat": "WORD_MERGE"},
            },
            422,
            "options.outputFormat",
        ),
        ({"format": "pdf", "source": {"pageId": "1002"}, "template": "nope"}, 422, "template"),
        (
            {"format": "pdf", "source": {"pageId": "1002"}, "options": {"tocLevel": 9}},
            422,
            "options.tocLevel",
        ),
    ],
)
def test_requests_it_cannot_serve_are_refused_up_front(
    start_bridge: Start, suite: SandboxSuite, body: dict[str, Any], status: int, field: str | None
) -> None:
    response = start_export(
        bridge_for(start_bridge, suite), {"backend": "content-exporter", **body}
    )
    assert response.status_code == status, response.text
    if field is not None:
        assert [e["field"] for e in response.json()["errors"]] == [field]
    assert suite.content_exporter["us"].calls == []


# --- unit level: regions and the init body ---------------------------------------------------


def test_regions_resolve_to_the_documented_application_urls() -> None:
    def config(**values: Any) -> ContentExporterConfig:
        return ContentExporterConfig.model_validate({"api_key": "k", **values})

    assert config().application_url == "https://content-exporter-new.addon.meta-inf.hu"
    eu = config(region="eu").application_url
    assert eu == "https://content-exporter-new.addon-eu.meta-inf.hu"
    assert config(region="eu", url="https://proxy.example/cex/").application_url == (
        "https://proxy.example/cex"
    )
    with pytest.raises(ValueError):
        config(region="ap")


def test_a_profile_output_format_must_match_the_requested_format() -> None:
    config = ContentExporterConfig.model_validate({"api_key": "k"})
    request = ExportRequest.model_validate(
        {"format": "docx", "source": {"pageId": 7}, "template": {"outputFormat": "PDF_MERGE"}}
    )
    with pytest.raises(ValidationError) as caught:
        init_body(config, request, ContentExporterOptions())
    assert [e.field for e in caught.value.errors] == ["template.outputFormat"]
    fine = request.model_copy(update={"template": {"outputFormat": "WORD_ZIP"}})
    assert init_body(config, fine, ContentExporterOptions())["outputFormat"] == "WORD_ZIP"
