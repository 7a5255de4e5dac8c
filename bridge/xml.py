"""The project's one hardened lxml parser module: every XML or HTML parse goes through here.

Policy:

* no entity expansion, no network, no DTD loading or validation, libxml2's size and depth
  limits kept (``huge_tree=False``), comments and processing instructions dropped;
* input longer than ``max_length`` characters is refused before parsing;
* XML: a DOCTYPE or ENTITY declaration is refused outright (XXE and "billion laughs" payloads
  fail fast instead of expanding); fragments are wrapped in a synthetic root, where a
  declaration cannot legally appear at all;
* HTML: libxml2's HTML parser never expands declared entities, so a plain
  ``<!DOCTYPE html ...>`` is accepted (real pages carry one), but any ``<!ENTITY`` and any
  DOCTYPE with an internal subset (``[...]``) is refused.

The module-level parsers may be shared between threads: lxml serialises use of one parser
context with a lock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from xml.sax.saxutils import quoteattr

from lxml import etree

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "FRAGMENT_ROOT_TAG",
    "HTML_PARSER",
    "XML_PARSER",
    "UnsafeOrMalformedMarkup",
    "parse_html",
    "parse_xml_document",
    "parse_xml_fragment",
]

DEFAULT_MAX_LENGTH = 2_000_000
"""Default upper bound, in characters, on markup accepted by the parse functions."""

FRAGMENT_ROOT_TAG = "bridge-fragment"
"""Tag of the synthetic element that :func:`parse_xml_fragment` wraps a fragment in."""

# Do not add collect_ids=False: with lxml 6.1 / libxml2 2.14 it makes the parser load
# external parameter entities (tests/test_macro.py::test_parser_config_never_reads_files).
XML_PARSER = etree.XMLParser(
    encoding="utf-8",
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    attribute_defaults=False,
    huge_tree=False,
    recover=False,
    remove_comments=True,
    remove_pis=True,
)
"""Hardened, non-recovering XML parser (fed UTF-8 bytes by this module)."""

HTML_PARSER = etree.HTMLParser(
    encoding="utf-8",
    no_network=True,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)
"""Hardened HTML parser (fed UTF-8 bytes by this module; HTML parsing always recovers)."""

_DECLARATION = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)\b", re.IGNORECASE)
_HTML_FORBIDDEN = re.compile(r"<!\s*ENTITY\b|<!\s*DOCTYPE\b[^>\[]*\[", re.IGNORECASE)
_NCNAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


class UnsafeOrMalformedMarkup(ValueError):
    """Raised when markup is malformed, too large, or declares a DTD or entities.

    ``reason`` is one of ``"too_large"``, ``"forbidden_declaration"``, ``"encoding"``,
    ``"empty"`` or ``"malformed"``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_xml_fragment(
    text: str,
    *,
    namespaces: Mapping[str, str] | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> etree._Element:
    """Parse an XML fragment (e.g. Confluence storage format) and return its synthetic root.

    The fragment may hold several top-level nodes and use the prefixes in ``namespaces``
    without declaring them; its nodes are the children of the returned
    ``FRAGMENT_ROOT_TAG`` element.

    :raises UnsafeOrMalformedMarkup: on oversize, malformed or declaration-bearing input.
    """
    _checked_utf8(text, max_length)
    declarations = _namespace_declarations(namespaces or {})
    return _parse_xml(text, f"<{FRAGMENT_ROOT_TAG}{declarations}>{text}</{FRAGMENT_ROOT_TAG}>")


def parse_xml_document(text: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> etree._Element:
    """Parse a complete XML document without DOCTYPE and return its root element.

    :raises UnsafeOrMalformedMarkup: on oversize, malformed or declaration-bearing input.
    """
    _checked_utf8(text, max_length)
    if _DECLARATION.search(text):
        # Refused before libxml2 reads any subset (may also refuse such text inside CDATA).
        raise UnsafeOrMalformedMarkup("forbidden_declaration", "DOCTYPE/ENTITY not allowed")
    root = _parse_xml(text, text)
    if root.getroottree().docinfo.internalDTD is not None:
        raise UnsafeOrMalformedMarkup("forbidden_declaration", "DOCTYPE not allowed")
    return root


def parse_html(text: str, *, max_length: int = DEFAULT_MAX_LENGTH) -> etree._Element:
    """Parse an HTML document or fragment and return the ``<html>`` root element.

    :raises UnsafeOrMalformedMarkup: on oversize, empty or entity-declaring input.
    """
    _checked_utf8(text, max_length)
    if _HTML_FORBIDDEN.search(text):
        raise UnsafeOrMalformedMarkup(
            "forbidden_declaration", "ENTITY declarations and DTD subsets are not allowed"
        )
    try:
        root = etree.fromstring(text.encode("utf-8"), HTML_PARSER)
    except etree.LxmlError as exc:
        raise UnsafeOrMalformedMarkup("malformed", _first_line(str(exc))) from exc
    if root is None:
        raise UnsafeOrMalformedMarkup("empty", "no HTML content")
    return root


def _checked_utf8(text: str, max_length: int) -> str:
    """Return ``text`` after checking its type, length and UTF-8 encodability."""
    if not isinstance(text, str):
        raise TypeError(f"markup must be str, not {type(text).__name__}")
    if len(text) > max_length:
        raise UnsafeOrMalformedMarkup("too_large", f"{len(text)} > {max_length} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafeOrMalformedMarkup("encoding", "not encodable as UTF-8") from exc
    return text


def _parse_xml(original: str, document: str) -> etree._Element:
    """Parse ``document`` with :data:`XML_PARSER`, classifying failures by ``original``."""
    try:
        return etree.fromstring(document.encode("utf-8"), XML_PARSER)
    except etree.LxmlError as exc:
        reason = "forbidden_declaration" if _DECLARATION.search(original) else "malformed"
        raise UnsafeOrMalformedMarkup(reason, _first_line(str(exc))) from exc


def _namespace_declarations(namespaces: Mapping[str, str]) -> str:
    """Render ``xmlns:prefix="uri"`` attributes for the synthetic fragment root."""
    parts = []
    for prefix, uri in namespaces.items():
        if not _NCNAME.fullmatch(prefix) or prefix.lower().startswith("xml"):
            raise ValueError(f"invalid namespace prefix {prefix!r}")
        parts.append(f" xmlns:{prefix}={quoteattr(uri)}")
    return "".join(parts)


def _first_line(message: str) -> str:
    """Return the first line of a libxml2 message, capped in length."""
    return message.splitlines()[0][:200] if message else "parse error"
