"""The simulated Confluence Cloud site with the hidden Scroll macros, over real loopback HTTP."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import lxml.html
import pytest
import requests

from bridge.sandbox.confluence_cloud import ConfluenceCloudSandbox
from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.sandbox.oauth_server import GRANT_TYPE, OAuthSandbox
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.scroll_engine import MACRO_SEED_TEMPLATE, ScrollJobEngine

SECRET = "connect-shared-secret-for-the-bridge-0123456789"
CLIENT_ID = "bridge-oauth-client"
T0 = 1_728_403_475.0
XSRF = {"X-Atlassian-Token": "no-check"}
ISSUED_AT_ERROR = {
    "status": 400,
    "message": "Must set 'issued-at' parameter to current time as Unix Epoch seconds.",
}


class SwappableApp:
    """One loopback server for the module; each test plugs in a fresh sandbox app."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def loopback() -> Iterator[tuple[SwappableApp, str, SwappableApp, str]]:
    oauth_swap, site_swap = SwappableApp(), SwappableApp()
    with ServerThread(oauth_swap) as oauth_thread, ServerThread(site_swap) as site_thread:
        yield oauth_swap, oauth_thread.url, site_swap, site_thread.url


@dataclass
class Env:
    clock: ManualClock
    oauth: OAuthSandbox
    site: ConfluenceCloudSandbox
    engine: ScrollJobEngine
    oauth_url: str
    site_url: str

    @property
    def api(self) -> str:
        return f"{self.site_url}/wiki/rest/api"

    def token(self, account: str = "acc-1", scope: str | None = None) -> str:
        now = int(self.clock())
        claims = {
            "iss": f"urn:atlassian:connect:clientid:{CLIENT_ID}",
            "sub": f"urn:atlassian:connect:useraccountid:{account}",
            "tnt": f"{self.site_url}/wiki",
            "aud": self.oauth_url,
            "iat": now,
            "exp": now + 60,
        }
        form = {"grant_type": GRANT_TYPE, "assertion": jwt.encode(claims, SECRET, "HS256")}
        if scope is not None:
            form["scope"] = scope
        reply = requests.post(f"{self.oauth_url}/oauth2/token", data=form, timeout=5)
        assert reply.status_code == 200, reply.text
        return str(reply.json()["access_token"])

    def convert_async(
        self, storage: str, token: str, params: dict[str, str] | None = None
    ) -> requests.Response:
        return requests.post(
            f"{self.api}/contentbody/convert/async/export_view",
            params=params or {"contentIdContext": "1001"},
            json={"value": storage, "representation": "storage"},
            headers=bearer(token),
            timeout=5,
        )

    def poll(self, async_id: str, token: str) -> requests.Response:
        return requests.get(
            f"{self.api}/contentbody/convert/async/{async_id}", headers=bearer(token), timeout=5
        )

    def render(self, storage: str, token: str) -> str:
        """Convert asynchronously and poll until done; return the export_view HTML."""
        async_id = self.convert_async(storage, token).json()["asyncId"]
        for _ in range(5):
            body = self.poll(async_id, token).json()
            if body["status"] == "COMPLETED":
                return str(body["value"])
        raise AssertionError("render never completed")


@pytest.fixture
def env(loopback: tuple[SwappableApp, str, SwappableApp, str]) -> Env:
    oauth_swap, oauth_url, site_swap, site_url = loopback
    clock = ManualClock(T0)
    pages = demo_tree()
    engine = ScrollJobEngine(pages, clock)
    oauth = OAuthSandbox(clock)
    oauth.set_public_url(oauth_url)
    oauth.register_client(CLIENT_ID, SECRET, f"{site_url}/wiki", ["acc-1", "acc-2"])
    site = ConfluenceCloudSandbox(oauth, engine, pages, clock)
    site.set_public_url(site_url)
    oauth_swap.app, site_swap.app = oauth.app, site.app
    return Env(clock, oauth, site, engine, oauth_url, site_url)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def macro(name: str, **params: str) -> str:
    parts = []
    for key, value in params.items():
        text = f"<![CDATA[{value}]]>" if key == "export_request" else value
        parts.append(f'<ac:parameter ac:name="{key.replace("_", "-")}">{text}</ac:parameter>')
    return f'<ac:structured-macro ac:name="{name}">{"".join(parts)}</ac:structured-macro>'


