"""The Forge Markdown exporter sandbox over real loopback HTTP."""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator

import pytest
import requests

from bridge.sandbox.forge_markdown import APP_ID, ENV_IDS, ForgeMarkdownSandbox, slugify
from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.sandbox.pages import PageTree, demo_tree, wide_tree
from tests.sandbox.test_content_exporter import Swappable

AUTH = {"Authorization": "Bearer sandbox-forge-token"}
PROD = f"{APP_ID}_{ENV_IDS['production']}"
ROOT = "500000"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    target = Swappable()
    with ServerThread(target) as running:
        yield target, running.url


def install(server: tuple[Swappable, str], sandbox: ForgeMarkdownSandbox) -> str:
    """Serve *sandbox* for this test; return its API base URL (the api.atlassian.com form)."""
    target, url = server
    target.app = sandbox.app
    return f"{url}/svc/confluence/sandbox-cloud-id/apps/{PROD}"


@pytest.fixture
def demo(server: tuple[Swappable, str]) -> tuple[ForgeMarkdownSandbox, str]:
    sandbox = ForgeMarkdownSandbox(demo_tree(), ManualClock(0.0))
    return sandbox, install(server, sandbox)


@pytest.fixture
def big(server: tuple[Swappable, str]) -> tuple[ForgeMarkdownSandbox, str]:
    sandbox = ForgeMarkdownSandbox(wide_tree(pages=1000), ManualClock(0.0))
    return sandbox, install(server, sandbox)


def post(url: str, payload: object, headers: dict[str, str] = AUTH) -> requests.Response:
    return requests.post(url, json=payload, headers=headers, timeout=5)


