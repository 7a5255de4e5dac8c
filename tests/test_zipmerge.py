"""Merging the Markdown exporter's batch archives: names, placement, equality with one export."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bridge.sandbox.forge_markdown import APP_ID, ENV_IDS, ForgeMarkdownSandbox
from bridge.sandbox.pages import PageTree
from bridge.zipmerge import (
    BadArchiveError,
    Part,
    expected_layout,
    inspect_batch,
    is_page_file,
    merge,
    slugify,
    unique_slug,
    write_base64,
)

AUTH = {"Authorization": "Bearer sandbox-forge-token"}
BULK = f"/svc/confluence/sandbox-cloud-id/apps/{APP_ID}_{ENV_IDS['production']}/bulkExport"


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Getting Started", "getting-started"),
        ("Über Café: Ärger!", "uber-cafe-arger"),
        ("  a -- b  ", "a-b"),
        ("Q&A / FAQ (v2)", "qa-faq-v2"),
        ("???", ""),
    ],
)
def test_slugify_follows_the_documented_rules(title: str, slug: str) -> None:
    assert slugify(title) == slug


def test_unique_slug_numbers_later_siblings() -> None:
    used: set[str] = set()
    assert [unique_slug("notes", used) for _ in range(3)] == ["notes", "notes-2", "notes-3"]


def test_page_files_exclude_attachments() -> None:
    assert is_page_file("a.md") and is_page_file("a/b.md")
    assert not is_page_file("attachments/readme.md")
    assert not is_page_file("a/attachments/readme.md")
    assert not is_page_file("a/picture.png")


def test_expected_layout_nests_children_and_separates_equal_titles() -> None:
    layout = expected_layout(
        [("1", None, "Root"), ("2", "1", "Notes"), ("3", "1", "Notes"), ("4", "3", "!!")]
    )
    assert layout == {
        "1": "root.md",
        "2": "root/notes.md",
        "3": "root/notes-2.md",
        "4": "root/notes-2/page-4.md",
    }


@pytest.mark.parametrize("chunk", [4, 7, 1024])
def test_write_base64_decodes_slice_by_slice(chunk: int) -> None:
    data = bytes(range(256)) * 41
    text = base64.encodebytes(data).decode()  # with newlines every 76 characters
    out = io.BytesIO()
    assert write_base64(text, out, chunk=chunk) == len(data)
    assert out.getvalue() == data


@pytest.mark.parametrize("text", ["QUJD$", "QUJDRA"])
def test_write_base64_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        write_base64(text, io.BytesIO())


# --- merging real archives from the sandbox ---------------------------------------------


def handbook() -> ForgeMarkdownSandbox:
    """A root with two equally titled children, a nested page, and attachments."""
    tree = PageTree()
    tree.add("1", "Handbook")
    tree.add("2", "Notes", parent_id="1")
    tree.add("3", "Notes", parent_id="1")
    tree.add("4", "Guide", parent_id="1")
    tree.add("5", "Setup", parent_id="4")
    sandbox = ForgeMarkdownSandbox(tree, max_pages=100)
    sandbox.add_attachment("1", "cover.png", b"\x89PNG cover")
    sandbox.add_attachment("5", "diagram.pdf", b"%PDF- diagram")
    return sandbox


def export(sandbox: ForgeMarkdownSandbox, path: Path, **body: Any) -> Path:
    response = sandbox.app.test_client().post(
        BULK, json={"includeAttachments": True, "maxPages": 100, **body}, headers=AUTH
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    path.write_bytes(base64.b64decode(response.get_json()["zipBase64"]))
    return path


def contents(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


def test_batches_merge_into_what_one_export_makes(tmp_path: Path) -> None:
    sandbox = handbook()
    whole = export(sandbox, tmp_path / "whole.zip", pageId="1", bulkExport=True)
    parts = [Part(inspect_batch(export(sandbox, tmp_path / "1.zip", pageId="1")), "1", None)]
    for page_id in ("2", "3", "4"):
        path = export(sandbox, tmp_path / f"{page_id}.zip", pageId=page_id, bulkExport=True)
        parts.append(Part(inspect_batch(path), page_id, "1"))
    assert [p.archive.root_slug for p in parts] == ["handbook", "notes", "notes", "guide"]

    out = io.BytesIO()
    report = merge(parts, out)

    assert contents(out.getvalue()) == contents(whole.read_bytes())
    assert "handbook/notes-2.md" in dict(contents(out.getvalue()))
    assert report.pages == 5 and report.skipped == ()


def test_inspect_counts_pages_and_learns_the_root_slug(tmp_path: Path) -> None:
    archive = inspect_batch(export(handbook(), tmp_path / "4.zip", pageId="4", bulkExport=True))
    assert archive.root_slug == "guide"
    assert archive.page_files == {"guide.md", "guide/setup.md"}


def write_zip(path: Path, *names: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, f"content of {name}")
    return path


@pytest.mark.parametrize(
    "names", [(), ("a.md", "b.md"), ("attachments/x.png",)], ids=["empty", "two-roots", "no-md"]
)
def test_inspect_rejects_archives_without_one_root_page(tmp_path: Path, names: tuple[str]) -> None:
    with pytest.raises(BadArchiveError):
        inspect_batch(write_zip(tmp_path / "x.zip", *names))


def test_inspect_rejects_what_is_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(BadArchiveError, match="not a readable ZIP"):
        inspect_batch(tmp_path / "x.zip")


def test_merge_skips_unsafe_and_duplicate_names(tmp_path: Path) -> None:
    root = write_zip(tmp_path / "r.zip", "root.md", "attachments/a.png", "../evil.md")
    first = write_zip(tmp_path / "1.zip", "one.md", "attachments/a.png")
    second = write_zip(tmp_path / "2.zip", "two.md", "attachments/a.png")  # same folder
    parts = [
        Part(inspect_batch(root), "1", None),
        Part(inspect_batch(first), "2", "1"),
        Part(inspect_batch(second), "3", "1"),
    ]
    out = io.BytesIO()
    report = merge(parts, out)
    names = [name for name, _ in contents(out.getvalue())]
    assert names == [
        "root.md",
        "attachments/a.png",
        "root/one.md",
        "root/attachments/a.png",
        "root/two.md",
    ]
    assert report.skipped == ("../evil.md", "root/attachments/a.png")
    assert report.pages == 3


def test_merge_needs_parents_first(tmp_path: Path) -> None:
    child = write_zip(tmp_path / "c.zip", "child.md")
    with pytest.raises(BadArchiveError, match="before its parent"):
        merge([Part(inspect_batch(child), "2", "1")], io.BytesIO())
