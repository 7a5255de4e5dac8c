"""The Scroll REST sandbox over real loopback HTTP: DC and Cloud flavours."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.scroll_engine import DC_TEMPLATE_UUIDS, ScrollJobEngine
from bridge.sandbox.scroll_rest import ScrollRestSandbox

PAT = {"Authorization": "Bearer sandbox-pat"}
TOKEN = {"Authorization": "Bearer sandbox-scroll-token"}
PDF = "com.k15t.scroll.pdf.default-template-documentation"
BIG = 5 * 1024 * 1024


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_704_110_400.0)


@pytest.fixture
def engine(clock: ManualClock) -> ScrollJobEngine:
    tree = demo_tree()
    tree.add("9001", "Big Manual", pad_to=BIG)
    return ScrollJobEngine(tree, clock)


class Mount:
    """A WSGI app that forwards to whichever sandbox the current test mounted."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Mount, str]]:
    # One server per module: stopping a ServerThread takes half a second.
    mount = Mount()
    with ServerThread(mount) as thread:
        yield mount, thread.url


@pytest.fixture
def serve(server: tuple[Mount, str]) -> Callable[[ScrollRestSandbox], str]:
    """Mount a sandbox on the module's server; return the server's URL."""
    mount, url = server

    def mount_sandbox(sandbox: ScrollRestSandbox) -> str:
        mount.app = sandbox.app
        return url

    return mount_sandbox


Serve = Callable[[ScrollRestSandbox], str]


@pytest.fixture
def dc(engine: ScrollJobEngine, serve: Serve) -> tuple[ScrollRestSandbox, str]:
    sandbox = ScrollRestSandbox(engine)
    return sandbox, serve(sandbox)


@pytest.fixture
def cloud(engine: ScrollJobEngine, serve: Serve) -> tuple[ScrollRestSandbox, str]:
    sandbox = ScrollRestSandbox(engine, flavor="cloud", download_ttl=60.0)
    return sandbox, serve(sandbox)


def api(url: str, product: str = "scroll-pdf") -> str:
    return f"{url}/confluence/plugins/servlet/{product}/api/public/1"


def start(base: str, body: object, **kwargs: object) -> requests.Response:
    kwargs.setdefault("headers", PAT)
    return requests.post(f"{base}/exports", json=body, timeout=5, **kwargs)  # type: ignore[arg-type]


def pdf_job(page_id: str = "1001") -> dict[str, str]:
    return {"pageId": page_id, "templateId": PDF, "scope": "current"}


def check_file(fmt: str, content: bytes) -> None:
    if fmt == "pdf":
        assert content.startswith(b"%PDF-")
        return
    names = zipfile.ZipFile(io.BytesIO(content)).namelist()
    assert ("word/document.xml" if fmt == "docx" else "index.html") in names


@pytest.mark.parametrize(
    ("product", "fmt", "suffix"),
    [
        ("scroll-office", "docx", ".docx"),
        ("scroll-pdf", "pdf", ".pdf"),
        ("scroll-html", "html", ".zip"),
    ],
)
def test_dc_async_export_of_each_product(
    dc: tuple[ScrollRestSandbox, str], clock: ManualClock, product: str, fmt: str, suffix: str
) -> None:
    _, url = dc
    base = api(url, product)
    started = start(base, {"pageId": "1001", "templateId": DC_TEMPLATE_UUIDS[product]})
    assert started.status_code == 200
    assert list(started.json()) == ["jobId"]
    job = started.json()["jobId"]

    running = requests.get(f"{base}/exports/{job}/status", headers=PAT, timeout=5).json()
    assert running == {
        "status": "incomplete",
        "step": 1,
        "totalSteps": 3,
        "stepProgress": 0,
        "downloadUrl": None,
    }
    clock.advance(1.0)
    done = requests.get(f"{base}/exports/{job}/status", headers=PAT, timeout=5).json()
    assert done["status"] == "complete"
    assert done["downloadUrl"].startswith(url + "/confluence/plugins/servlet/")
    file_name = urlsplit(done["downloadUrl"]).path.rsplit("/", 1)[1]
    assert file_name == f"Product-Handbook-20240101_120000{suffix}"

    assert requests.get(done["downloadUrl"], timeout=5).status_code == 401
    download = requests.get(done["downloadUrl"], auth=("admin", "admin"), timeout=5)
    assert download.status_code == 200
    assert download.headers["Content-Disposition"] == f'attachment; filename="{file_name}"'
    check_file(fmt, download.content)