def start_macro(env: Env, page_id: str = "1001", issued_at: float | None = None) -> str:
    request = {"pageId": page_id, "scope": "current", "templateId": MACRO_SEED_TEMPLATE}
    return macro(
        "scroll-word-export-job",
        issued_at=str(int(env.clock() if issued_at is None else issued_at)),
        issued_by_app="Bridge tests",
        export_request=json.dumps(request),
    )


def status_macro(env: Env, job_id: str, name: str = "scroll-word-export-job") -> str:
    return macro(name, issued_at=str(int(env.clock())), export_job_id=job_id)


def codes(export_view: str) -> list[tuple[str, dict[str, Any]]]:
    """Every ``<code>`` in the HTML: its class and its text parsed as JSON."""
    root = lxml.html.fragment_fromstring(export_view, create_parent="div")
    return [(code.get("class", ""), json.loads(code.text_content())) for code in root.iter("code")]


def start_job(env: Env, token: str) -> str:
    [(outcome, payload)] = codes(env.render(start_macro(env), token))
    assert outcome == "success", payload
    return str(payload["jobId"])


# -- convert and the Scroll macros -----------------------------------------------------


def test_start_macro_renders_the_job_id_in_the_seed_wrapper(env: Env) -> None:
    token = env.token()
    submitted = env.convert_async(start_macro(env), token)
    assert submitted.status_code == 200
    async_id = submitted.json()["asyncId"]

    first = env.poll(async_id, token).json()
    assert first["status"] == "QUEUED"
    assert "value" not in first
    done = env.poll(async_id, token).json()
    assert done["status"] == "COMPLETED"
    assert done["representation"] == "export_view"
    assert done["renderTaskId"] == async_id

    root = lxml.html.fragment_fromstring(done["value"], create_parent="div")
    [block] = root.xpath("//div[@data-macro-name='scroll-word-export-job']")
    [code] = block.xpath("./div[@class='result']/code[@class='success']")
    payload = json.loads(code.text_content())
    assert set(payload) == {"jobId"}
    assert env.engine.status(payload["jobId"], "acc-1")["status"] == "incomplete"
    assert env.site.renderer.issuing_apps == {"Bridge tests": 1}


def test_status_polls_until_complete_then_download_without_auth(env: Env) -> None:
    token = env.token()
    job_id = start_job(env, token)

    [(_, running)] = codes(env.render(status_macro(env, job_id), token))
    assert running["status"] == "incomplete"
    assert running["downloadUrl"] is None
    env.clock.advance(1)
    [(outcome, done)] = codes(env.render(status_macro(env, job_id), token))
    assert outcome == "success"
    assert (done["status"], done["step"], done["totalSteps"]) == ("complete", 3, 3)

    url = done["downloadUrl"]
    assert url.startswith(f"{env.site_url}/scroll/scroll-office/download/Product-Handbook-")
    assert urlsplit(url).path.endswith(".docx")
    reply = requests.get(url, timeout=5)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/vnd.openxmlformats")
    assert "attachment" in reply.headers["Content-Disposition"]
    assert int(reply.headers["Content-Length"]) == len(reply.content)
    assert "word/document.xml" in zipfile.ZipFile(io.BytesIO(reply.content)).namelist()


def test_download_url_rejects_tampered_missing_or_expired_tokens(env: Env) -> None:
    token = env.token()
    job_id = start_job(env, token)
    env.clock.advance(1)
    [(_, done)] = codes(env.render(status_macro(env, job_id), token))
    url: str = done["downloadUrl"]
    good_jwt = parse_qs(urlsplit(url).query)["jwt"][0]
    bare = url.split("?")[0]

    tampered = good_jwt[:-3] + ("AAA" if not good_jwt.endswith("AAA") else "BBB")
    assert requests.get(bare, params={"jwt": tampered}, timeout=5).status_code == 401
    assert requests.get(bare, timeout=5).status_code == 401
    other_file = bare.replace("Product-Handbook", "Other")
    assert requests.get(other_file, params={"jwt": good_jwt}, timeout=5).status_code == 401
    with_auth = requests.get(url, headers=bearer(token), timeout=5)
    assert with_auth.status_code == 400
    assert with_auth.json()["status"] == 400

    env.clock.advance(301)
    expired = requests.get(url, timeout=5)
    assert expired.status_code == 401
    assert expired.json() == {"status": 401, "message": "Download token has expired."}


