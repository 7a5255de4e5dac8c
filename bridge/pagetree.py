"""Read a Confluence Cloud page tree through the v2 REST API, and cut it into export batches.

The Forge Markdown exporter caps one call at 100 pages (and 25 s, ~5 MB), so larger trees
are exported piecewise; this module knows the tree, :mod:`bridge.zipmerge` puts the pieces
back together.

Walking (upstreams.md §6.2):

- ``GET /wiki/api/v2/pages/{id}/descendants?limit=&depth=`` by default: top-to-bottom order,
  one listing for the whole tree as long as it is at most ``depth`` levels deep. Entries at
  the depth limit are walked again with their own type's ``descendants`` endpoint.
- ``children`` / ``direct-children`` walk level by level and always send ``sort=id``: with
  the default child-position sort, ``direct-children`` answers an empty last page and no
  further ``next`` link when ``childPosition`` is null (CONFCLOUD-84015).
- Cursor paging follows ``_links.next`` (or the ``Link`` header) to the end, never
  truncating; a repeated cursor or a tree over ``max_pages`` is an error, not a short tree.
  The next link is site-relative (``/wiki/api/v2/…``) even when the API is reached through
  the gateway (``https://api.atlassian.com/ex/confluence/{cloudId}``), so the prefix of the
  configured base URL is put back.
- Only current pages are exported. Other content (folders, whiteboards, archived pages) is
  see-through: pages below it hang from their nearest exported ancestor (UNCONFIRMED: how the
  exporter itself files such pages is not documented).

Batching (:func:`plan_batches`): an export call names one page and takes either that page
alone or the page with *all* its descendants. So a subtree that fits in a batch is one
call, and a page whose subtree does not fit is exported alone while its children are
planned the same way. Every page is in exactly one batch, and no cover of the tree with
such calls has fewer batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from bridge.errors import UpstreamResponseError
from bridge.http import UpstreamClient

TreeEndpoint = Literal["descendants", "children", "direct-children"]
API = "/wiki/api/v2"


@dataclass(frozen=True)
class TreePage:
    """One page of a walked tree."""

    id: str
    title: str
    parent_id: str | None


@dataclass
class Tree:
    """A page and its descendant pages; each page's children in child-position order."""

    root_id: str
    pages: dict[str, TreePage]
    children: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pages)

    def kids(self, page_id: str) -> list[str]:
        """The child pages of *page_id*, in order."""
        return self.children.get(page_id, [])

    def preorder(self, page_id: str | None = None) -> Iterator[str]:
        """The ids of *page_id* (default: the root) and its descendants, top to bottom."""
        stack = [page_id or self.root_id]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(reversed(self.kids(current)))

    def subtree_sizes(self) -> dict[str, int]:
        """Pages in each page's subtree, the page included."""
        sizes: dict[str, int] = {}
        for page_id in reversed(list(self.preorder())):
            sizes[page_id] = 1 + sum(sizes[c] for c in self.kids(page_id))
        return sizes

    def describe(self, page_ids: list[str], limit: int = 10) -> str:
        """``id 'title'`` for the first *limit* pages, then how many more."""
        named = [f"{pid} {self.pages[pid].title!r}" for pid in page_ids[:limit]]
        more = len(page_ids) - limit
        return ", ".join(named) + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class Batch:
    """One export call: a page alone, or a page with all its descendants."""

    root_id: str
    with_descendants: bool
    page_ids: tuple[str, ...]


def plan_batches(tree: Tree, limit: int, start: str | None = None) -> list[Batch]:
    """Cover the subtree at *start* (default: the root) with batches of at most *limit* pages.

    Batches come in the tree's top-to-bottom order of their root pages.
    """
    if limit < 1:
        raise ValueError("a batch holds at least one page")
    sizes = tree.subtree_sizes()
    batches: list[Batch] = []
    stack = [start or tree.root_id]
    while stack:
        page_id = stack.pop()
        if sizes[page_id] <= limit:
            batches.append(Batch(page_id, True, tuple(tree.preorder(page_id))))
        else:
            batches.append(Batch(page_id, False, (page_id,)))
            stack.extend(reversed(tree.kids(page_id)))
    return batches


@dataclass
class _Node:
    id: str
    title: str
    type: str
    current: bool
    position: int | None
    children: list[str] = field(default_factory=list)