def test_cancel_answers_204_and_status_turns_cancelled(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    job = start(api(url), pdf_job()).json()["jobId"]
    cancelled = requests.delete(f"{api(url)}/exports/{job}", headers=PAT, timeout=5)
    assert (cancelled.status_code, cancelled.content) == (204, b"")
    status = requests.get(f"{api(url)}/exports/{job}/status", headers=PAT, timeout=5).json()
    assert status["status"] == "cancelled"
    missing = requests.delete(f"{api(url)}/exports/nope", headers=PAT, timeout=5)
    assert missing.status_code == 404


def test_export_sync_with_url_parameters(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    query = {
        "templateId": DC_TEMPLATE_UUIDS["scroll-office"],
        "pageId": "1002",
        "scope": "current",
        "os_username": "admin",
        "os_password": "admin",
    }
    response = requests.get(f"{api(url, 'scroll-office')}/export-sync", params=query, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].endswith("wordprocessingml.document")
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.headers["Content-Disposition"].startswith(
        'attachment; filename="Getting-Started-'
    )
    check_file("docx", response.content)
    query["os_password"] = "wrong"
    assert requests.get(f"{api(url)}/export-sync", params=query, timeout=5).status_code == 401


def test_unknown_job_is_404_with_error_object(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    response = requests.get(f"{api(url)}/exports/no-such-job/status", headers=PAT, timeout=5)
    assert response.status_code == 404
    assert response.json()["status"] == 404
    assert isinstance(response.json()["message"], str)


def test_job_of_another_exporter_is_unknown(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    job = start(api(url), pdf_job()).json()["jobId"]
    other = requests.get(f"{api(url, 'scroll-html')}/exports/{job}/status", headers=PAT, timeout=5)
    assert other.status_code == 404


def test_job_is_forgotten_ten_minutes_after_completion(
    dc: tuple[ScrollRestSandbox, str], clock: ManualClock
) -> None:
    _, url = dc
    job = start(api(url), pdf_job()).json()["jobId"]
    clock.advance(1.0)
    link = requests.get(f"{api(url)}/exports/{job}/status", headers=PAT, timeout=5).json()
    clock.advance(601.0)
    assert (
        requests.get(f"{api(url)}/exports/{job}/status", headers=PAT, timeout=5).status_code == 404
    )
    assert requests.get(link["downloadUrl"], headers=PAT, timeout=5).status_code == 404


def test_failing_export_reports_error_at_step_two(
    dc: tuple[ScrollRestSandbox, str], engine: ScrollJobEngine, clock: ManualClock
) -> None:
    _, url = dc
    engine.failing_pages.add("1001")
    job = start(api(url), pdf_job()).json()["jobId"]
    clock.advance(1.0)
    status = requests.get(f"{api(url)}/exports/{job}/status", headers=PAT, timeout=5).json()
    assert (status["status"], status["step"], status["downloadUrl"]) == ("error", 2, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"headers": {"Authorization": "Bearer wrong-pat"}},
        {"headers": {"Authorization": "Token sandbox-pat"}},
        {"auth": ("admin", "wrong")},
        {"auth": ("nobody", "admin")},
        {"params": {"os_username": "admin", "os_password": "nope"}},
    ],
)
def test_bad_credentials_are_401(
    dc: tuple[ScrollRestSandbox, str], kwargs: dict[str, object]
) -> None:
    _, url = dc
    kwargs.setdefault("headers", {})
    response = start(api(url), pdf_job(), **kwargs)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert response.json()["status"] == 401


def test_every_dc_credential_kind_is_accepted(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    assert start(api(url), pdf_job()).status_code == 200
    assert start(api(url), pdf_job(), headers={}, auth=("admin", "admin")).status_code == 200
    params = {"os_username": "admin", "os_password": "admin", "os_authType": "basic"}
    assert start(api(url), pdf_job(), headers={}, params=params).status_code == 200


def test_disabled_basic_and_url_parameters(engine: ScrollJobEngine, serve: Serve) -> None:
    url = serve(ScrollRestSandbox(engine, allow_basic=False, allow_url_params=False))
    assert start(api(url), pdf_job(), headers={}, auth=("admin", "admin")).status_code == 401
    params = {"os_username": "admin", "os_password": "admin"}
    assert start(api(url), pdf_job(), headers={}, params=params).status_code == 401
    assert start(api(url), pdf_job()).status_code == 200


def test_jobs_of_another_user_are_404(engine: ScrollJobEngine, serve: Serve) -> None:
    url = serve(ScrollRestSandbox(engine, pats={"pat-a": "alice", "pat-b": "bob"}))
    job = start(api(url), pdf_job(), headers={"Authorization": "Bearer pat-a"}).json()["jobId"]
    bob = {"Authorization": "Bearer pat-b"}
    assert (
        requests.get(f"{api(url)}/exports/{job}/status", headers=bob, timeout=5).status_code == 404
    )


def test_user_current(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    current = f"{url}/confluence/rest/api/user/current"
    assert requests.get(current, headers=PAT, timeout=5).json()["username"] == "admin"
    assert requests.get(current, auth=("admin", "admin"), timeout=5).json()["type"] == "known"
    bad = {"Authorization": "Bearer nope"}
    assert requests.get(current, headers=bad, timeout=5).status_code == 401
    assert requests.get(current, timeout=5).json() == {"type": "anonymous"}


def test_anonymous_export_needs_the_session_cookie(
    engine: ScrollJobEngine, clock: ManualClock, serve: Serve
) -> None:
    url = serve(ScrollRestSandbox(engine, allow_anonymous=True))
    session = requests.Session()
    started = session.post(f"{api(url)}/exports", json=pdf_job(), timeout=5)
    assert started.status_code == 200
    assert "JSESSIONID" in started.cookies
    job = started.json()["jobId"]
    status_url = f"{api(url)}/exports/{job}/status"
    assert requests.get(status_url, timeout=5).status_code == 404
    clock.advance(1.0)
    link = session.get(status_url, timeout=5).json()["downloadUrl"]
    assert requests.get(link, timeout=5).status_code == 404
    assert session.get(link, timeout=5).content.startswith(b"%PDF-")


def test_anonymous_export_is_refused_unless_allowed(engine: ScrollJobEngine, serve: Serve) -> None:
    url = serve(ScrollRestSandbox(engine))
    assert requests.post(f"{api(url)}/exports", json=pdf_job(), timeout=5).status_code == 401


def test_multi_node_jobs_need_the_sticky_cookie(engine: ScrollJobEngine, serve: Serve) -> None:
    url = serve(ScrollRestSandbox(engine, nodes=2))
    started = start(api(url), pdf_job())
    cookie = started.cookies["JSESSIONID"]
    assert cookie.endswith((".node1", ".node2"))
    status_url = f"{api(url)}/exports/{started.json()['jobId']}/status"
    without = {requests.get(status_url, headers=PAT, timeout=5).status_code for _ in range(4)}
    assert without == {200, 404}
    jar = {"JSESSIONID": cookie}
    with_cookie = {
        requests.get(status_url, headers=PAT, cookies=jar, timeout=5).status_code for _ in range(6)
    }
    assert with_cookie == {200}


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": "{not json", "headers": {**PAT, "Content-Type": "application/json"}}, 400),
        ({"json": ["pageId", "1001"], "headers": PAT}, 400),
        ({"data": '{"pageId": "1001"}', "headers": PAT}, 415),
        ({"json": {"pageId": "1001", "templateId": "unknown"}, "headers": PAT}, 400),
        ({"json": {"pageId": "777", "templateId": PDF}, "headers": PAT}, 404),
        ({"json": {"pageId": "1001", "templateId": PDF, "scope": "space"}, "headers": PAT}, 400),
    ],
)
def test_bad_start_requests(
    dc: tuple[ScrollRestSandbox, str], kwargs: dict[str, object], status: int
) -> None:
    _, url = dc
    response = requests.post(f"{api(url)}/exports", timeout=5, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.json()["status"] == status


def test_placeholder_values_are_accepted(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    body = {
        **pdf_job(),
        "locale": "en-US",
        "versionId": "string",
        "variantId": "string",
        "languageKey": "string",
        "timeZone": "",
    }
    assert start(api(url), body).status_code == 200


def test_unknown_routes_and_methods_answer_json(dc: tuple[ScrollRestSandbox, str]) -> None:
    _, url = dc
    missing = requests.get(
        f"{url}/confluence/plugins/servlet/scroll-epub/x", headers=PAT, timeout=5
    )
    assert (missing.status_code, missing.json()["status"]) == (404, 404)
    wrong = requests.put(f"{api(url)}/exports", headers=PAT, timeout=5)
    assert (wrong.status_code, wrong.json()["status"]) == (405, 405)


def test_injected_429_with_retry_after_then_normal(dc: tuple[ScrollRestSandbox, str]) -> None:
    sandbox, url = dc
    job = start(api(url), pdf_job()).json()["jobId"]
    sandbox.inject(429, times=2, path_contains="/status", retry_after="7")
    status_url = f"{api(url)}/exports/{job}/status"
    first, second, third = (requests.get(status_url, headers=PAT, timeout=5) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "7")
    assert first.json() == {"status": 429, "message": "Injected fault."}
    assert second.status_code == 429
    assert third.status_code == 200
    sandbox.inject(503, body="Service Unavailable")
    failed = start(api(url), pdf_job())
    assert (failed.status_code, failed.text) == (503, "Service Unavailable")
    assert sandbox.calls.count("GET", "/status") == 3
    assert sandbox.calls.count("POST", "/exports") == 2


@pytest.mark.parametrize("sync", [True, False])
def test_big_pdf_is_streamed(
    dc: tuple[ScrollRestSandbox, str], clock: ManualClock, sync: bool
) -> None:
    _, url = dc
    if sync:
        link = f"{api(url)}/export-sync?templateId={PDF}&pageId=9001&scope=current"
    else:
        job = start(api(url), pdf_job("9001")).json()["jobId"]
        clock.advance(1.0)
        status = requests.get(f"{api(url)}/exports/{job}/status", headers=PAT, timeout=5)
        link = status.json()["downloadUrl"]
    with requests.get(link, headers=PAT, stream=True, timeout=5) as response:
        assert response.headers["Content-Length"] == str(BIG)
        chunks = response.iter_content(64 * 1024)
        first = next(chunks)
        assert first.startswith(b"%PDF-")
        assert len(first) + sum(len(chunk) for chunk in chunks) == BIG


def cloud_job(url: str, product: str, template: str, clock: ManualClock) -> str:
    """Start and complete a Cloud export; return its pre-signed download URL."""
    base = f"{url}/{product}/api/public/1"
    started = requests.post(
        f"{base}/exports", json={"pageId": "1001", "templateId": template}, headers=TOKEN, timeout=5
    )
    assert started.status_code == 200
    clock.advance(1.0)
    status = requests.get(
        f"{base}/exports/{started.json()['jobId']}/status", headers=TOKEN, timeout=5
    )
    link: str = status.json()["downloadUrl"]
    return link


@pytest.mark.parametrize(
    ("product", "template", "fmt"),
    [
        ("scroll-word", "com.k15t.scroll.office.default-template-2", "docx"),
        ("scroll-pdf", "com.k15t.scroll.pdf.default-template-article", "pdf"),
        ("scroll-html", "com.k15t.scroll.html.helpcenter", "html"),
    ],
)
def test_cloud_export_with_presigned_download(
    cloud: tuple[ScrollRestSandbox, str], clock: ManualClock, product: str, template: str, fmt: str
) -> None:
    _, url = cloud
    link = cloud_job(url, product, template, clock)
    parts = urlsplit(link)
    assert parts.path.startswith(f"/{product}/download/Product-Handbook-")
    assert parts.query.startswith("jwt=")
    download = requests.get(link, timeout=5)
    assert download.status_code == 200
    check_file(fmt, download.content)


def test_cloud_presigned_link_is_checked(
    cloud: tuple[ScrollRestSandbox, str], clock: ManualClock
) -> None:
    _, url = cloud
    link = cloud_job(url, "scroll-pdf", PDF, clock)
    path, _, token = link.partition("?jwt=")
    assert requests.get(path, timeout=5).status_code == 403
    assert requests.get(f"{path}?jwt={token[:-3]}abc", timeout=5).status_code == 403
    other_host = link.replace("/scroll-pdf/", "/scroll-html/")
    assert requests.get(other_host, timeout=5).status_code == 403
    wrong_name = link.replace("Product-Handbook-", "Other-")
    assert requests.get(wrong_name, timeout=5).status_code == 404
    clock.advance(61.0)
    assert requests.get(link, timeout=5).status_code == 403


def test_cloud_needs_the_api_token(cloud: tuple[ScrollRestSandbox, str]) -> None:
    _, url = cloud
    base = f"{url}/scroll-pdf/api/public/1"
    for headers in ({}, PAT, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        response = requests.post(f"{base}/exports", json=pdf_job(), headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    job = requests.post(f"{base}/exports", json=pdf_job(), headers=TOKEN, timeout=5).json()["jobId"]
    assert requests.delete(f"{base}/exports/{job}", headers=TOKEN, timeout=5).status_code == 204
    status = requests.get(f"{base}/exports/{job}/status", headers=TOKEN, timeout=5).json()
    assert status["status"] == "cancelled"
    assert requests.get(f"{url}/confluence/rest/api/user/current", timeout=5).status_code == 404
