"""Walking page trees through the Confluence v2 API, and planning export batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask, Response, request

from bridge.config import RetrySettings
from bridge.errors import UpstreamRejectedError, UpstreamResponseError
from bridge.http import UpstreamClient
from bridge.pagetree import Batch, Tree, TreePage, TreeWalker, next_url, plan_batches
from bridge.sandbox.confluence_v2 import ConfluenceV2Sandbox
from bridge.sandbox.harness import ServerThread
from bridge.sandbox.pages import PageTree, wide_tree

AUTH = {"Authorization": "Bearer sandbox-forge-token"}
GATEWAY = "/ex/confluence/sandbox-cloud-id"


@pytest.fixture
def client() -> Iterator[UpstreamClient]:
    upstream = UpstreamClient("forge-markdown", RetrySettings(attempts=1))
    yield upstream
    upstream.close()


def serve(app: Flask) -> ServerThread:
    return ServerThread(app).start()


def walk(
    client: UpstreamClient, sandbox: ConfluenceV2Sandbox, root: str, **kwargs: Any
) -> tuple[Tree, list[str]]:
    """Walk *root* through the gateway form; return the tree and the listing calls made."""
    server = serve(sandbox.app)
    try:
        walker = TreeWalker(client, f"{server.url}{GATEWAY}", AUTH, **kwargs)
        tree = walker.walk(walker.root(root))
    finally:
        server.stop()
    return tree, [c.path for c in sandbox.calls]


def sandbox_order(pages: PageTree, root: str) -> list[str]:
    return [root, *(p.id for p in pages.descendants(root))]


def test_descendants_walk_reads_every_cursor_through_the_gateway(client: UpstreamClient) -> None:
    pages = wide_tree(pages=1000)
    sandbox = ConfluenceV2Sandbox(pages)
    tree, calls = walk(client, sandbox, "500000", limit=25)

    assert len(tree) == 1000
    assert list(tree.preorder()) == sandbox_order(pages, "500000")
    assert all(tree.pages[p.id].parent_id == p.parent_id for p in pages.pages.values())
    assert tree.pages["500000"].title == "Big Root"
    assert calls.count(f"{GATEWAY}/wiki/api/v2/pages/500000/descendants") == 40
    assert all(path.startswith(GATEWAY) for path in calls)  # the prefix was put back


def chain(length: int) -> PageTree:
    pages = PageTree()
    pages.add("1", "Level 1")
    for n in range(2, length + 1):
        pages.add(str(n), f"Level {n}", parent_id=str(n - 1))
        pages.add(f"{n}00", f"Leaf {n}", parent_id=str(n - 1))
    return pages


def test_descendants_past_the_depth_limit_are_walked_again(client: UpstreamClient) -> None:
    pages = chain(13)
    tree, calls = walk(client, ConfluenceV2Sandbox(pages), "1")
    assert list(tree.preorder()) == sandbox_order(pages, "1")
    listed = {path.rsplit("/", 2)[-2] for path in calls if path.endswith("/descendants")}
    assert listed == {"1", "6", "600", "11", "1100"}  # the depth-5 entries, walked again


def many_children(count: int) -> PageTree:
    pages = PageTree()
    pages.add("1", "Parent")
    for n in range(count):
        pages.add(str(1000 + n), f"Child {n}", parent_id="1")
    return pages


@pytest.mark.parametrize("endpoint", ["children", "direct-children"])
def test_level_walks_sort_by_id_and_dodge_confcloud_84015(
    client: UpstreamClient, endpoint: Any
) -> None:
    pages = many_children(260)
    sandbox = ConfluenceV2Sandbox(pages, null_child_position_bug=True)
    tree, _ = walk(client, sandbox, "1", endpoint=endpoint, limit=250)
    assert len(tree.kids("1")) == 260
    listings = [c for c in sandbox.calls if c.path.endswith(f"/{endpoint}")]
    assert listings[0].query["sort"] == "id"


def test_without_sort_direct_children_would_lose_pages(client: UpstreamClient) -> None:
    """The bug the ``sort=id`` above avoids: the second page comes back empty, with no next."""
    sandbox = ConfluenceV2Sandbox(many_children(260), null_child_position_bug=True)
    server = serve(sandbox.app)
    try:
        walker = TreeWalker(client, server.url, AUTH)
        listed = list(walker.paged("/wiki/api/v2/pages/1/direct-children", {"limit": "250"}))
    finally:
        server.stop()
    assert len(listed) == 250


@pytest.mark.parametrize(
    ("base", "link", "expected"),
    [
        (
            "https://api.atlassian.com/ex/confluence/abc",
            "/wiki/api/v2/pages/1/children?cursor=x",
            "https://api.atlassian.com/ex/confluence/abc/wiki/api/v2/pages/1/children?cursor=x",
        ),
        (
            "https://api.atlassian.com/ex/confluence/abc/",
            "/ex/confluence/abc/wiki/api/v2/pages/1/children?cursor=x",
            "https://api.atlassian.com/ex/confluence/abc/wiki/api/v2/pages/1/children?cursor=x",
        ),
        (
            "https://x.atlassian.net",
            "/wiki/api/v2/pages/1/descendants?cursor=y&limit=25",
            "https://x.atlassian.net/wiki/api/v2/pages/1/descendants?cursor=y&limit=25",
        ),
        (
            "https://x.atlassian.net",
            "/api/v2/pages/1/children?cursor=z",
            "https://x.atlassian.net/wiki/api/v2/pages/1/children?cursor=z",
        ),
        (
            "https://api.atlassian.com/ex/confluence/abc",
            "https://evil.example/wiki/api/v2/pages/1/children?cursor=x",
            "https://api.atlassian.com/ex/confluence/abc/wiki/api/v2/pages/1/children?cursor=x",
        ),
    ],
)
def test_next_links_are_rebased_on_the_configured_url(base: str, link: str, expected: str) -> None:
    assert next_url(base, link) == expected


def test_a_next_link_outside_the_api_is_refused() -> None:
    with pytest.raises(UpstreamResponseError, match="unusable next link"):
        next_url("https://x.atlassian.net", "/admin/steal")


# --- a hand-made v2 API for shapes the sandbox does not produce -----------------------------


def fake_v2(
    listing: list[dict[str, Any]], *, link_header: bool = True, loop: bool = False
) -> Flask:
    """Descendants of page 1 served two at a time, ``next`` only in the Link header."""
    app = Flask(__name__)

    @app.get("/wiki/api/v2/pages/<page_id>")
    def page(page_id: str) -> Response:
        return Response(json.dumps({"id": page_id, "title": "Root"}), mimetype="application/json")

    @app.get("/wiki/api/v2/pages/<page_id>/descendants")
    def descendants(page_id: str) -> Response:
        offset = int(request.args.get("cursor", "0"))
        window = listing[offset : offset + 2] if page_id == "1" else []
        response = Response(
            json.dumps({"results": window, "_links": {}}), mimetype="application/json"
        )
        more = offset + 2 < len(listing)
        if more or loop:
            cursor = 0 if loop else offset + 2
            response.headers["Link"] = (
                f'</wiki/api/v2/pages/1/descendants?cursor={cursor}>; rel="next"'
            )
        return response

    return app


def item(
    page_id: str, parent: str, *, kind: str = "page", status: str = "current"
) -> dict[str, Any]:
    return {
        "id": int(page_id),
        "title": f"T{page_id}",
        "type": kind,
        "status": status,
        "parentId": parent,
        "depth": 1,
    }


def walk_fake(client: UpstreamClient, app: Flask, **kwargs: Any) -> Tree:
    server = serve(app)
    try:
        walker = TreeWalker(client, server.url, AUTH, **kwargs)
        return walker.walk(TreePage("1", "Root", None))
    finally:
        server.stop()


def test_link_header_paging_and_see_through_folders(client: UpstreamClient) -> None:
    listing = [
        item("2", "1"),
        item("3", "1", kind="folder"),
        item("4", "3"),  # a page in a folder: hangs from page 1
        item("5", "1", status="archived"),
        item("6", "5"),  # below an archived page: hangs from page 1
        item("7", "2"),
    ]
    tree = walk_fake(client, fake_v2(listing))
    assert list(tree.preorder()) == ["1", "2", "7", "4", "6"]
    assert tree.pages["4"].parent_id == "1" and tree.pages["6"].parent_id == "1"


def test_a_repeated_cursor_is_an_error_not_a_short_tree(client: UpstreamClient) -> None:
    with pytest.raises(UpstreamResponseError, match="repeats a cursor"):
        walk_fake(client, fake_v2([item("2", "1")], loop=True))


def test_a_tree_over_the_page_limit_is_an_error(client: UpstreamClient) -> None:
    listing = [item(str(n), "1") for n in range(2, 12)]
    with pytest.raises(UpstreamResponseError, match="more than 5 pages"):
        walk_fake(client, fake_v2(listing), max_pages=5)


def test_upstream_refusals_surface(client: UpstreamClient) -> None:
    sandbox = ConfluenceV2Sandbox(wide_tree(pages=10), tokens=("other",))
    with pytest.raises(UpstreamRejectedError) as caught:
        walk(client, sandbox, "500000")
    assert caught.value.upstream_status == 401


# --- batch planning --------------------------------------------------------------------------


def as_tree(pages: PageTree, root: str) -> Tree:
    tree = Tree(root, {})
    for page_id in sandbox_order(pages, root):
        page = pages.pages[page_id]
        parent = page.parent_id if page_id != root else None
        tree.pages[page_id] = TreePage(page_id, page.title, parent)
        if parent is not None:
            tree.children.setdefault(parent, []).append(page_id)
    return tree


def check_cover(tree: Tree, batches: list[Batch], limit: int) -> None:
    covered = [pid for batch in batches for pid in batch.page_ids]
    assert sorted(covered) == sorted(tree.pages)  # every page exactly once
    sizes = tree.subtree_sizes()
    order = {pid: n for n, pid in enumerate(tree.preorder())}
    assert [order[b.root_id] for b in batches] == sorted(order[b.root_id] for b in batches)
    for batch in batches:
        assert len(batch.page_ids) <= limit
        if batch.with_descendants:
            assert batch.page_ids == tuple(tree.preorder(batch.root_id))
        else:  # alone only because its subtree does not fit
            assert batch.page_ids == (batch.root_id,) and sizes[batch.root_id] > limit


def test_plan_for_a_thousand_pages() -> None:
    tree = as_tree(wide_tree(pages=1000), "500000")
    batches = plan_batches(tree, 100)
    check_cover(tree, batches, 100)
    assert len(batches) == 91
    assert sum(not b.with_descendants for b in batches) == 9  # the root and 8 of its children


@pytest.mark.parametrize("limit", [1, 7, 50, 1000])
def test_plans_cover_the_tree_for_any_limit(limit: int) -> None:
    tree = as_tree(wide_tree(pages=300, fanout=4), "500000")
    batches = plan_batches(tree, limit)
    check_cover(tree, batches, limit)
    if limit >= 300:
        assert batches == [Batch("500000", True, tuple(tree.preorder()))]


def test_a_subtree_can_be_planned_on_its_own() -> None:
    tree = as_tree(wide_tree(pages=1000), "500000")
    batches = plan_batches(tree, 5, start="500001")
    assert {pid for b in batches for pid in b.page_ids} == set(tree.preorder("500001"))
    assert batches[0] == Batch("500001", False, ("500001",))
