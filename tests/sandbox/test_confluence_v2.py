"""The Confluence Cloud v2 page-tree sandbox over real loopback HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from bridge.sandbox.confluence_v2 import ConfluenceV2Sandbox
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.pages import PageTree, demo_tree, wide_tree

AUTH = {"Authorization": "Bearer sandbox-forge-token"}
ROOT = "500000"


def serve(sandbox: ConfluenceV2Sandbox) -> Iterator[tuple[ConfluenceV2Sandbox, str]]:
    with ServerThread(sandbox.app) as server:
        yield sandbox, server.url


@pytest.fixture(scope="module")
def big() -> Iterator[tuple[ConfluenceV2Sandbox, str]]:
    """1,000 pages, ten children per node."""
    yield from serve(ConfluenceV2Sandbox(wide_tree(pages=1000)))


@pytest.fixture(scope="module")
def flat() -> Iterator[tuple[ConfluenceV2Sandbox, str]]:
    """One root with 600 direct children, with the CONFCLOUD-84015 bug switched on."""
    yield from serve(ConfluenceV2Sandbox(wide_tree(pages=601, fanout=600)))


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[ConfluenceV2Sandbox, str]]:
    yield from serve(ConfluenceV2Sandbox(demo_tree(), null_child_position_bug=False))


def get(url: str, **params: Any) -> requests.Response:
    return requests.get(url, params=params, headers=AUTH, timeout=5)


def walk(base: str, first: str, *, via_header: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Follow next links to the end; return all results and the number of requests made."""
    results: list[dict[str, Any]] = []
    url: str | None = f"{base}{first}"
    requests_made = 0
    while url is not None:
        response = requests.get(url, headers=AUTH, timeout=5)
        requests_made += 1
        assert response.status_code == 200, response.text
        results.extend(response.json()["results"])
        if via_header:
            nxt = response.links.get("next", {}).get("url")
        else:
            nxt = response.json()["_links"].get("next")
        url = f"{base}{nxt}" if nxt else None
    return results, requests_made


def test_children_lists_child_pages_with_v2_fields(demo: tuple[ConfluenceV2Sandbox, str]) -> None:
    sandbox, url = demo
    body = get(f"{url}/wiki/api/v2/pages/1001/children").json()
    assert body["results"] == [
        {
            "id": "1002",
            "status": "current",
            "title": "Getting Started",
            "spaceId": sandbox.space_id("DOCS"),
            "childPosition": 0,
        },
        {
            "id": "1003",
            "status": "current",
            "title": "Architecture",
            "spaceId": sandbox.space_id("DOCS"),
            "childPosition": 1,
        },
    ]
    assert "next" not in body["_links"]
    assert body["_links"]["base"] == "https://sandbox.atlassian.net/wiki"


