"""End to end over loopback: callers → bridge → Confluence Cloud sandbox (Scroll macros, as a
user, with impersonation tokens from the OAuth sandbox) → signed download."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
import time
import zipfile
from collections import Counter
from typing import Any

import pytest
import requests

from bridge.config import hash_api_key
from bridge.models import Caller
from bridge.sandbox.suite import USERS, SandboxSuite
from tests.conftest import ACME_KEY, RunningBridge
from tests.e2e.test_scroll_rest import start_export, wait_for
from tests.test_scroll_macro_backend import forge_token

ALICE, BOB = USERS
CONVERT = "/rest/api/contentbody/convert"


def macro_export(
    bridge: RunningBridge,
    fmt: str = "pdf",
    user: str | None = ALICE,
    page: str = "1002",
    **extra: Any,
) -> str:
    body: dict[str, Any] = {"backend": "scroll-macro", "format": fmt, "source": {"pageId": page}}
    if user is not None:
        body["asUser"] = user
    response = start_export(bridge, {**body, **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def start_with(start_bridge: Any, suite: SandboxSuite, **macro: Any) -> RunningBridge:
    """A bridge whose tenant's scroll-macro table has *macro* overrides."""
    backends = suite.tenant_backends()
    backends["scroll-macro"].update(macro)
    tenant = {"id": "acme", "api_keys": [hash_api_key(ACME_KEY)], "backends": backends}
    return start_bridge(tenants=[tenant])


def upstream_job(bridge: RunningBridge, job_id: str) -> str:
    job = bridge.bridge.store.get_job(job_id)
    assert job is not None
    return str(job.handle["jobId"])


def convert_posts(suite: SandboxSuite, route: str = "") -> int:
    return sum(1 for c in suite.cloud.calls if c.method == "POST" and f"{CONVERT}{route}" in c.path)


CHECKS = {
    "pdf": lambda data: data.startswith(b"%PDF-"),
    "docx": lambda data: "word/document.xml" in zipfile.ZipFile(io.BytesIO(data)).namelist(),
    "html": lambda data: "index.html" in zipfile.ZipFile(io.BytesIO(data)).namelist(),
}


@pytest.mark.parametrize("fmt", ["docx", "pdf", "html"])
def test_each_product_exports_as_each_user_byte_for_byte(
    start_bridge: Any, suite: SandboxSuite, fmt: str
) -> None:
    bridge = start_bridge()
    jobs = {
        user: macro_export(bridge, fmt, user, page)
        for user, page in zip(USERS, ("1001", "1002"), strict=True)
    }
    for user, job_id in jobs.items():
        job = wait_for(bridge, job_id)
        assert job["state"] == "complete", job
        assert job["backend"] == "scroll-macro" and job["asUser"] == user
        upstream = upstream_job(bridge, job_id)
        assert suite.scroll_engine.owner_of(upstream) == user  # Scroll ran it as that user
        expected, filename = suite.scroll_engine.file(upstream)
        assert job["download"]["filename"] == filename
        fetched = requests.get(job["download"]["url"])
        assert fetched.status_code == 200
        assert fetched.content == expected.read()
        assert CHECKS[fmt](fetched.content)
    renders = {c.account_id for c in suite.cloud.calls if CONVERT in c.path}
    assert renders == set(USERS)
    assert suite.cloud.renderer.issuing_apps == Counter({"confluence-export-bridge": 2})