@pytest.mark.parametrize("skew", [-11, 11])
def test_stale_issued_at_renders_the_error_element(env: Env, skew: int) -> None:
    token = env.token()
    value = env.render(start_macro(env, issued_at=env.clock() + skew), token)

    assert codes(value) == [("error", ISSUED_AT_ERROR)]
    assert env.engine.jobs_started == 0


@pytest.mark.parametrize("skew", [-10, 10])
def test_issued_at_within_leeway_is_accepted(env: Env, skew: int) -> None:
    value = env.render(start_macro(env, issued_at=env.clock() + skew), env.token())
    [(outcome, _)] = codes(value)
    assert outcome == "success"


def test_macro_errors_carry_the_scroll_error_body(env: Env) -> None:
    token = env.token()
    now = str(int(env.clock()))
    no_app = macro(
        "scroll-pdf-export-job",
        issued_at=now,
        export_request=json.dumps({"pageId": "1001", "templateId": MACRO_SEED_TEMPLATE}),
    )
    bad_template = macro(
        "scroll-pdf-export-job",
        issued_at=now,
        issued_by_app="Bridge tests",
        export_request=json.dumps({"pageId": "1001", "templateId": "nope"}),
    )
    no_operation = macro("scroll-pdf-export-job", issued_at=now)
    found = codes(env.render(no_app + bad_template + no_operation, token))

    assert [outcome for outcome, _ in found] == ["error", "error", "error"]
    assert [payload["status"] for _, payload in found] == [400, 400, 400]
    assert "issued-by-app" in found[0][1]["message"]
    assert "template" in found[1][1]["message"]


def test_status_of_a_job_under_another_product_or_user_is_not_found(env: Env) -> None:
    job_id = start_job(env, env.token("acc-1"))

    [(outcome, payload)] = codes(
        env.render(status_macro(env, job_id, "scroll-pdf-export-job"), env.token("acc-1"))
    )
    assert (outcome, payload["status"]) == ("error", 404)
    [(outcome, payload)] = codes(env.render(status_macro(env, job_id), env.token("acc-2")))
    assert (outcome, payload["status"]) == ("error", 404)


def test_ordinary_markup_passes_through_and_unknown_macros_are_flagged(env: Env) -> None:
    storage = (
        "Intro&nbsp;text <p>Keep <strong>this</strong> &amp; that</p>"
        '<ac:structured-macro ac:name="toc"><ac:parameter ac:name="x">1</ac:parameter>'
        "</ac:structured-macro><code>not json</code>"
    )
    value = env.render(storage, env.token())
    root = lxml.html.fragment_fromstring(value, create_parent="div")

    assert root.text == "Intro\u00a0text "
    assert root.xpath("string(//p)") == "Keep this & that"
    assert root.xpath("//span[@class='error']/text()") == ["Unknown macro: 'toc'"]
    assert "xmlns" not in value
    assert "ac:" not in value


@pytest.mark.parametrize(
    "storage",
    [
        "<p>unclosed",
        '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><p>&e;</p>',
        "<p>&undefinedentity;</p>",
    ],
    ids=["unclosed", "doctype", "unknown-entity"],
)
def test_malformed_storage_fails_the_render(env: Env, storage: str) -> None:
    token = env.token()
    async_id = env.convert_async(storage, token).json()["asyncId"]
    env.poll(async_id, token)
    failed = env.poll(async_id, token).json()

    assert failed["status"] == "FAILED"
    assert "Error parsing xhtml" in failed["error"]
    assert "value" not in failed


def test_another_users_token_cannot_read_the_async_result(env: Env) -> None:
    async_id = env.convert_async(start_macro(env), env.token("acc-1")).json()["asyncId"]

    reply = env.poll(async_id, env.token("acc-2"))
    assert reply.status_code == 404
    assert reply.json()["statusCode"] == 404
    assert env.poll(async_id, env.token("acc-1")).status_code == 200


def test_async_results_expire_300_seconds_after_completion(env: Env) -> None:
    token = env.token()
    async_id = env.convert_async(start_macro(env), token).json()["asyncId"]
    env.poll(async_id, token)
    env.clock.advance(100)
    assert env.poll(async_id, token).json()["status"] == "COMPLETED"

    env.clock.advance(299)
    token = env.token()
    assert env.poll(async_id, token).json()["status"] == "COMPLETED"
    env.clock.advance(1)
    assert env.poll(async_id, token).status_code == 404


