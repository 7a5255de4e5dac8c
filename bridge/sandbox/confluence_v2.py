"""Confluence Cloud REST v2 page-tree API: children, direct-children, descendants, one page.

Written from upstreams.md §6.2 (CJS models of Atlassian's Cloud OpenAPI) and the public
issue threads on v2 pagination. Used by the bridge to walk trees too big for one Forge
Markdown export (more than 100 pages).

What is modelled, and the choices taken where the contract is UNCONFIRMED:

- Both URL forms: ``/wiki/api/v2/...`` on the site and ``/ex/confluence/{cloudId}/wiki/api/v2/...``
  on the API gateway. ``_links.next`` and the ``Link`` header are always site-relative
  (``/wiki/api/v2/...``) even on the gateway form, as real Confluence answers; a client must
  re-prefix them itself.
- Bearer auth only; a missing or unknown token is answered ``401`` with the gateway's
  ``{"code": 401, "message": "Unauthorized; scope does not match"}``.
- Cursors are opaque: base64url JSON bound to the endpoint, the page, the sort and the depth,
  followed by an HMAC. A tampered or foreign cursor is ``400``.
- ``limit`` defaults to 25 and may be at most 250 (UNCONFIRMED). Above the maximum the
  sandbox answers ``400`` (``over_limit="reject"``) or silently clamps (``"clamp"``).
- ``depth`` on descendants is 1..5, default 5 (UNCONFIRMED); outside that range is ``400``.
- ``sort`` on children endpoints: created-date, id, child-position, modified-date, each with
  an optional ``-``; the sandbox has no edit history, so modified-date orders as created-date.
- CONFCLOUD-84015: with ``null_child_position_bug`` every page reports ``childPosition: null``,
  and ``direct-children`` sorted by child position with ``limit=250`` answers the first
  ``next`` link with an EMPTY page that has no further ``next``, although more children
  exist. ``sort=id`` avoids it.

This module also holds :class:`RecordedCall`, :class:`FaultInjector` and :func:`instrument`,
which the Content Exporter and Forge Markdown sandboxes share.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from flask import Flask, Response, request

from bridge.sandbox.harness import FaultInjector, RecordedCall, instrument, json_response
from bridge.sandbox.pages import Page, PageTree

SORTS: Final = frozenset({"created-date", "id", "child-position", "modified-date"})
DEFAULT_SORT: Final = "child-position"
DEFAULT_DEPTH: Final = 5
MAX_DEPTH: Final = 5
BUGGY_LIMIT: Final = 250
"""CONFCLOUD-84015 shows with this page size on direct-children."""
BODY_FORMATS: Final = frozenset(
    {"storage", "atlas_doc_format", "view", "export_view", "anonymous_export_view", "styled_view"}
)
UNAUTHORIZED: Final = {"code": 401, "message": "Unauthorized; scope does not match"}

_API: Final = "/wiki/api/v2"
_GATEWAY: Final = "/ex/confluence/<cloud_id>/wiki/api/v2"


def bearer_token() -> str | None:
    """The token of the current request's ``Authorization: Bearer`` header, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# --- the v2 API ------------------------------------------------------------------------------


class _BadRequest(Exception):
    """A request the v2 API rejects with a 4xx ``errors`` body."""

    def __init__(self, message: str, status: int = 400, code: str = "INVALID_REQUEST_PARAMETER"):
        super().__init__(message)
        self.status = status
        self.code = code


def _v2_error(status: int, title: str, code: str | None = None) -> dict[str, Any]:
    default = {400: "INVALID_REQUEST_PARAMETER", 404: "NOT_FOUND"}.get(status, "ERROR")
    return {"errors": [{"status": status, "code": code or default, "title": title, "detail": None}]}


@dataclass(frozen=True)
class _Listing:
    """What one list endpoint call asks for, parsed from the query string."""

    endpoint: str
    page_id: str
    limit: int
    offset: int
    sort: str
    depth: int
    scope: str


