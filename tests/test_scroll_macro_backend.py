"""The scroll-macro backend step by step against the sandbox: convert polling, error mapping,
the Forge user-token path, configuration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.atlassian_jwt import impersonation_assertion
from bridge.backends.base import BackendServices, Cancelled, JobContext, Ready, Running, Step
from bridge.backends.scroll_macro import MAX_LOST_RESULTS, ScrollMacroBackend, ScrollMacroConfig
from bridge.config import load_settings
from bridge.crypto import SecretBox, new_encryption_key
from bridge.errors import (
    ConfigurationError,
    UpstreamError,
    UpstreamJobFailedError,
    UpstreamRejectedError,
    UpstreamResponseError,
    UpstreamUnavailableError,
    ValidationError,
)
from bridge.http import UpstreamClient
from bridge.macro import MacroError, MacroResponseError
from bridge.models import ExportRequest
from bridge.sandbox.suite import DEMO_TEMPLATES, OAUTH_CLIENT_ID, SHARED_SECRET, USERS, SandboxSuite
from bridge.stores.sqlite import SQLiteStore

ALICE = USERS[0]
CONVERT = "/rest/api/contentbody/convert"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[ScrollMacroBackend]:
    settings = load_settings(
        encryption_key_file=str(tmp_path / "key"), allow_loopback_upstreams=True
    )
    services = BackendServices(
        settings=settings,
        clock=time.time,
        make_client=lambda name: UpstreamClient(name, settings.retry, sleep=lambda _: None),
        extras={
            "store": SQLiteStore(str(tmp_path / "store.sqlite3")),
            "secret_box": SecretBox([new_encryption_key()]),
            "sleep": lambda _: None,
        },
    )
    instance = ScrollMacroBackend(services)
    yield instance
    instance.close()


def config(suite: SandboxSuite, **overrides: Any) -> ScrollMacroConfig:
    table = {**suite.tenant_backends()["scroll-macro"], **overrides}
    return ScrollMacroConfig.model_validate(table)


def context(
    cfg: ScrollMacroConfig, user: str | None = ALICE, secrets: dict[str, str] | None = None
) -> JobContext:
    return JobContext("job-1", "acme", cfg, user, secrets or {})


def request(fmt: str = "pdf", page: str = "1002", **extra: Any) -> ExportRequest:
    body = {"backend": "scroll-macro", "format": fmt, "source": {"pageId": page}, "asUser": ALICE}
    return ExportRequest.model_validate({**body, **extra})


def run(backend: ScrollMacroBackend, ctx: JobContext, step: Step, limit: int = 40) -> Step:
    for _ in range(limit):
        if not isinstance(step, Running):
            return step
        time.sleep(0.05)
        step = backend.poll(ctx, step.handle)
    raise AssertionError(f"still running: {step}")


def calls(suite: SandboxSuite, method: str, part: str = CONVERT) -> int:
    return sum(1 for c in suite.cloud.calls if c.method == method and part in c.path)


def test_a_render_still_under_way_is_collected_at_the_next_step(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    suite.cloud.async_steps = 4
    ctx = context(config(suite, async_polls=2))
    step = backend.start(ctx, request())
    assert isinstance(step, Running) and step.phase == "starting"
    assert step.handle["pending"]["op"] == "start"
    assert (calls(suite, "POST"), calls(suite, "GET")) == (1, 2)
    step = backend.poll(ctx, step.handle)
    assert "pending" in step.handle  # 4 polls pass before it completes
    step = backend.poll(ctx, step.handle)
    assert "jobId" in step.handle and "pending" not in step.handle
    assert calls(suite, "POST") == 1  # collected, never rendered again


def test_a_render_result_confluence_forgot_is_rendered_again_a_few_times(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    ctx = context(config(suite))
    step = backend.start(ctx, request())
    assert "jobId" in step.handle
    suite.cloud.async_result_ttl = 0  # every result is gone before it is polled
    for lost in range(1, MAX_LOST_RESULTS + 1):
        step = backend.poll(ctx, step.handle)
        assert isinstance(step, Running) and step.handle["lost"] == lost
        assert "pending" not in step.handle
    with pytest.raises(UpstreamRejectedError, match="keeps losing") as info:
        backend.poll(ctx, step.handle)
    assert info.value.upstream_status == 404


def test_a_lost_status_render_recovers(backend: ScrollMacroBackend, suite: SandboxSuite) -> None:
    ctx = context(config(suite))
    step = backend.start(ctx, request())
    suite.cloud.async_result_ttl = 0
    step = backend.poll(ctx, step.handle)
    suite.cloud.async_result_ttl = 300
    assert isinstance(run(backend, ctx, step), Ready)


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        ({"status": "FAILED", "error": "Error parsing xhtml"}, UpstreamRejectedError, "parsing"),
        ({"status": "PAUSED"}, UpstreamResponseError, "unknown async render status 'PAUSED'"),
        ({"status": "COMPLETED"}, UpstreamResponseError, "no rendered value"),
        ({"status": "COMPLETED", "value": 7}, UpstreamResponseError, "no rendered value"),
    ],
)
def test_async_render_outcomes(
    backend: ScrollMacroBackend,
    suite: SandboxSuite,
    answer: dict[str, Any],
    error: type[UpstreamError],
    words: str,
) -> None:
    suite.cloud.inject(200, times=2, path_contains=CONVERT, body={"asyncId": "a-1", **answer})
    with pytest.raises(error, match=words) as info:
        backend.start(context(config(suite)), request())
    assert info.value.backend == "scroll-macro"


def test_rerunning_is_still_working(backend: ScrollMacroBackend, suite: SandboxSuite) -> None:
    suite.cloud.inject(
        200, times=4, path_contains=CONVERT, body={"asyncId": "a", "status": "RERUNNING"}
    )
    step = backend.start(context(config(suite)), request())
    assert isinstance(step, Running) and step.handle["pending"] == {"op": "start", "asyncId": "a"}


def test_scroll_trouble_inside_the_macro_is_worth_retrying(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    suite.scroll_engine.fail_next_start(500, "Scroll is busy")
    with pytest.raises(UpstreamUnavailableError) as info:
        backend.start(context(config(suite)), request())
    assert info.value.retryable and info.value.upstream_status == 500
    assert info.value.message == "Scroll could not start the export (status 500): Scroll is busy"


def test_a_job_scroll_forgot_is_a_clear_failure(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    ctx = context(config(suite))
    step = backend.start(ctx, request())
    handle = {**step.handle, "jobId": "no-such-job"}
    with pytest.raises(UpstreamRejectedError) as info:
        backend.poll(ctx, handle)
    assert info.value.upstream_status == 404
    assert "report the export's status" in info.value.message
    assert "no-such-job not found" in info.value.message


def test_a_job_cancelled_in_scroll_is_cancelled(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    suite.scroll_engine.job_seconds = 30
    ctx = context(config(suite))
    step = backend.start(ctx, request())
    suite.scroll_engine.cancel(step.handle["jobId"], ALICE)
    step = backend.poll(ctx, step.handle)
    assert isinstance(step, Cancelled) and "cancelled in Scroll" in step.message


def test_a_failed_scroll_export_is_a_job_failure(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    suite.scroll_engine.failing_pages.add("1003")
    ctx = context(config(suite))
    with pytest.raises(UpstreamJobFailedError, match="step 2 of 3"):
        run(backend, ctx, backend.start(ctx, request(page="1003")))


def test_progress_is_reported_while_scroll_works(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    suite.scroll_engine.job_seconds = 3
    ctx = context(config(suite))
    step = backend.start(ctx, request())
    time.sleep(1.2)
    step = backend.poll(ctx, step.handle)
    assert isinstance(step, Running)
    assert 30 <= step.progress <= 60 and step.phase == "exporting (step 2 of 3)"


def test_the_app_name_and_export_options_reach_scroll(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    ctx = context(config(suite, app_name="Acme Exporter", convert="sync"))
    step = backend.start(ctx, request("docx", options={"locale": "de-DE", "timeZone": "UTC"}))
    assert step.handle["exportRequest"] == {
        "pageId": "1002",
        "scope": "current",
        "templateId": DEMO_TEMPLATES["docx"],
        "locale": "de-DE",
        "timeZone": "UTC",
    }
    assert suite.cloud.renderer.issuing_apps["Acme Exporter"] == 1
    assert calls(suite, "POST", f"{CONVERT}/export_view") == 1
    # Confluence needs the page as context to check the user may view it.
    assert {c.query.get("contentIdContext") for c in suite.cloud.calls} == {"1002"}


def test_a_ready_handle_needs_no_upstream_call(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    step = backend.poll(context(config(suite)), {"downloadUrl": "https://x.exporter.k15t.app/f"})
    assert isinstance(step, Ready)
    assert suite.cloud.calls == []


# --- the Forge path: the caller's own user token ---------------------------------------------


def forge_token(suite: SandboxSuite, user: str = ALICE) -> str:
    now = int(time.time())
    assertion = impersonation_assertion(
        oauth_client_id=OAUTH_CLIENT_ID,
        account_id=user,
        base_url=suite.site_url,
        audience=suite.url("oauth"),
        shared_secret=SHARED_SECRET,
        now=now,
    )
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    return str(
        requests.post(f"{suite.url('oauth')}/oauth2/token", data=form).json()["access_token"]
    )


def forge_config(suite: SandboxSuite) -> ScrollMacroConfig:
    return ScrollMacroConfig(site_url=suite.site_url, templates=DEMO_TEMPLATES)


def test_a_forge_user_token_is_used_as_is(backend: ScrollMacroBackend, suite: SandboxSuite) -> None:
    token = forge_token(suite)
    secrets = {"user_token": token, "product_base_url": suite.url("confluence-cloud")}
    ctx = context(forge_config(suite), secrets=secrets)
    step = run(backend, ctx, backend.start(ctx, request("html")))
    assert isinstance(step, Ready)
    with backend.fetch(ctx, step.handle) as download:
        data = b"".join(download.chunks)
    expected, filename = suite.scroll_engine.file(step.handle["jobId"])
    assert data == expected.read() and download.filename == filename
    assert sum(suite.oauth.token_requests.values()) == 1  # only the caller's own


def test_a_forge_product_url_to_an_unlisted_host_is_refused(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    secrets = {"user_token": "t", "product_base_url": suite.url("oauth")}
    with pytest.raises(UpstreamResponseError, match="may not fetch from"):
        backend.start(context(forge_config(suite), secrets=secrets), request())
    assert suite.cloud.calls == [] and not suite.oauth.token_requests


def test_a_forge_token_without_its_base_url_is_refused(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    with pytest.raises(ValidationError) as info:
        backend.start(context(forge_config(suite), secrets={"user_token": "t"}), request())
    assert info.value.errors[0].field == "product_base_url"


def test_a_refused_forge_token_is_not_renewed(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    secrets = {"user_token": "expired", "product_base_url": suite.url("confluence-cloud")}
    with pytest.raises(UpstreamRejectedError, match="refused the user token") as info:
        backend.start(context(forge_config(suite), secrets=secrets), request())
    assert info.value.upstream_status == 401
    assert calls(suite, "POST") == 1


def test_without_a_connect_installation_or_forge_token_nothing_is_sent(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    with pytest.raises(ConfigurationError, match="no Connect installation"):
        backend.start(context(forge_config(suite)), request())
    assert suite.cloud.calls == []


def test_a_connect_job_without_a_user_is_refused(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    with pytest.raises(ValidationError) as info:
        backend.start(context(config(suite), user=None), request())
    assert info.value.errors[0].field == "asUser"


# --- validation and configuration ----------------------------------------------------------


def test_validation_at_creation(backend: ScrollMacroBackend, suite: SandboxSuite) -> None:
    cfg = config(suite, templates={})
    with pytest.raises(ValidationError) as info:
        backend.validate(cfg, request())
    assert [e.field for e in info.value.errors] == ["template"]
    with pytest.raises(ValidationError) as info:
        backend.validate(config(suite), request(options={"mode": "sync"}))
    assert [e.field for e in info.value.errors] == ["options.mode"]
    backend.validate(config(suite), request(template="tpl"))
    space = ExportRequest.model_validate(
        {"backend": "scroll-macro", "format": "pdf", "source": {"spaceKey": "DOCS"}}
    )
    assert "not a whole space" in (backend.unsupported(config(suite), space) or "")
    assert "markdown" in (backend.unsupported(config(suite), request("markdown")) or "")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"client_key": None}, "client_key, oauth_client_id and shared_secret"),
        ({"shared_secret": "short"}, "at least 32"),
        ({"site_url": "ftp://x"}, "http(s) URL"),
        ({"auth_server": "not a url"}, "http(s) URL"),
        ({"convert": "sometimes"}, "async"),
        ({"app_name": "tab\there"}, "printable"),
        ({"async_polls": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_configuration_is_refused(
    backend: ScrollMacroBackend, suite: SandboxSuite, overrides: dict[str, Any], words: str
) -> None:
    table = {**suite.tenant_backends()["scroll-macro"], **overrides}
    with pytest.raises(ValidationError) as info:
        backend.parse_config(table, "scroll-macro")
    assert words in " ".join(e.message for e in info.value.errors)


def test_configuration_is_normalized(suite: SandboxSuite) -> None:
    cfg = config(suite, site_url=suite.site_url + "/", scopes=[" read ", "write", ""])
    assert cfg.site_url == suite.site_url
    assert cfg.scopes == ["READ", "WRITE"]
    assert SHARED_SECRET not in repr(cfg)


def test_the_backend_builds_without_a_store_but_refuses_to_mint(suite: SandboxSuite) -> None:
    settings = load_settings()
    services = BackendServices(
        settings=settings, clock=time.time, make_client=lambda n: UpstreamClient(n, settings.retry)
    )
    lonely = ScrollMacroBackend(services)
    with pytest.raises(ConfigurationError, match="store"):
        lonely.start(context(config(suite)), request())
    lonely.close()


def test_macro_errors_belong_to_the_bridges_error_tree() -> None:
    assert isinstance(MacroError(400, "x"), UpstreamRejectedError)
    assert MacroError(403, "no").upstream_status == 403
    assert isinstance(MacroResponseError("no_result", ""), UpstreamResponseError)
    assert MacroResponseError("no_result", "").backend == "scroll-macro"


def test_a_missing_page_does_not_switch_the_site_to_the_sync_route(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    ctx = context(config(suite))
    with pytest.raises(UpstreamRejectedError, match="No content found with id") as info:
        backend.start(ctx, request(page="9999"))
    assert info.value.upstream_status == 404
    assert calls(suite, "POST", f"{CONVERT}/export_view") == 1  # the fallback was tried...
    backend.start(ctx, request())
    assert calls(suite, "POST", f"{CONVERT}/async/") == 2  # ...but not remembered


def test_a_working_sync_fallback_is_remembered_for_the_site(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    ctx = context(config(suite))
    suite.cloud.inject(404, path_contains=f"{CONVERT}/async/export_view")
    step = backend.start(ctx, request())
    assert step.handle["route"] == "sync" and "jobId" in step.handle
    assert isinstance(run(backend, ctx, step), Ready)
    backend.start(ctx, request("docx"))
    assert calls(suite, "POST", f"{CONVERT}/async/") == 1


def test_async_only_tenants_do_not_fall_back(
    backend: ScrollMacroBackend, suite: SandboxSuite
) -> None:
    suite.cloud.inject(404, path_contains=f"{CONVERT}/async/export_view")
    with pytest.raises(UpstreamRejectedError) as info:
        backend.start(context(config(suite, convert="async")), request())
    assert info.value.upstream_status == 404
    assert calls(suite, "POST", f"{CONVERT}/export_view") == 0