def test_allow_cache_reuses_a_live_identical_request_and_false_invalidates_it(env: Env) -> None:
    token = env.token()
    storage = "<p>same body</p>"
    first = env.convert_async(storage, token).json()["asyncId"]
    cached_params = {"contentIdContext": "1001", "allowCache": "true"}

    assert env.convert_async(storage, token, cached_params).json()["asyncId"] == first
    fresh = env.convert_async(storage, token).json()["asyncId"]
    assert fresh != first
    assert env.poll(first, token).status_code == 404
    other_user = env.convert_async(storage, env.token("acc-2"), cached_params)
    assert other_user.json()["asyncId"] != fresh


def test_sync_convert_renders_and_can_be_switched_off(env: Env) -> None:
    token = env.token()
    url = f"{env.api}/contentbody/convert/export_view"
    body = {"value": start_macro(env), "representation": "storage"}
    reply = requests.post(url, json=body, headers=bearer(token), timeout=5)

    assert reply.status_code == 200
    assert reply.json()["representation"] == "export_view"
    [(outcome, payload)] = codes(reply.json()["value"])
    assert outcome == "success"
    assert "jobId" in payload

    env.site.sync_enabled = False
    assert requests.post(url, json=body, headers=bearer(token), timeout=5).status_code == 404


def test_scroll_base_url_is_used_for_download_links(env: Env) -> None:
    env.site.scroll_base_url = "https://scroll-word.us.exporter.k15t.app"
    token = env.token()
    job_id = start_job(env, token)
    env.clock.advance(1)
    [(_, done)] = codes(env.render(status_macro(env, job_id), token))

    assert done["downloadUrl"].startswith(
        "https://scroll-word.us.exporter.k15t.app/scroll/scroll-office/download/"
    )


# -- request validation and authentication ---------------------------------------------


def test_bad_convert_requests_answer_the_v1_error_body(env: Env) -> None:
    token = env.token()
    url = f"{env.api}/contentbody/convert/async/export_view"
    not_json = requests.post(
        url,
        data="{not json",
        headers={**bearer(token), "Content-Type": "application/json"},
        timeout=5,
    )
    assert not_json.status_code == 400
    body = not_json.json()
    assert body["statusCode"] == 400
    assert set(body["data"]) == {"authorized", "valid", "errors", "successful"}
    assert body["message"].startswith(
        "com.atlassian.confluence.api.service.exceptions.BadRequestException: "
    )

    wiki = requests.post(
        url, json={"value": "h1. x", "representation": "wiki"}, headers=bearer(token), timeout=5
    )
    assert wiki.status_code == 400
    assert env.convert_async("<p/>", token, {"contentIdContext": "abc"}).status_code == 400
    assert env.convert_async("<p/>", token, {"contentIdContext": "999999"}).status_code == 404
    assert env.convert_async("<p/>", token, {"spaceKeyContext": "NOPE"}).status_code == 404
    assert env.convert_async("<p/>", token, {"spaceKeyContext": "REL"}).status_code == 200
    styled = requests.post(
        f"{env.api}/contentbody/convert/async/styled_view",
        json={"value": "<p/>", "representation": "storage"},
        headers=bearer(token),
        timeout=5,
    )
    assert styled.status_code == 400


def test_requests_need_a_live_impersonation_token_for_this_site(env: Env) -> None:
    token = env.token()
    assert env.convert_async("<p/>", token).status_code == 200

    missing = requests.post(
        f"{env.api}/contentbody/convert/async/export_view",
        json={"value": "<p/>", "representation": "storage"},
        timeout=5,
    )
    assert missing.status_code == 401
    assert env.convert_async("<p/>", "forged").status_code == 401

    env.oauth.register_client("other", SECRET, "http://127.0.0.1:1/wiki", ["acc-1"])
    foreign = env.oauth.grant(
        {
            "grant_type": GRANT_TYPE,
            "assertion": jwt.encode(
                {
                    "iss": "urn:atlassian:connect:clientid:other",
                    "sub": "urn:atlassian:connect:useraccountid:acc-1",
                    "tnt": "http://127.0.0.1:1/wiki",
                    "aud": env.oauth_url,
                    "iat": int(env.clock()),
                    "exp": int(env.clock()) + 60,
                },
                SECRET,
                "HS256",
            ),
        },
        env.oauth_url,
    )
    assert env.convert_async("<p/>", str(foreign["access_token"])).status_code == 401

    env.clock.advance(900)
    assert env.convert_async("<p/>", token).status_code == 401


