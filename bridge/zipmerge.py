"""Merge the Markdown exporter's batch archives into the one archive a single export makes.

The exporter's ZIP mirrors the page hierarchy (seeds/forge-markdown-export-api.txt): each
page is ``{slug}.md``, its attachments go to ``attachments/`` beside it, and its children
to the folder ``{slug}/``. A batch exported from page *P* has *P* at its top level; merged,
that top level becomes the folder of *P*'s parent.

Only the slug of each batch's root page is learned from its archive (the one ``.md`` at the
top); pages inside a batch keep the exporter's own names. Two batch roots that are siblings
and slug alike get ``-2``, ``-3``… in tree order, as siblings inside one export do
(UNCONFIRMED: the seed does not say how the exporter separates equal slugs).
:func:`expected_layout` predicts names from titles only to *name* missing pages.
"""

from __future__ import annotations

import base64
import re
import shutil
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

PAGE_SUFFIX = ".md"
ATTACHMENTS = "attachments"
COPY_CHUNK = 256 * 1024
BASE64_CHUNK = 64 * 1024


class BadArchiveError(ValueError):
    """A batch archive the merge cannot use."""


def slugify(title: str) -> str:
    """The exporter's file name for *title*: ASCII, lowercase, specials dropped, spaces to ``-``."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    kept = re.sub(r"[^a-z0-9\s-]", "", ascii_title.lower())
    return re.sub(r"-{2,}", "-", re.sub(r"\s+", "-", kept.strip())).strip("-")


def unique_slug(slug: str, used: set[str]) -> str:
    """*slug*, or ``slug-2``, ``slug-3``… if a sibling already has it; remembered in *used*."""
    candidate, number = slug, 1
    while candidate in used:
        number += 1
        candidate = f"{slug}-{number}"
    used.add(candidate)
    return candidate


def is_page_file(name: str) -> bool:
    """Whether archive entry *name* is a page (not an attachment that happens to be ``.md``)."""
    folders = name.split("/")[:-1]
    return name.endswith(PAGE_SUFFIX) and not (folders and folders[-1] == ATTACHMENTS)


def expected_layout(pages: Sequence[tuple[str, str | None, str]]) -> dict[str, str]:
    """Where one export files each page, from ``(id, parent id, title)`` top to bottom.

    A page whose parent is not among *pages* sits at the top level.
    """
    folders: dict[str, str] = {}
    used: dict[str, set[str]] = {}
    layout: dict[str, str] = {}
    for page_id, parent_id, title in pages:
        folder = folders.get(parent_id or "", "")
        slug = unique_slug(slugify(title) or f"page-{page_id}", used.setdefault(folder, set()))
        folders[page_id] = f"{folder}{slug}/"
        layout[page_id] = f"{folder}{slug}{PAGE_SUFFIX}"
    return layout


@dataclass(frozen=True)
class BatchArchive:
    """A batch's ZIP on disk, with what the merge needs to know about it."""

    path: Path
    root_slug: str
    page_files: frozenset[str]


def inspect_batch(path: Path) -> BatchArchive:
    """Read a batch archive's table of contents.

    :raises BadArchiveError: not a ZIP, or not exactly one page file at its top level.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadArchiveError(f"not a readable ZIP archive ({exc})") from None
    tops = [n for n in names if "/" not in n and n.endswith(PAGE_SUFFIX)]
    if len(tops) != 1:
        raise BadArchiveError(f"expected one page file at the top level, found {len(tops)}")
    pages = frozenset(n for n in names if is_page_file(n))
    return BatchArchive(path, tops[0].removesuffix(PAGE_SUFFIX), pages)


@dataclass(frozen=True)
class Part:
    """A batch archive and where its root page hangs in the whole tree."""

    archive: BatchArchive
    page_id: str
    parent_id: str | None
    """The root page's parent; ``None`` for the export's own root."""


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge` wrote."""

    entries: int
    pages: int
    skipped: tuple[str, ...]
    """Entries left out: unsafe names, or a name already taken (e.g. two equal attachments)."""


def merge(parts: Sequence[Part], out: BinaryIO) -> MergeReport:
    """Write *parts* (in the tree's top-to-bottom order of their roots) as one ZIP to *out*.

    :raises BadArchiveError: a part comes before the part holding its parent page.
    """
    children_folder: dict[str, str] = {}
    used: dict[str, set[str]] = {}
    written: set[str] = set()
    skipped: list[str] = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for part in parts:
            if part.parent_id is None:
                folder = ""
            elif part.parent_id in children_folder:
                folder = children_folder[part.parent_id]
            else:
                raise BadArchiveError(f"page {part.page_id} comes before its parent's archive")
            slug = unique_slug(part.archive.root_slug, used.setdefault(folder, set()))
            children_folder[part.page_id] = f"{folder}{slug}/"
            with zipfile.ZipFile(part.archive.path) as source:
                for info in source.infolist():
                    name = _placed(info.filename, part.archive.root_slug, folder, slug)
                    if name is None or name in written:
                        skipped.append(info.filename if name is None else name)
                        continue
                    written.add(name)
                    _copy(source, info, target, name)
    pages = sum(1 for name in written if is_page_file(name))
    return MergeReport(len(written), pages, tuple(skipped))


def _placed(name: str, old_slug: str, folder: str, slug: str) -> str | None:
    """Where entry *name* of a batch whose root is *old_slug* goes; ``None`` if unsafe."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in parts):
        return None
    if name == f"{old_slug}{PAGE_SUFFIX}":
        return f"{folder}{slug}{PAGE_SUFFIX}"
    if name.startswith(f"{old_slug}/"):
        return f"{folder}{slug}/{name[len(old_slug) + 1 :]}"
    return f"{folder}{name}"


def _copy(
    source: zipfile.ZipFile, info: zipfile.ZipInfo, target: zipfile.ZipFile, name: str
) -> None:
    entry = zipfile.ZipInfo(name, info.date_time)
    entry.external_attr = info.external_attr
    entry.compress_type = zipfile.ZIP_DEFLATED
    if info.is_dir():
        target.writestr(entry, b"")
        return
    entry.file_size = info.file_size
    with source.open(info) as reader, target.open(entry, "w") as writer:
        shutil.copyfileobj(reader, writer, COPY_CHUNK)


def write_base64(text: str, out: BinaryIO, chunk: int = BASE64_CHUNK) -> int:
    """Decode base64 *text* into *out* a slice at a time; return the bytes written.

    :raises ValueError: *text* is not valid base64.
    """
    carry, written = "", 0
    for start in range(0, len(text), chunk):
        piece = carry + "".join(text[start : start + chunk].split())
        usable = len(piece) - len(piece) % 4
        data = base64.b64decode(piece[:usable], validate=True)
        carry = piece[usable:]
        out.write(data)
        written += len(data)
    if carry:
        raise ValueError("base64 text ends mid-quantum")
    return written
