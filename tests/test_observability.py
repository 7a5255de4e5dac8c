"""Logs carry request ids and never a secret; metrics count what happened."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import pytest
import requests

from bridge.bootstrap import configured_secrets
from bridge.observability import JSONFormatter, RedactingFilter
from bridge.sandbox.suite import SandboxSuite
from tests.conftest import ACME_KEY, GLOBEX_KEY


def test_redacting_filter_hides_secrets_tokens_and_links() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RedactingFilter(["s3cr3t-value"]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "token %s and Bearer abcdefghijkl",
            "s3cr3t-value",
            extra={
                "url": "https://x/dl?jwt=eyJhbGci.x.y&b=1",
                "link": "http://b/v1/downloads/k1.eyJq.c2ln/f.pdf",
            },
        )
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    text = json.dumps(line)
    assert "s3cr3t-value" not in text
    assert "abcdefghijkl" not in text
    assert "eyJhbGci" not in text
    assert "k1.eyJq.c2ln" not in text
    assert line["level"] == "warning"


def test_no_configured_secret_is_ever_logged(
    start_bridge: Any, suite: SandboxSuite, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the production level (urllib3's DEBUG URLs are not on)
    bridge = start_bridge(signing_keys=[{"id": "k1", "secret": "link-signing-secret-" + "x" * 20}])
    session = bridge.session()
    # A success, an upstream failure, auth failures, a bad link: every path logs something.
    ok = session.post(
        f"{bridge.url}/v1/exports",
        headers={"Prefer": "wait=15"},
        json={"format": "pdf", "source": {"pageId": "1002"}},
    ).json()
    assert ok["state"] == "complete"
    suite.scroll_dc.inject(401, times=1, path_contains="/exports")
    failed = session.post(
        f"{bridge.url}/v1/exports", json={"format": "pdf", "source": {"pageId": "1003"}}
    ).json()
    requests.get(f"{bridge.url}/v1/exports/{ok['id']}", headers={"Authorization": "Bearer nope"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        states = {
            session.get(f"{bridge.url}/v1/exports/{j['id']}").json()["state"] for j in (ok, failed)
        }
        if states <= {"complete", "failed"}:
            break
        time.sleep(0.05)
    link = session.get(f"{bridge.url}/v1/exports/{ok['id']}").json()["download"]["url"]
    requests.get(link)

    secrets = [*configured_secrets(bridge.bridge.settings), ACME_KEY, GLOBEX_KEY]
    assert "sandbox-pat" in secrets
    token = link.rsplit("/", 2)[1]
    logged = "\n".join(
        record.getMessage() + " " + json.dumps({k: str(v) for k, v in vars(record).items()})
        for record in caplog.records
    )
    assert logged  # something was logged
    for secret in [*secrets, token]:
        assert secret not in logged


def test_request_ids_are_echoed_and_sent_upstream(start_bridge: Any, suite: SandboxSuite) -> None:
    bridge = start_bridge(start_worker=False)
    response = bridge.session().post(
        f"{bridge.url}/v1/exports",
        json={"format": "pdf", "source": {"pageId": "1002"}},
        headers={"X-Request-Id": "trace-123"},
    )
    assert response.headers["X-Request-Id"] == "trace-123"
    generated = bridge.session().get(f"{bridge.url}/healthz").headers["X-Request-Id"]
    assert len(generated) == 32
    bogus = (
        bridge.session()
        .get(f"{bridge.url}/healthz", headers={"X-Request-Id": "x" * 500})
        .headers["X-Request-Id"]
    )
    assert bogus != "x" * 500


def test_metrics_count_requests_and_upstream_calls(start_bridge: Any) -> None:
    bridge = start_bridge()
    session = bridge.session()
    job = session.post(
        f"{bridge.url}/v1/exports",
        json={"format": "pdf", "source": {"pageId": "1002"}},
        headers={"Prefer": "wait=15"},
    ).json()
    assert job["state"] == "complete"
    text = requests.get(f"{bridge.url}/metrics").text
    assert 'bridge_http_requests_total{method="POST",route="/v1/exports",status="201"}' in text
    assert 'bridge_upstream_requests_total{backend="scroll-rest",outcome="200"}' in text
    assert 'bridge_jobs_finished_total{backend="scroll-rest",state="complete"}' in text


def test_queue_depth_counts_due_jobs(start_bridge: Any) -> None:
    bridge = start_bridge(start_worker=False)
    for page in ("1001", "1002"):
        bridge.session().post(
            f"{bridge.url}/v1/exports", json={"format": "pdf", "source": {"pageId": page}}
        )
    text = requests.get(f"{bridge.url}/metrics").text
    assert "bridge_queue_depth 2.0" in text


def test_configure_logging_installs_one_redacting_json_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bridge.observability import configure_logging

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging(["tenant-secret-123"])
        configure_logging(["tenant-secret-123"])  # again: replaces, does not duplicate
        added = [h for h in root.handlers if h not in before]
        assert len(added) == 1
        logging.getLogger("bridge.test").warning("leaking tenant-secret-123?")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["message"] == "leaking [redacted]?"
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