def test_xsrf_header_on_convert_is_only_enforced_when_configured(env: Env) -> None:
    token = env.token()
    env.site.require_xsrf_on_convert = True
    assert env.convert_async("<p/>", token).status_code == 403
    reply = requests.post(
        f"{env.api}/contentbody/convert/async/export_view",
        json={"value": "<p/>", "representation": "storage"},
        headers={**bearer(token), **XSRF},
        timeout=5,
    )
    assert reply.status_code == 200


def test_injected_429_carries_retry_after_and_reset(env: Env) -> None:
    token = env.token()
    env.site.inject(429, times=2, path_contains="/contentbody/", retry_after=7)

    for _ in range(2):
        limited = env.convert_async("<p/>", token)
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "7"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", limited.headers["X-RateLimit-Reset"])
    assert env.convert_async("<p/>", token).status_code == 200
    statuses = [call.status for call in env.site.calls if "/contentbody/" in call.path]
    assert statuses == [429, 429, 200]


def test_injected_fault_with_custom_body_only_hits_matching_paths(env: Env) -> None:
    token = env.token()
    env.site.inject(503, path_contains="/child/attachment", body={"message": "busy"})

    assert env.convert_async("<p/>", token).status_code == 200
    reply = requests.get(
        f"{env.api}/content/1001/child/attachment", headers=bearer(token), timeout=5
    )
    assert (reply.status_code, reply.json()) == (503, {"message": "busy"})
    assert "Retry-After" not in reply.headers


# -- attachments -----------------------------------------------------------------------


def upload(
    env: Env, token: str, name: str, data: bytes, *, method: str = "POST", xsrf: bool = True
) -> requests.Response:
    return requests.request(
        method,
        f"{env.api}/content/1002/child/attachment",
        files={"file": (name, data, "application/pdf")},
        headers={**bearer(token), **(XSRF if xsrf else {})},
        timeout=5,
    )


def test_attachment_upload_list_and_update(env: Env) -> None:
    token = env.token()
    assert upload(env, token, "export.pdf", b"%PDF-1", xsrf=False).status_code == 403

    created = upload(env, token, "export.pdf", b"%PDF-1")
    assert created.status_code == 200
    [result] = created.json()["results"]
    assert result["title"] == "export.pdf"
    assert result["id"].startswith("att")
    assert result["version"]["number"] == 1

    assert upload(env, token, "export.pdf", b"%PDF-2").status_code == 400
    updated = upload(env, token, "export.pdf", b"%PDF-2", method="PUT")
    assert updated.json()["results"][0]["version"]["number"] == 2
    assert updated.json()["results"][0]["id"] == result["id"]

    listing = requests.get(
        f"{env.api}/content/1002/child/attachment", headers=bearer(token), timeout=5
    ).json()
    assert [r["title"] for r in listing["results"]] == ["export.pdf"]
    assert env.site.attachments == {"1002": [("export.pdf", b"%PDF-2", "application/pdf", "acc-1")]}


def test_attachment_upload_needs_write_scope_and_a_known_page(env: Env) -> None:
    read_only = env.token(scope="READ ACT_AS_USER")
    denied = upload(env, read_only, "a.pdf", b"x")
    assert denied.status_code == 401
    assert denied.json() == {"code": 401, "message": "Unauthorized; scope does not match"}

    token = env.token()
    missing_page = requests.post(
        f"{env.api}/content/424242/child/attachment",
        files={"file": ("a.pdf", b"x")},
        headers={**bearer(token), **XSRF},
        timeout=5,
    )
    assert missing_page.status_code == 404
    no_file = requests.post(
        f"{env.api}/content/1002/child/attachment",
        files={"other": ("a.pdf", b"x")},
        headers={**bearer(token), **XSRF},
        timeout=5,
    )
    assert no_file.status_code == 400
    assert env.site.attachments == {}