def test_one_token_request_per_user_across_many_exports(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    ids = [macro_export(bridge, "pdf", user) for user in (ALICE, BOB, ALICE, ALICE, BOB, ALICE)]
    assert all(wait_for(bridge, job_id)["state"] == "complete" for job_id in ids)
    assert suite.oauth.token_requests == Counter({ALICE: 1, BOB: 1})


def test_a_bridge_clock_beyond_the_leeway_is_reported_clearly(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge(clock=lambda: time.time() + 25)
    job = wait_for(bridge, macro_export(bridge))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_rejected"
    assert "issued-at" in job["error"]["message"]
    assert "clock" in job["error"]["message"]
    assert convert_posts(suite) == 2  # the rejected render was retried once, not more


def test_a_stale_issued_at_is_retried_once_with_a_fresh_timestamp(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    # The bridge's clock lags until Confluence has seen its first render.
    bridge = start_bridge(clock=lambda: time.time() - (0 if suite.cloud.calls else 25))
    job = wait_for(bridge, macro_export(bridge))
    assert job["state"] == "complete", job
    first_two = [c.path for c in suite.cloud.calls if c.method == "POST"][:2]
    assert first_two == [f"/wiki{CONVERT}/async/export_view"] * 2


def test_scroll_error_element_fails_the_job_with_scrolls_message(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    job = wait_for(bridge, macro_export(bridge, template="no-such-template"))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_rejected"
    assert job["error"]["upstreamStatus"] == 400
    assert "Unknown template: no-such-template" in job["error"]["message"]


def test_a_failed_scroll_export_fails_the_job(start_bridge: Any, suite: SandboxSuite) -> None:
    suite.scroll_engine.failing_pages.add("1003")
    bridge = start_bridge()
    job = wait_for(bridge, macro_export(bridge, page="1003"))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_job_failed"
    assert "step 2 of 3" in job["error"]["message"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("<p>Confluence rendered <span>no macro</span></p>", "no_result"),
        ('<div class="result"><code class="success">{"jobId":</code></div>', "invalid_json"),
        ('<div class="result"><code class="success">["x"]</code></div>', "not_an_object"),
        ("", "unparseable_html"),
        # XXE and billion laughs: refused before any entity is resolved or expanded.
        (
            '<!DOCTYPE html [<!ENTITY x SYSTEM "file:///etc/passwd">]><div class="result">'
            '<code class="success">{"jobId":"&x;"}</code></div>',
            "unparseable_html",
        ),
        (
            '<!DOCTYPE z [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;">]>'
            '<div class="result"><code class="success">{"jobId":"&d;"}</code></div>',
            "unparseable_html",
        ),
    ],
)
def test_unreadable_macro_output_fails_the_job(
    start_bridge: Any, suite: SandboxSuite, value: str, reason: str
) -> None:
    bridge = start_bridge()
    answer = {"asyncId": "a-1", "status": "COMPLETED", "value": value}
    suite.cloud.inject(200, times=2, path_contains=CONVERT, body=answer)
    job = wait_for(bridge, macro_export(bridge))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_bad_response"
    assert reason in job["error"]["message"]
    # ...and the bridge keeps serving.
    assert wait_for(bridge, macro_export(bridge))["state"] == "complete"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"unexpected": True}, "no asyncId"),
        ("<html>a proxy's error page</html>", "invalid JSON"),
    ],
)
def test_unreadable_convert_answers_fail_the_job(
    start_bridge: Any, suite: SandboxSuite, body: Any, words: str
) -> None:
    bridge = start_bridge()
    suite.cloud.inject(200, path_contains=f"{CONVERT}/async/export_view", body=body)
    job = wait_for(bridge, macro_export(bridge))
    assert job["state"] == "failed"
    assert words in job["error"]["message"]


@pytest.mark.parametrize(
    ("status", "times", "state", "words"),
    [
        (401, 4, "failed", "refused the user token for '557058:alice'"),
        (403, 1, "failed", "HTTP 403"),
        (404, 4, "failed", "HTTP 404"),
        (429, 1, "complete", ""),
        (500, 2, "complete", ""),
        (503, 2, "complete", ""),
    ],
)
def test_confluence_http_errors(
    start_bridge: Any, suite: SandboxSuite, status: int, times: int, state: str, words: str
) -> None:
    bridge = start_bridge()
    suite.cloud.inject(status, times=times, path_contains=CONVERT)
    job = wait_for(bridge, macro_export(bridge), timeout=20)
    assert job["state"] == state, job
    if state == "failed":
        assert job["error"]["upstreamStatus"] == status
        assert words in job["error"]["message"]
    assert bridge.session().get(f"{bridge.url}/healthz").status_code == 200


def test_a_refused_token_is_renewed_once(start_bridge: Any, suite: SandboxSuite) -> None:
    bridge = start_bridge()
    suite.cloud.inject(401, times=1, path_contains=CONVERT)
    job = wait_for(bridge, macro_export(bridge))
    assert job["state"] == "complete", job
    assert suite.oauth.token_requests == Counter({ALICE: 2})


