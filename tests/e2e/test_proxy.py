"""Scripts written for the vendors' APIs work against the bridge's proxy routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.sandbox.suite import DEMO_TEMPLATES, SandboxSuite
from tests.conftest import ACME_KEY, GLOBEX_KEY
from tests.vendor_clients import ScrollScript


def test_a_scroll_script_exports_through_the_bridge(
    start_bridge: Any, suite: SandboxSuite, tmp_path: Path
) -> None:
    bridge = start_bridge()
    script = ScrollScript(f"{bridge.url}/proxy/scroll", ACME_KEY, servlet="scroll-pdf")
    target = script.export("1002", DEMO_TEMPLATES["pdf"], tmp_path)
    assert target.read_bytes().startswith(b"%PDF-")
    assert target.name.endswith(".pdf") and "/" not in target.name
    # The upstream was called with the tenant's own credentials, not the caller's.
    assert suite.scroll_dc.calls.count("POST", "/exports") == 1


def test_a_dc_script_with_basic_auth_that_resends_it_on_download(
    start_bridge: Any, tmp_path: Path
) -> None:
    bridge = start_bridge()
    script = ScrollScript(
        f"{bridge.url}/proxy/scroll", ("admin", ACME_KEY), servlet="scroll-office"
    )
    target = script.export("1002", DEMO_TEMPLATES["docx"], tmp_path, resend_auth_on_download=True)
    assert target.read_bytes().startswith(b"PK")
    assert target.suffix == ".docx"


def test_export_sync_returns_the_file(start_bridge: Any) -> None:
    bridge = start_bridge()
    script = ScrollScript(f"{bridge.url}/proxy/scroll", ACME_KEY, servlet="scroll-html")
    response = script.export_sync("1001", DEMO_TEMPLATES["html"])
    assert response.status_code == 200
    assert response.content.startswith(b"PK")
    assert "attachment" in response.headers["Content-Disposition"]


def test_vendor_shaped_errors(start_bridge: Any) -> None:
    bridge = start_bridge()
    prefix = f"{bridge.url}/proxy/scroll/scroll-pdf/api/public/1"
    script = ScrollScript(f"{bridge.url}/proxy/scroll", ACME_KEY)
    unauthorized = script.session.get(
        f"{prefix}/exports/x/status", headers={"Authorization": "Bearer wrong"}
    )
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {"status": 401, "message": "The credentials are not valid."}
    missing = script.session.get(f"{prefix}/exports/nope/status")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    bad = script.session.post(f"{prefix}/exports", json={"pageId": "abc", "templateId": "t"})
    assert bad.status_code == 400 and "pageId" in bad.json()["message"]
    product = script.session.post(
        f"{bridge.url}/proxy/scroll/scroll-nope/api/public/1/exports",
        json={"pageId": "1", "templateId": "t"},
    )
    assert product.status_code == 404


def test_cancel_and_tenant_isolation(start_bridge: Any, suite: SandboxSuite) -> None:
    suite.scroll_engine.job_seconds = 60
    bridge = start_bridge()
    script = ScrollScript(f"{bridge.url}/proxy/scroll", ACME_KEY)
    job_id = script.session.post(
        f"{script.prefix}/exports",
        json={"pageId": "1002", "scope": "current", "templateId": DEMO_TEMPLATES["pdf"]},
    ).json()["jobId"]
    other = ScrollScript(f"{bridge.url}/proxy/scroll", GLOBEX_KEY)
    assert other.session.get(f"{other.prefix}/exports/{job_id}/status").status_code == 404
    assert other.cancel(job_id) == 404
    assert script.cancel(job_id) == 204
    status = script.session.get(f"{script.prefix}/exports/{job_id}/status").json()
    assert status["status"] == "cancelled"
    assert status["downloadUrl"] is None


CEX_BODY = {
    "pageSettings": {"size": "A4", "orientation": "PORTRAIT"},
    "margins": [{"top": 1, "bottom": 1, "right": 0.5, "left": 0.5}],
    "unit": "IN",
    "tocLevel": 6,
    "tocTitle": "Table of Contents",
    "tocMode": "FLAT",
    "fontResize": True,
    "headingNumbering": False,
    "pageNumbersArea": {"numbersFrom": "COVER_PAGE", "numbersTo": "BACK_COVER_PAGE"},
    "outputFormat": "PDF_MERGE",
    "exportType": "ALL_CHILD",
    "labels": None,
    "selectedContentIdList": [],
    "someFutureField": "ignored",
}


def test_a_content_exporter_script_exports_through_the_bridge(start_bridge: Any) -> None:
    from tests.vendor_clients import ContentExporterScript

    bridge = start_bridge()
    script = ContentExporterScript(f"{bridge.url}/proxy/content-exporter", ACME_KEY)
    download = script.export("1001", CEX_BODY)
    assert download.status_code == 200
    assert download.content.startswith(b"%PDF-")


def test_content_exporter_proxy_errors(start_bridge: Any) -> None:
    import requests

    bridge = start_bridge()
    base = f"{bridge.url}/proxy/content-exporter/api/remoteExport"
    no_key = requests.post(f"{base}/1001/init", json={"rootContentId": 1001})
    assert no_key.status_code == 401 and no_key.json()["status"] == 401
    mismatch = requests.post(
        f"{base}/1001/init", json={"rootContentId": 1002}, headers={"CEX-API-KEY": ACME_KEY}
    )
    assert mismatch.status_code == 400
    unknown = requests.get(
        f"{base}/poll", params={"hash": "nope"}, headers={"CEX-API-KEY": ACME_KEY}
    )
    assert unknown.status_code == 404