def test_direct_children_add_the_content_type(demo: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = demo
    results = get(f"{url}/wiki/api/v2/pages/1001/direct-children").json()["results"]
    assert [(r["id"], r["type"]) for r in results] == [("1002", "page"), ("1003", "page")]


def test_descendants_are_top_to_bottom_with_depth(demo: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = demo
    results = get(f"{url}/wiki/api/v2/pages/1001/descendants").json()["results"]
    assert [(r["id"], r["parentId"], r["depth"], r["type"]) for r in results] == [
        ("1002", "1001", 1, "page"),
        ("1003", "1001", 1, "page"),
        ("1004", "1003", 2, "page"),
    ]
    shallow = get(f"{url}/wiki/api/v2/pages/1001/descendants", depth=1).json()["results"]
    assert [r["id"] for r in shallow] == ["1002", "1003"]


def test_single_page_with_body_format(demo: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = demo
    page = get(f"{url}/wiki/api/v2/pages/1004", **{"body-format": "storage"}).json()
    assert page["id"] == "1004"
    assert page["parentId"] == "1003"
    assert page["body"]["storage"]["value"] == "<p>Rows and columns.</p>"
    assert get(f"{url}/wiki/api/v2/pages/1004", **{"body-format": "nope"}).status_code == 400


def test_unknown_page_and_unknown_cloud_are_404(demo: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = demo
    response = get(f"{url}/wiki/api/v2/pages/424242/children")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "NOT_FOUND"
    assert get(f"{url}/ex/confluence/other-cloud/wiki/api/v2/pages/1001").status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2FuZGJveDp4"}],
)
def test_bearer_token_is_required(
    demo: tuple[ConfluenceV2Sandbox, str], headers: dict[str, str]
) -> None:
    _, url = demo
    response = requests.get(f"{url}/wiki/api/v2/pages/1001/children", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json() == {"code": 401, "message": "Unauthorized; scope does not match"}


def test_full_cursor_walk_of_descendants_collects_999_pages(
    big: tuple[ConfluenceV2Sandbox, str],
) -> None:
    sandbox, url = big
    results, calls = walk(url, f"/wiki/api/v2/pages/{ROOT}/descendants?limit=250")
    assert calls == 4
    assert len(results) == 999
    assert [r["id"] for r in results] == [p.id for p in sandbox.pages.descendants(ROOT)]


def test_link_header_walk_through_the_gateway_needs_the_prefix_restored(
    big: tuple[ConfluenceV2Sandbox, str],
) -> None:
    _, url = big
    first = requests.get(
        f"{url}/ex/confluence/sandbox-cloud-id/wiki/api/v2/pages/{ROOT}/descendants?limit=100",
        headers=AUTH,
        timeout=5,
    )
    nxt = first.links["next"]["url"]
    assert nxt == first.json()["_links"]["next"]
    assert nxt.startswith("/wiki/api/v2/")  # site-relative even on the gateway form
    results, _ = walk(f"{url}/ex/confluence/sandbox-cloud-id", nxt, via_header=True)
    assert len(first.json()["results"]) + len(results) == 999


def test_breadth_first_children_walk_collects_999_pages(
    big: tuple[ConfluenceV2Sandbox, str],
) -> None:
    sandbox, _ = big
    client = sandbox.app.test_client()  # one request per page: in-process keeps it fast
    found: list[str] = []
    queue = [ROOT]
    while queue:
        body = client.get(f"/wiki/api/v2/pages/{queue.pop(0)}/children?limit=250", headers=AUTH)
        assert "next" not in body.get_json()["_links"]
        ids = [c["id"] for c in body.get_json()["results"]]
        found.extend(ids)
        queue.extend(ids)
    assert len(set(found)) == len(found) == 999


def test_default_limit_is_25_and_pages_chain(flat: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = flat
    first = get(f"{url}/wiki/api/v2/pages/{ROOT}/children").json()
    assert len(first["results"]) == 25
    assert "cursor=" in first["_links"]["next"]
    results, calls = walk(url, f"/wiki/api/v2/pages/{ROOT}/children?limit=200")
    assert (len(results), calls) == (600, 3)


def test_confcloud_84015_direct_children_silently_stop_after_250(
    flat: tuple[ConfluenceV2Sandbox, str],
) -> None:
    _, url = flat
    first = get(f"{url}/wiki/api/v2/pages/{ROOT}/direct-children", limit=250).json()
    assert len(first["results"]) == 250
    assert all(r["childPosition"] is None for r in first["results"])
    second = requests.get(f"{url}{first['_links']['next']}", headers=AUTH, timeout=5)
    assert second.status_code == 200
    assert second.json()["results"] == []
    assert "next" not in second.json()["_links"]
    assert "Link" not in second.headers
    results, _ = walk(url, f"/wiki/api/v2/pages/{ROOT}/direct-children?limit=250")
    assert len(results) == 250  # 350 children lost by a naive client


def test_sort_by_id_works_around_confcloud_84015(flat: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = flat
    results, calls = walk(url, f"/wiki/api/v2/pages/{ROOT}/direct-children?limit=250&sort=id")
    assert (len(results), calls) == (600, 3)
    assert [r["id"] for r in results] == sorted((r["id"] for r in results), key=int)


def test_without_the_bug_direct_children_page_through() -> None:
    sandbox = ConfluenceV2Sandbox(wide_tree(pages=601, fanout=600), null_child_position_bug=False)
    with ServerThread(sandbox.app) as server:
        results, _ = walk(server.url, f"/wiki/api/v2/pages/{ROOT}/direct-children?limit=250")
    assert len(results) == 600
    assert [r["childPosition"] for r in results] == list(range(600))


def test_descending_sorts_and_created_date(demo: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = demo
    for sort, expected in [("-id", ["1003", "1002"]), ("created-date", ["1002", "1003"])]:
        results = get(f"{url}/wiki/api/v2/pages/1001/children", sort=sort).json()["results"]
        assert [r["id"] for r in results] == expected


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("children", {"sort": "title"}),
        ("children", {"limit": "0"}),
        ("children", {"limit": "ten"}),
        ("children", {"limit": "251"}),
        ("descendants", {"depth": "0"}),
        ("descendants", {"depth": "6"}),
    ],
)
def test_invalid_parameters_are_400(
    demo: tuple[ConfluenceV2Sandbox, str], path: str, params: dict[str, str]
) -> None:
    _, url = demo
    response = get(f"{url}/wiki/api/v2/pages/1001/{path}", **params)
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "INVALID_REQUEST_PARAMETER"


def test_over_limit_can_clamp_instead() -> None:
    sandbox = ConfluenceV2Sandbox(wide_tree(pages=601, fanout=600), over_limit="clamp")
    response = sandbox.app.test_client().get(
        f"/wiki/api/v2/pages/{ROOT}/children?limit=1000", headers=AUTH
    )
    assert len(response.get_json()["results"]) == 250


def test_tampered_or_foreign_cursor_is_400(flat: tuple[ConfluenceV2Sandbox, str]) -> None:
    _, url = flat
    nxt = get(f"{url}/wiki/api/v2/pages/{ROOT}/children").json()["_links"]["next"]
    cursor = parse_qs(urlsplit(nxt).query)["cursor"][0]
    tampered = cursor[:-1] + ("0" if cursor[-1] != "0" else "1")
    assert get(f"{url}/wiki/api/v2/pages/{ROOT}/children", cursor=tampered).status_code == 400
    foreign = get(f"{url}/wiki/api/v2/pages/{ROOT}/descendants", cursor=cursor)
    assert foreign.status_code == 400
    assert get(f"{url}/wiki/api/v2/pages/{ROOT}/children", cursor=cursor).status_code == 200


def test_injected_fault_and_call_log() -> None:
    tree = PageTree()
    tree.add("1", "Only")
    sandbox = ConfluenceV2Sandbox(tree)
    sandbox.inject(429, retry_after=3, path_contains="/children")
    client = sandbox.app.test_client()
    limited = client.get("/wiki/api/v2/pages/1/children", headers=AUTH)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert client.get("/wiki/api/v2/pages/1/children", headers=AUTH).status_code == 200
    assert [c.path for c in sandbox.calls] == ["/wiki/api/v2/pages/1/children"] * 2