class ConfluenceV2Sandbox:
    """Confluence Cloud v2 page-tree endpoints over a :class:`PageTree`."""

    def __init__(
        self,
        pages: PageTree,
        *,
        tokens: Collection[str] = ("sandbox-forge-token",),
        default_limit: int = 25,
        max_limit: int = 250,
        null_child_position_bug: bool = True,
        over_limit: Literal["reject", "clamp"] = "reject",
        cloud_id: str = "sandbox-cloud-id",
        site_url: str = "https://sandbox.atlassian.net",
    ) -> None:
        self.pages = pages
        self.tokens = set(tokens)
        self.default_limit = default_limit
        self.max_limit = max_limit
        self.null_child_position_bug = null_child_position_bug
        self.over_limit = over_limit
        self.cloud_id = cloud_id
        self.site_url = site_url.rstrip("/")
        self.calls: list[RecordedCall] = []
        self.faults = FaultInjector()
        self.inject = self.faults.add
        """Queue a fault: ``inject(status, times=, path_contains=, retry_after=, body=)``."""
        self._secret = secrets.token_bytes(16)
        self._space_ids: dict[str, str] = {}
        self._lock = threading.Lock()
        self.app = self._build_app()

    def space_id(self, space_key: str) -> str:
        """The numeric v2 space id the sandbox gives *space_key* (stable per sandbox)."""
        with self._lock:
            return self._space_ids.setdefault(space_key, str(65536 + len(self._space_ids)))

    # --- app wiring ---

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        instrument(app, self.calls, self.faults, _v2_error)
        app.before_request(self._authorize)
        views: dict[str, Callable[..., Response]] = {
            "/pages/<page_id>": self._page,
            "/pages/<page_id>/children": self._children,
            "/pages/<page_id>/direct-children": self._direct_children,
            "/pages/<page_id>/descendants": self._descendants,
        }
        for suffix, view in views.items():
            endpoint = view.__name__.lstrip("_")
            app.add_url_rule(_API + suffix, endpoint, view, defaults={"cloud_id": None})
            app.add_url_rule(_GATEWAY + suffix, f"gateway_{endpoint}", view)

        @app.errorhandler(_BadRequest)
        def _bad_request(error: _BadRequest) -> Response:
            return json_response(_v2_error(error.status, str(error), error.code), error.status)

        return app

    def _authorize(self) -> Response | None:
        token = bearer_token()
        if token is None or token not in self.tokens:
            return json_response(UNAUTHORIZED, 401)
        cloud_id = (request.view_args or {}).get("cloud_id")
        if cloud_id is not None and cloud_id != self.cloud_id:
            return json_response(_v2_error(404, "Not Found"), 404)
        return None

    # --- views ---

    def _page(self, page_id: str, cloud_id: str | None) -> Response:
        """Answer ``GET /pages/{id}``."""
        page = self._require_page(page_id)
        body_format = request.args.get("body-format")
        body: dict[str, Any] = {}
        if body_format is not None:
            if body_format not in BODY_FORMATS:
                raise _BadRequest(f"Invalid value for body-format: {body_format}")
            body[body_format] = {"representation": body_format, "value": _render(page, body_format)}
        parent = self.pages.get(page.parent_id) if page.parent_id else None
        return json_response(
            {
                "id": page.id,
                "status": "current",
                "title": page.title,
                "spaceId": self.space_id(page.space_key),
                "parentId": parent.id if parent else None,
                "parentType": "page" if parent else None,
                "position": self._position(page),
                "authorId": "sandbox-admin",
                "ownerId": "sandbox-admin",
                "createdAt": "2024-01-01T00:00:00.000Z",
                "version": {"number": 1, "createdAt": "2024-01-01T00:00:00.000Z"},
                "body": body,
                "_links": {
                    "webui": f"/spaces/{page.space_key}/pages/{page.id}",
                    "editui": f"/pages/resumedraft.action?draftId={page.id}",
                    "tinyui": f"/x/{page.id}",
                    "base": f"{self.site_url}/wiki",
                },
            }
        )

    def _children(self, page_id: str, cloud_id: str | None) -> Response:
        """Answer ``GET /pages/{id}/children`` (child pages)."""
        listing = self._listing("children", page_id)
        items = [self._child_item(p) for p in self._sorted_children(page_id, listing.sort)]
        return self._paginate(listing, items)

    def _direct_children(self, page_id: str, cloud_id: str | None) -> Response:
        """Answer ``GET /pages/{id}/direct-children`` (all hierarchical content types)."""
        listing = self._listing("direct-children", page_id)
        children = self._sorted_children(page_id, listing.sort)
        items = [{**self._child_item(p), "type": "page"} for p in children]
        if self._hits_null_position_bug(listing):
            items = items[: listing.limit]
        return self._paginate(listing, items)

    def _descendants(self, page_id: str, cloud_id: str | None) -> Response:
        """Answer ``GET /pages/{id}/descendants`` top to bottom, down to ``depth`` levels."""
        listing = self._listing("descendants", page_id)
        items = [
            {
                "id": page.id,
                "status": "current",
                "title": page.title,
                "type": "page",
                "parentId": page.parent_id,
                "depth": depth,
                "childPosition": self._position(page),
            }
            for page, depth in self._walk(page_id, 1, listing.depth)
        ]
        return self._paginate(listing, items)

    # --- helpers ---

    def _require_page(self, page_id: str) -> Page:
        page = self.pages.get(page_id)
        if page is None:
            raise _BadRequest("Not Found", 404, "NOT_FOUND")
        return page

    def _listing(self, endpoint: str, page_id: str) -> _Listing:
        self._require_page(page_id)
        args = request.args
        sort = args.get("sort", DEFAULT_SORT) if endpoint != "descendants" else DEFAULT_SORT
        if sort.removeprefix("-") not in SORTS:
            raise _BadRequest(f"Invalid value for sort: {sort}")
        depth = _int_arg("depth", DEFAULT_DEPTH) if endpoint == "descendants" else DEFAULT_DEPTH
        if not 1 <= depth <= MAX_DEPTH:
            raise _BadRequest(f"depth must be between 1 and {MAX_DEPTH}")
        limit = _int_arg("limit", self.default_limit)
        if limit < 1:
            raise _BadRequest("limit must be at least 1")
        if limit > self.max_limit:
            if self.over_limit == "reject":
                raise _BadRequest(f"limit must not exceed {self.max_limit}")
            limit = self.max_limit
        scope = f"{endpoint}|{page_id}|{sort}|{depth}"
        cursor = args.get("cursor")
        offset = 0 if cursor is None else self._decode_cursor(cursor, scope)
        return _Listing(endpoint, page_id, limit, offset, sort, depth, scope)

    def _hits_null_position_bug(self, listing: _Listing) -> bool:
        return (
            self.null_child_position_bug
            and listing.sort.removeprefix("-") == "child-position"
            and listing.limit >= BUGGY_LIMIT
            and listing.offset > 0
        )

    def _paginate(self, listing: _Listing, items: list[dict[str, Any]]) -> Response:
        window = items[listing.offset : listing.offset + listing.limit]
        links: dict[str, str] = {"base": f"{self.site_url}/wiki"}
        end = listing.offset + len(window)
        next_url = None
        if window and end < len(items):
            query = {"limit": str(listing.limit), "cursor": self._encode_cursor(end, listing.scope)}
            if listing.endpoint == "descendants":
                query["depth"] = str(listing.depth)
            elif "sort" in request.args:
                query["sort"] = listing.sort
            next_url = f"{_API}/pages/{listing.page_id}/{listing.endpoint}?{urlencode(query)}"
            links["next"] = next_url
        response = json_response({"results": window, "_links": links})
        if next_url is not None:
            response.headers["Link"] = f'<{next_url}>; rel="next"'
        return response

    def _encode_cursor(self, offset: int, scope: str) -> str:
        payload = base64.urlsafe_b64encode(json.dumps({"o": offset, "s": scope}).encode())
        payload = payload.rstrip(b"=")
        return f"{payload.decode()}.{self._sign(payload)}"

    def _decode_cursor(self, cursor: str, scope: str) -> int:
        payload, _, signature = cursor.partition(".")
        if not hmac.compare_digest(signature, self._sign(payload.encode())):
            raise _BadRequest("Invalid cursor")
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError) as exc:
            raise _BadRequest("Invalid cursor") from exc
        if data.get("s") != scope or not isinstance(data.get("o"), int):
            raise _BadRequest("Cursor does not belong to this request")
        offset: int = data["o"]
        return offset

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()[:24]

    def _sorted_children(self, page_id: str, sort: str) -> list[Page]:
        children = [self.pages.pages[c] for c in self.pages.pages[page_id].children]
        field = sort.removeprefix("-")
        if field == "id":
            children.sort(key=lambda p: (len(p.id), p.id))
        elif field in ("created-date", "modified-date"):
            created = {pid: n for n, pid in enumerate(self.pages.pages)}
            children.sort(key=lambda p: created[p.id])
        if sort.startswith("-"):
            children.reverse()
        return children

    def _child_item(self, page: Page) -> dict[str, Any]:
        return {
            "id": page.id,
            "status": "current",
            "title": page.title,
            "spaceId": self.space_id(page.space_key),
            "childPosition": self._position(page),
        }

    def _position(self, page: Page) -> int | None:
        if self.null_child_position_bug or page.parent_id is None:
            return None
        return self.pages.pages[page.parent_id].children.index(page.id)

    def _walk(self, page_id: str, depth: int, max_depth: int) -> list[tuple[Page, int]]:
        found: list[tuple[Page, int]] = []
        for child_id in self.pages.pages[page_id].children:
            found.append((self.pages.pages[child_id], depth))
            if depth < max_depth:
                found.extend(self._walk(child_id, depth + 1, max_depth))
        return found


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise _BadRequest(f"{name} must be an integer") from exc


def _render(page: Page, body_format: str) -> str:
    if body_format == "atlas_doc_format":
        paragraph = {"type": "paragraph", "content": [{"type": "text", "text": page.body}]}
        return json.dumps({"type": "doc", "version": 1, "content": [paragraph]})
    return f"<p>{escape(page.body)}</p>"
