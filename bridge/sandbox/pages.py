"""The page catalogue every sandbox upstream serves from, so ids agree across them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Page:
    """A Confluence page as the sandboxes know it."""

    id: str
    title: str
    space_key: str
    body: str = ""
    parent_id: str | None = None
    children: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    pad_to: int | None = None
    """Grow exported PDFs of this page to this many bytes (for streaming tests)."""


class PageTree:
    """Pages by id with parent/child links, in child-position order."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}

    def add(
        self,
        page_id: str,
        title: str,
        space_key: str = "DOCS",
        parent_id: str | None = None,
        body: str = "",
        pad_to: int | None = None,
        labels: list[str] | None = None,
    ) -> Page:
        page = Page(
            page_id,
            title,
            space_key,
            body or f"Content of {title}.",
            parent_id,
            labels=list(labels or []),
            pad_to=pad_to,
        )
        self.pages[page_id] = page
        if parent_id is not None:
            self.pages[parent_id].children.append(page_id)
        return page

    def get(self, page_id: str) -> Page | None:
        return self.pages.get(str(page_id))

    def descendants(self, page_id: str) -> Iterator[Page]:
        """Yield the descendants of *page_id* top to bottom (depth first, pre-order)."""
        for child_id in self.pages[page_id].children:
            yield self.pages[child_id]
            yield from self.descendants(child_id)

    def space(self, space_key: str) -> list[Page]:
        return [p for p in self.pages.values() if p.space_key == space_key]

    def roots(self, space_key: str) -> list[Page]:
        return [p for p in self.space(space_key) if p.parent_id is None]


def demo_tree() -> PageTree:
    """A small space ``DOCS`` with a root page, two children and a grandchild."""
    tree = PageTree()
    tree.add("1001", "Product Handbook", body="Welcome to the handbook.")
    tree.add("1002", "Getting Started", parent_id="1001", body="Install, then run.")
    tree.add("1003", "Architecture", parent_id="1001", body="Boxes and arrows.")
    tree.add("1004", "Storage Layer", parent_id="1003", body="Rows and columns.")
    tree.add("2001", "Release Notes", space_key="REL", body="Version 1.0 is out.")
    return tree


def wide_tree(
    root_id: str = "500000", pages: int = 1000, fanout: int = 10, space_key: str = "BIG"
) -> PageTree:
    """A tree of *pages* pages under one root, each node with up to *fanout* children."""
    tree = PageTree()
    tree.add(root_id, "Big Root", space_key=space_key)
    queue = [root_id]
    next_id = int(root_id) + 1
    while len(tree.pages) < pages:
        parent = queue.pop(0)
        for _ in range(fanout):
            if len(tree.pages) >= pages:
                break
            page_id = str(next_id)
            next_id += 1
            tree.add(page_id, f"Page {page_id}", space_key=space_key, parent_id=parent)
            queue.append(page_id)
    return tree