def unzip(response: requests.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text
    return zipfile.ZipFile(io.BytesIO(base64.b64decode(response.json()["zipBase64"])))


def test_single_export_is_plain_markdown(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    _, api = demo
    response = post(f"{api}/singleExport", {"pageId": "1003"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain"
    assert response.content.decode() == "# Architecture\n\nBoxes and arrows.\n"


def test_single_export_with_attachments_is_a_zip_in_json(
    demo: tuple[ForgeMarkdownSandbox, str],
) -> None:
    sandbox, api = demo
    sandbox.add_attachment("1003", "diagram.png", b"\x89PNG fake")
    response = post(f"{api}/singleExport", {"pageId": "1003", "includeAttachments": True})
    body = response.json()
    assert (body["success"], body["pageId"], body["title"]) == (True, "1003", "Architecture")
    assert body["exportId"]
    archive = unzip(response)
    assert sorted(archive.namelist()) == ["architecture.md", "attachments/diagram.png"]
    assert archive.read("attachments/diagram.png") == b"\x89PNG fake"


def test_bulk_export_mirrors_the_hierarchy(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    sandbox, api = demo
    sandbox.add_attachment("1004", "schema.pdf", b"%PDF-1.4 fake")
    payload = {"pageId": "1001", "bulkExport": True, "includeAttachments": True}
    response = post(f"{api}/bulkExport", payload)
    body = response.json()
    assert (body["pageCount"], body["pageId"], body["spaceKey"]) == (4, "1001", None)
    archive = unzip(response)
    assert sorted(archive.namelist()) == [
        "product-handbook.md",
        "product-handbook/architecture.md",
        "product-handbook/architecture/attachments/schema.pdf",
        "product-handbook/architecture/storage-layer.md",
        "product-handbook/getting-started.md",
    ]
    assert archive.read("product-handbook/architecture/storage-layer.md").startswith(
        b"# Storage Layer"
    )


def test_bulk_export_without_descendants_and_by_space(
    demo: tuple[ForgeMarkdownSandbox, str],
) -> None:
    _, api = demo
    only_root = post(f"{api}/bulkExport", {"pageId": "1001"})
    assert unzip(only_root).namelist() == ["product-handbook.md"]
    space = post(f"{api}/bulkExport", {"spaceKey": "DOCS", "bulkExport": False})
    assert (space.json()["spaceKey"], space.json()["pageId"]) == ("DOCS", None)
    assert space.json()["pageCount"] == 4
    both = post(f"{api}/bulkExport", {"spaceKey": "REL", "pageId": "1002"})
    assert (both.json()["spaceKey"], both.json()["pageId"]) == (None, "1002")
    assert unzip(both).namelist() == ["getting-started.md"]


def test_max_pages_silently_truncates_in_tree_order(
    big: tuple[ForgeMarkdownSandbox, str],
) -> None:
    sandbox, api = big
    default = post(f"{api}/bulkExport", {"pageId": ROOT, "bulkExport": True})
    assert default.json()["pageCount"] == 50
    capped = post(f"{api}/bulkExport", {"pageId": ROOT, "bulkExport": True, "maxPages": 100})
    assert capped.json()["pageCount"] == 100
    expected = [ROOT, *[p.id for p in sandbox.pages.descendants(ROOT)][:99]]
    assert list(sandbox.exports[-1].page_ids) == expected
    assert len(unzip(capped).namelist()) == 100


@pytest.mark.parametrize("max_pages", [101, 0, -5, "50", True, 50.5])
def test_max_pages_outside_1_to_100_is_400(
    big: tuple[ForgeMarkdownSandbox, str], max_pages: object
) -> None:
    sandbox, api = big
    response = post(
        f"{api}/bulkExport", {"pageId": ROOT, "bulkExport": True, "maxPages": max_pages}
    )
    assert response.status_code == 400
    assert response.json()["success"] is False
    assert sandbox.exports == []


def test_overrunning_the_time_limit_is_424(server: tuple[Swappable, str]) -> None:
    sandbox = ForgeMarkdownSandbox(wide_tree(pages=1000), ManualClock(0.0), page_cost_seconds=0.5)
    api = install(server, sandbox)
    within = post(f"{api}/bulkExport", {"pageId": ROOT, "bulkExport": True, "maxPages": 50})
    assert within.status_code == 200
    over = post(f"{api}/bulkExport", {"pageId": ROOT, "bulkExport": True, "maxPages": 51})
    assert over.status_code == 424
    assert [e.status for e in sandbox.exports] == [200, 424]


def test_oversized_response_is_500(server: tuple[Swappable, str]) -> None:
    sandbox = ForgeMarkdownSandbox(wide_tree(pages=200), max_response_bytes=4096)
    api = install(server, sandbox)
    assert post(f"{api}/bulkExport", {"pageId": ROOT, "maxPages": 1}).status_code == 200
    payload = {"pageId": ROOT, "bulkExport": True, "maxPages": 100}
    assert post(f"{api}/bulkExport", payload).status_code == 500


def test_failing_and_flaky_pages(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    sandbox, api = demo
    sandbox.fail_pages.add("1004")
    payload = {"pageId": "1001", "bulkExport": True}
    assert post(f"{api}/bulkExport", payload).status_code == 500
    assert post(f"{api}/singleExport", {"pageId": "1002"}).status_code == 200
    sandbox.fail_pages.clear()
    sandbox.flaky("1002", 2)
    statuses = [post(f"{api}/bulkExport", payload).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("bulkExport", {"bulkExport": True}, 400),
        ("singleExport", {"includeAttachments": True}, 400),
        ("singleExport", {"pageId": 1001}, 400),
        ("singleExport", {"pageId": "424242"}, 404),
        ("bulkExport", {"pageId": "424242"}, 404),
        ("bulkExport", {"spaceKey": "NOPE"}, 404),
        ("bulkExport", ["not", "an", "object"], 400),
    ],
)
def test_bad_requests(
    demo: tuple[ForgeMarkdownSandbox, str], path: str, payload: object, status: int
) -> None:
    _, api = demo
    assert post(f"{api}/{path}", payload).status_code == status


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer expired"}])
def test_missing_or_unknown_token_is_401(
    demo: tuple[ForgeMarkdownSandbox, str], headers: dict[str, str]
) -> None:
    _, api = demo
    response = post(f"{api}/singleExport", {"pageId": "1001"}, headers)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "Unauthorized; scope does not match"}


def test_rest_apis_disabled_or_wrong_environment_is_403(
    demo: tuple[ForgeMarkdownSandbox, str],
) -> None:
    sandbox, api = demo
    sandbox.token_environments["sandbox-forge-token"] = "staging"
    assert post(f"{api}/singleExport", {"pageId": "1001"}).status_code == 403
    staging = api.replace(ENV_IDS["production"], ENV_IDS["staging"])
    assert post(f"{staging}/singleExport", {"pageId": "1001"}).status_code == 200
    sandbox.rest_apis_enabled = False
    assert post(f"{staging}/singleExport", {"pageId": "1001"}).status_code == 403


def test_unknown_cloud_app_environment_or_path_is_404(
    demo: tuple[ForgeMarkdownSandbox, str],
) -> None:
    _, api = demo
    wrong = [
        api.replace("sandbox-cloud-id", "other-cloud"),
        api.replace(APP_ID, "11111111-2222-3333-4444-555555555555"),
        api.replace(ENV_IDS["production"], "99999999-9999-9999-9999-999999999999"),
    ]
    for base in wrong:
        assert post(f"{base}/singleExport", {"pageId": "1001"}).status_code == 404
    assert post(f"{api}/export", {"pageId": "1001"}).status_code == 404


def test_production_needs_no_environment_id(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    sandbox, api = demo
    envless = api.replace(PROD, APP_ID)
    assert post(f"{envless}/singleExport", {"pageId": "1001"}).status_code == 200
    assert sandbox.exports[-1].environment == "production"


def test_gateway_form_identifies_the_site_by_host(
    demo: tuple[ForgeMarkdownSandbox, str], server: tuple[Swappable, str]
) -> None:
    _, url = server
    gateway = f"{url}/gateway/api/svc/confluence/apps/{PROD}/singleExport"
    assert post(gateway, {"pageId": "1001"}).status_code == 200  # loopback stands for the site
    site = {**AUTH, "Host": "sandbox.atlassian.net"}
    assert post(gateway, {"pageId": "1001"}, site).status_code == 200
    other = {**AUTH, "Host": "elsewhere.atlassian.net"}
    assert post(gateway, {"pageId": "1001"}, other).status_code == 404


def test_post_json_only(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    _, api = demo
    assert requests.get(f"{api}/singleExport", headers=AUTH, timeout=5).status_code == 405
    form = requests.post(f"{api}/singleExport", data={"pageId": "1001"}, headers=AUTH, timeout=5)
    assert form.status_code == 415


def test_injected_rate_limit(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    sandbox, api = demo
    sandbox.inject(429, retry_after=2, path_contains="bulkExport")
    limited = post(f"{api}/bulkExport", {"pageId": "1001"})
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "2")
    assert post(f"{api}/bulkExport", {"pageId": "1001"}).status_code == 200
    assert len(sandbox.calls) == 2
    assert len(sandbox.exports) == 1


def test_attachment_limits(demo: tuple[ForgeMarkdownSandbox, str]) -> None:
    sandbox, api = demo
    sandbox.add_attachment("1001", "huge.bin", b"x" * (301 * 1024))
    for n in range(8):
        sandbox.add_attachment("1002", f"part{n}.bin", b"y" * (290 * 1024))
    payload = {"pageId": "1001", "bulkExport": True, "includeAttachments": True}
    names = unzip(post(f"{api}/bulkExport", payload)).namelist()
    assert "attachments/huge.bin" not in names
    packed = [n for n in names if n.startswith("product-handbook/attachments/part")]
    assert len(packed) == 7  # 2 MB total


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Project Docs", "project-docs"),
        ("Über Café & Crème", "uber-cafe-creme"),
        ("  Setup -- Guide (v2)!  ", "setup-guide-v2"),
        ("日本語", ""),
    ],
)
def test_slugify(title: str, slug: str) -> None:
    assert slugify(title) == slug


def test_colliding_and_empty_slugs_in_the_zip(server: tuple[Swappable, str]) -> None:
    tree = PageTree()
    tree.add("1", "Root")
    tree.add("2", "Notes", parent_id="1")
    tree.add("3", "notes!", parent_id="1")
    tree.add("4", "日本語", parent_id="1")
    sandbox = ForgeMarkdownSandbox(tree, ManualClock(0.0))
    names = unzip(
        post(f"{install(server, sandbox)}/bulkExport", {"pageId": "1", "bulkExport": True})
    )
    assert sorted(names.namelist()) == [
        "root.md",
        "root/notes-2.md",
        "root/notes.md",
        "root/page-4.md",
    ]