class TreeWalker:
    """Walks a page tree with cursor paging, against the site or the API gateway."""

    def __init__(
        self,
        client: UpstreamClient,
        base_url: str,
        headers: Mapping[str, str],
        *,
        endpoint: TreeEndpoint = "descendants",
        limit: int = 250,
        depth: int = 5,
        max_pages: int = 100_000,
    ) -> None:
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers)
        self.endpoint = endpoint
        self.limit = limit
        self.depth = depth
        self.max_pages = max_pages

    def root(self, page_id: str) -> TreePage:
        """The page itself (``GET /pages/{id}``)."""
        response = self.client.request(
            "GET", f"{self.base_url}{API}/pages/{page_id}", headers=self.headers
        )
        data = self.client.json(response)
        if not isinstance(data, dict) or str(data.get("id")) != page_id:
            raise UpstreamResponseError(
                f"Confluence answered something other than page {page_id}",
                backend=self.client.backend,
            )
        return TreePage(page_id, str(data.get("title") or ""), None)

    def walk(self, root: TreePage) -> Tree:
        """Every current page below *root*, read to the last cursor."""
        nodes = {root.id: _Node(root.id, root.title, "page", True, None)}
        pending = [root.id]
        while pending:
            node_id = pending.pop()
            for item, at_depth in self._listing(nodes[node_id]):
                parent_id = str(item.get("parentId") or node_id)
                if item["id"] in nodes:
                    continue  # the tree moved while we paged; keep the first sighting
                nodes[item["id"]] = item_node = _node(item)
                nodes.get(parent_id, nodes[node_id]).children.append(item_node.id)
                if at_depth:
                    pending.append(item_node.id)
                if len(nodes) > self.max_pages:
                    raise UpstreamResponseError(
                        f"the tree under page {root.id} has more than {self.max_pages} "
                        "pages (max_tree_pages)",
                        backend=self.client.backend,
                    )
        return _page_tree(root, nodes)

    def _listing(self, node: _Node) -> Iterator[tuple[dict[str, Any], bool]]:
        """The node's descendants or children, each with "walk it again" (depth reached)."""
        path = f"{API}/{node.type}s/{node.id}/{self.endpoint}"
        params = {"limit": str(self.limit)}
        if self.endpoint == "descendants":
            params["depth"] = str(self.depth)
        else:
            params["sort"] = "id"  # CONFCLOUD-84015
        for item in self.paged(path, params):
            if self.endpoint == "descendants":
                depth = item.get("depth")
                yield item, isinstance(depth, int) and depth >= self.depth
            else:
                yield item, True

    def paged(self, path: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Every result of a v2 list endpoint, following the cursor to the end."""
        url = f"{self.base_url}{path}"
        query: Mapping[str, str] | None = params
        seen = {url}
        while True:
            response = self.client.request("GET", url, params=query, headers=self.headers)
            data = self.client.json(response)
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list):
                raise UpstreamResponseError(
                    f"Confluence's {path} answer has no results list", backend=self.client.backend
                )
            for item in results:
                yield _checked(item, self.client.backend)
            links = data.get("_links")
            next_link = links.get("next") if isinstance(links, dict) else None
            next_link = next_link or response.links.get("next", {}).get("url")
            if not next_link:
                return
            url, query = next_url(self.base_url, str(next_link)), None
            if url in seen:
                raise UpstreamResponseError(
                    f"Confluence's {path} paging repeats a cursor", backend=self.client.backend
                )
            seen.add(url)


def next_url(base_url: str, link: str) -> str:
    """The absolute URL of a v2 ``next`` link, with *base_url*'s path prefix restored.

    ``base_url`` is where ``/wiki/api/v2`` hangs: a site (``https://x.atlassian.net``) or
    the gateway (``https://api.atlassian.com/ex/confluence/{cloudId}``).
    """
    base = urlsplit(base_url.rstrip("/"))
    parts = urlsplit(link)
    path = parts.path
    if path.startswith(f"{base.path}/wiki/") and base.path:
        full = path
    elif path.startswith("/wiki/"):
        full = base.path + path
    elif path.startswith("/api/v2/"):
        full = f"{base.path}/wiki{path}"
    else:
        raise UpstreamResponseError(f"unusable next link {link[:200]!r}", backend="confluence-v2")
    return urlunsplit((base.scheme, base.netloc, full, parts.query, ""))


def _checked(item: object, backend: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str | int):
        raise UpstreamResponseError("Confluence listed an entry without an id", backend=backend)
    return {**item, "id": str(item["id"])}


def _node(item: dict[str, Any]) -> _Node:
    position = item.get("childPosition")
    return _Node(
        id=item["id"],
        title=str(item.get("title") or ""),
        type=str(item.get("type") or "page"),
        current=item.get("status") in (None, "current"),
        position=position if isinstance(position, int) else None,
    )


def _page_tree(root: TreePage, nodes: dict[str, _Node]) -> Tree:
    """Keep current pages; anything else passes its pages up to the nearest kept ancestor."""
    tree = Tree(root.id, {root.id: root}, {})
    stack: list[tuple[str, str]] = [(root.id, root.id)]
    while stack:
        node_id, page_parent = stack.pop()
        node = nodes[node_id]
        keep = node_id != root.id and node.type == "page" and node.current
        if keep:
            tree.pages[node_id] = TreePage(node_id, node.title, page_parent)
            tree.children.setdefault(page_parent, []).append(node_id)
        below = node_id if node_id == root.id or keep else page_parent
        kids = node.children
        if kids and all(nodes[k].position is not None for k in kids):
            kids = sorted(kids, key=lambda k: nodes[k].position or 0)
        stack.extend((kid, below) for kid in reversed(kids))
    return tree