def test_auto_falls_back_to_the_sync_convert_where_async_is_absent(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    suite.cloud.inject(404, times=1, path_contains=f"{CONVERT}/async/export_view")
    first = wait_for(bridge, macro_export(bridge))
    assert first["state"] == "complete", first
    async_posts = convert_posts(suite, "/async/")
    second = wait_for(bridge, macro_export(bridge, "docx"))
    assert second["state"] == "complete", second
    assert convert_posts(suite, "/async/") == async_posts  # remembered: straight to sync
    assert convert_posts(suite, "/export_view") > 0


def test_sync_only_tenant_never_uses_the_async_route(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_with(start_bridge, suite, convert="sync")
    assert wait_for(bridge, macro_export(bridge))["state"] == "complete"
    assert convert_posts(suite, "/async/") == 0
    assert not any(c.method == "GET" and CONVERT in c.path for c in suite.cloud.calls)


def test_a_user_the_site_does_not_know_fails_clearly(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    bridge = start_bridge()
    job = wait_for(bridge, macro_export(bridge, user="557058:mallory"))
    assert job["state"] == "failed"
    assert job["error"]["upstreamStatus"] == 400
    assert "557058:mallory" in job["error"]["message"]
    assert "unknown subject" in job["error"]["message"]
    assert convert_posts(suite) == 0


def test_an_export_without_a_user_is_refused_at_creation(start_bridge: Any) -> None:
    bridge = start_bridge()
    response = start_export(
        bridge, {"backend": "scroll-macro", "format": "pdf", "source": {"pageId": "1002"}}
    )
    assert response.status_code == 422  # well-formed, but this backend cannot do it so
    assert [e["field"] for e in response.json()["errors"]] == ["asUser"]
    # Without a user, "auto" passes the macro route by.
    auto = start_export(bridge, {"format": "pdf", "source": {"pageId": "1002"}})
    assert auto.json()["backend"] == "scroll-rest"


def test_a_download_url_to_an_unlisted_host_fails_the_job(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    elsewhere = suite.url("confluence-cloud").replace("127.0.0.1", "localhost")
    suite.cloud.scroll_base_url = elsewhere
    bridge = start_bridge()
    job = wait_for(bridge, macro_export(bridge))
    assert job["state"] == "failed"
    assert "may not fetch from: 'localhost'" in job["error"]["message"]
    assert not any(c.path.startswith("/scroll/") for c in suite.cloud.calls)


def test_configured_download_hosts_are_allowed(start_bridge: Any, suite: SandboxSuite) -> None:
    elsewhere = suite.url("confluence-cloud").replace("127.0.0.1", "localhost")
    suite.cloud.scroll_base_url = elsewhere
    bridge = start_with(start_bridge, suite, download_hosts=[elsewhere.split("//")[1]])
    assert wait_for(bridge, macro_export(bridge))["state"] == "complete"


def test_the_token_never_shows_in_logs_jobs_or_the_store(
    start_bridge: Any, suite: SandboxSuite, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bridge = start_bridge()
    done = wait_for(bridge, macro_export(bridge))
    suite.cloud.inject(403, path_contains=CONVERT)
    failed = wait_for(bridge, macro_export(bridge, "docx"))
    assert (done["state"], failed["state"]) == ("complete", "failed")

    database = bridge.bridge.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT key, value FROM kv WHERE key LIKE 'impersonation:%'").fetchall()
        jobs = " ".join(row[0] for row in db.execute("SELECT data FROM jobs"))
    box = bridge.bridge.extras["secret_box"]
    tokens = [
        json.loads(box.open(value))["access_token"] for key, value in rows if "lock" not in key
    ]
    assert len(tokens) == 1
    token = tokens[0]
    assert suite.oauth.verify_access_token(token) is not None  # the real, live token
    assert ALICE not in " ".join(key for key, _ in rows)  # keys are hashes
    assert all(token not in value for _, value in rows)  # sealed
    assert token not in jobs
    assert token not in json.dumps([done, failed])
    assert caplog.records and token not in caplog.text


def test_a_forge_callers_user_token_carries_the_job_without_a_grant(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    token = forge_token(suite, BOB)
    bridge = start_bridge()
    caller = Caller(
        "acme",
        user=BOB,
        scheme="forge",
        product_token=token,
        product_base_url=suite.url("confluence-cloud"),
    )
    body = {"backend": "scroll-macro", "format": "docx", "source": {"pageId": "1002"}}
    job, _ = bridge.bridge.service.create(caller, body)
    assert token not in json.dumps(job.to_dict())  # sealed with the job
    done = wait_for(bridge, job.id)
    assert done["state"] == "complete", done
    assert suite.scroll_engine.owner_of(upstream_job(bridge, job.id)) == BOB
    assert sum(suite.oauth.token_requests.values()) == 1  # the caller's own, nothing minted


def test_identical_exports_started_together_all_complete(
    start_bridge: Any, suite: SandboxSuite
) -> None:
    """A double click (or ten): identical renders in the same second must not void each
    other's results (Confluence drops a result when an identical uncached request comes)."""
    import concurrent.futures

    bridge = start_bridge()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(lambda _: macro_export(bridge), range(10)))
    jobs = [wait_for(bridge, job_id) for job_id in ids]
    assert [job["state"] for job in jobs] == ["complete"] * 10, [j["error"] for j in jobs]
