"""The Forge Markdown exporter app's REST API (Forge ``apiRoute``): singleExport, bulkExport.

Written from seeds/forge-markdown-export-api.txt and upstreams.md §5.1, §5.3. Choices where
the contract is UNCONFIRMED:

- URL forms: ``/svc/confluence/{cloudId}/apps/{appId}_{envId}/{path}`` and
  ``/gateway/api/svc/confluence/apps/{appId}_{envId}/{path}``. The second names the site by
  ``Host``: it must be ``site_name``, or a loopback host (then it stands for ``site_name``).
  ``{appId}`` alone (no ``_envId``) means production, as the Forge doc suggests.
- Order of checks: bearer token (``401``), then cloud/site, app, environment and path
  (``404``), then *App REST APIs enabled* and the token's environment (``403``), then the body.
- Only ``POST`` with ``Content-Type: application/json`` (``415`` otherwise).
- ``maxPages`` must be 1..100 (``400`` otherwise). A tree larger than ``maxPages`` is silently
  cut to its first ``maxPages`` pages in tree order: batching is the caller's job.
- Simulated runtime is ``page_cost_seconds`` per page; beyond ``timeout_seconds`` the platform
  answers ``424 Failed Dependency`` (peers.md §1.2). Nothing sleeps unless
  ``sleep_page_cost`` is set (benchmarks).
- A response body above ``max_response_bytes`` is ``500``. Attachments over 300 KB are left
  out, and so is every attachment once 2 MB have been packed.
- App errors are ``{"success": false, "error": ...}``; platform errors ``{"code", "message"}``.
- Slugs: NFKD → ASCII, lowercase, specials dropped, whitespace → ``-`` (runs collapsed); an
  empty slug becomes ``page-{id}``; a sibling with the same slug gets ``-2``, ``-3``...
"""

from __future__ import annotations

import base64
import io
import re
import threading
import time
import unicodedata
import uuid
import zipfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar

from flask import Flask, Response, request

from bridge.sandbox.confluence_v2 import UNAUTHORIZED, bearer_token
from bridge.sandbox.files import make_file
from bridge.sandbox.harness import Clock, FaultInjector, RecordedCall, instrument, json_response
from bridge.sandbox.pages import Page, PageTree

APP_ID: Final = "0def1d4f-1593-4dd0-99a3-a098b3959067"
ENV_IDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "production": "796457c9-9c03-4382-b44f-d19571068ece",
        "staging": "73c9d7be-47c5-479a-b08d-14fb79453df8",
        "development": "08a10a13-932b-47bb-b760-0cc1e93d4a50",
    }
)
DEFAULT_MAX_PAGES: Final = 50
MAX_PAGES_CAP: Final = 100
MAX_ATTACHMENT_BYTES: Final = 300 * 1024
MAX_TOTAL_ATTACHMENT_BYTES: Final = 2 * 1024 * 1024
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
ENDPOINTS: Final = ("bulkExport", "singleExport")

_ZIP_TIME: Final = (2024, 1, 1, 0, 0, 0)
_T = TypeVar("_T")
_JSON_TYPES: Final[Mapping[type, str]] = {str: "string", bool: "boolean", int: "integer"}


class _Failure(Exception):
    """An error response: the app's own (``{"success": false}``) or the platform's."""

    def __init__(self, status: int, message: str, *, platform: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.platform = platform

    def response(self) -> Response:
        if self.platform:
            return json_response(_platform_error(self.status, str(self)), self.status)
        return json_response({"success": False, "error": str(self)}, self.status)


def _platform_error(status: int, message: str) -> dict[str, Any]:
    return {"code": status, "message": message}


@dataclass(frozen=True)
class ExportRecord:
    """One export the app ran (or tried to): which pages, and how it ended."""

    endpoint: str
    environment: str
    page_ids: tuple[str, ...]
    status: int
    at: float


def slugify(title: str) -> str:
    """Lowercase ASCII slug: transliterate, drop specials, whitespace to ``-``."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    kept = re.sub(r"[^a-z0-9\s-]", "", ascii_title.lower())
    return re.sub(r"-{2,}", "-", re.sub(r"\s+", "-", kept.strip())).strip("-")


class ForgeMarkdownSandbox:
    """The Markdown exporter's ``apiRoute`` endpoints over a :class:`PageTree`."""

    def __init__(
        self,
        pages: PageTree,
        clock: Clock = time.time,
        *,
        cloud_id: str = "sandbox-cloud-id",
        app_id: str = APP_ID,
        env_ids: Mapping[str, str] = ENV_IDS,
        tokens: Collection[str] = ("sandbox-forge-token",),
        site_name: str = "sandbox.atlassian.net",
        timeout_seconds: float = 25.0,
        max_pages: int = MAX_PAGES_CAP,
        max_response_bytes: int = 5 * 1024 * 1024,
        page_cost_seconds: float = 0.0,
        sleep_page_cost: bool = False,
    ) -> None:
        self.pages = pages
        self.clock = clock
        self.cloud_id = cloud_id
        self.app_id = app_id
        self.env_ids = dict(env_ids)
        self.tokens = set(tokens)
        self.site_name = site_name
        self.timeout_seconds = timeout_seconds
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.page_cost_seconds = page_cost_seconds
        self.sleep_page_cost = sleep_page_cost
        """Really spend ``page_cost_seconds`` per page (capped at the time limit): benchmarks."""
        self.rest_apis_enabled = True
        """False: an admin has not enabled App REST APIs for the app (``403``)."""
        self.token_environments: dict[str, str] = {}
        """token → the one environment its OAuth integration is connected to (else ``403``)."""
        self.fail_pages: set[str] = set()
        """An export including one of these pages answers ``500``."""
        self.attachments: dict[str, dict[str, bytes]] = {}
        self.exports: list[ExportRecord] = []
        self.calls: list[RecordedCall] = []
        self.faults = FaultInjector()
        self.inject = self.faults.add
        """Queue a fault: ``inject(status, times=, path_contains=, retry_after=, body=)``."""
        self._flaky: dict[str, int] = {}
        self._lock = threading.Lock()
        self.app = self._build_app()

    def flaky(self, page_id: str, times: int) -> None:
        """Make the next *times* exports that include *page_id* fail with ``500``."""
        with self._lock:
            self._flaky[page_id] = times

    def add_attachment(self, page_id: str, name: str, data: bytes) -> None:
        """Give *page_id* an attachment *name*, packed when ``includeAttachments`` is set."""
        self.attachments.setdefault(page_id, {})[name] = data

    # --- app wiring ---

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        instrument(app, self.calls, self.faults, _platform_error)
        rules = (
            "/svc/confluence/<cloud_id>/apps/<app_env>/<path>",
            "/gateway/api/svc/confluence/apps/<app_env>/<path>",
        )
        for number, rule in enumerate(rules):
            app.add_url_rule(rule, f"route{number}", self._route, methods=["POST"])

        @app.errorhandler(_Failure)
        def _failure(error: _Failure) -> Response:
            return error.response()

        return app

    def _route(self, app_env: str, path: str, cloud_id: str | None = None) -> Response:
        """Authenticate, resolve the app and environment, and run the export."""
        token = bearer_token()
        if token is None or token not in self.tokens:
            return json_response(UNAUTHORIZED, 401)
        environment = self._resolve(cloud_id, app_env, path)
        if not self.rest_apis_enabled:
            raise _Failure(403, "App REST APIs are not enabled for this app", platform=True)
        if self.token_environments.get(token, environment) != environment:
            raise _Failure(
                403, "OAuth integration is connected to another environment", platform=True
            )
        if not request.is_json:
            raise _Failure(415, "Content-Type must be application/json", platform=True)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _Failure(400, "Request body must be a JSON object")
        if path == "singleExport":
            return self._single_export(body, environment)
        return self._bulk_export(body, environment)

    def _resolve(self, cloud_id: str | None, app_env: str, path: str) -> str:
        """The environment name the URL addresses; ``404`` for anything unknown."""
        if cloud_id is None:
            host = _host_name(request.host)
            site_ok = host == self.site_name or host in LOOPBACK_HOSTS
        else:
            site_ok = cloud_id == self.cloud_id
        app_id, _, env_id = app_env.partition("_")
        environment = next((n for n, e in self.env_ids.items() if e == env_id), None)
        if not env_id:
            environment = "production" if "production" in self.env_ids else None
        if not site_ok or app_id != self.app_id or environment is None or path not in ENDPOINTS:
            raise _Failure(404, "Not Found", platform=True)
        return environment

    # --- endpoints ---

    def _single_export(self, body: dict[str, Any], environment: str) -> Response:
        """Export one page: Markdown text, or a ZIP in JSON when attachments are included."""
        page_id = _opt(body, "pageId", str, None)
        with_attachments = _opt(body, "includeAttachments", bool, False)
        if page_id is None:
            raise _Failure(400, "Missing pageId")
        page = self._page(page_id)
        self._run("singleExport", environment, [page])
        if not with_attachments:
            text = make_file("markdown", page.title, page.body).read()
            return self._limited(Response(text, status=200, content_type="text/plain"))
        payload = {
            "success": True,
            "exportId": str(uuid.uuid4()),
            "pageId": page.id,
            "title": page.title,
            "zipBase64": self._zip([page], True),
        }
        return self._limited(json_response(payload))

    def _bulk_export(self, body: dict[str, Any], environment: str) -> Response:
        """Export a page (and its descendants) or a whole space as a ZIP in JSON."""
        space_key = _opt(body, "spaceKey", str, None)
        page_id = _opt(body, "pageId", str, None)
        descendants = _opt(body, "bulkExport", bool, False)
        max_pages = _opt(body, "maxPages", int, DEFAULT_MAX_PAGES)
        with_attachments = _opt(body, "includeAttachments", bool, False)
        if not 1 <= max_pages <= self.max_pages:
            raise _Failure(400, f"maxPages must be between 1 and {self.max_pages}")
        if page_id is not None:
            root = self._page(page_id)
            selected = [root, *self.pages.descendants(root.id)] if descendants else [root]
            space_key = None
        elif space_key is not None:
            selected = [
                p for r in self.pages.roots(space_key) for p in (r, *self.pages.descendants(r.id))
            ]
            if not selected:
                raise _Failure(404, f"No pages found in space {space_key}")
        else:
            raise _Failure(400, "Missing spaceKey or pageId")
        pages = selected[:max_pages]
        self._run("bulkExport", environment, pages)
        payload = {
            "success": True,
            "exportId": str(uuid.uuid4()),
            "spaceKey": space_key,
            "pageId": page_id,
            "pageCount": len(pages),
            "zipBase64": self._zip(pages, with_attachments),
        }
        return self._limited(json_response(payload))

    # --- helpers ---

    def _page(self, page_id: str) -> Page:
        page = self.pages.get(page_id)
        if page is None:
            raise _Failure(404, f"No pages found for page {page_id}")
        return page

    def _run(self, endpoint: str, environment: str, pages: list[Page]) -> None:
        """Log the export and raise the failure it meets: a broken page, or the time limit."""
        ids = tuple(p.id for p in pages)
        status = 200
        with self._lock:
            flaky = [pid for pid in ids if self._flaky.get(pid, 0) > 0]
            for pid in flaky:
                self._flaky[pid] -= 1
        if flaky or self.fail_pages.intersection(ids):
            status = 500
        elif self.page_cost_seconds * len(pages) > self.timeout_seconds:
            status = 424
        if self.sleep_page_cost:
            time.sleep(min(self.page_cost_seconds * len(pages), self.timeout_seconds))
        self.exports.append(ExportRecord(endpoint, environment, ids, status, self.clock()))
        if status == 500:
            raise _Failure(500, "Unexpected server error")
        if status == 424:
            raise _Failure(424, "Invocation failed: function timed out", platform=True)

    def _limited(self, response: Response) -> Response:
        if len(response.get_data()) > self.max_response_bytes:
            raise _Failure(500, "Invocation failed: response payload too large", platform=True)
        return response

    def _zip(self, pages: list[Page], with_attachments: bool) -> str:
        """Pack *pages* as the app does, mirroring the hierarchy, and base64 the ZIP."""
        included = {p.id for p in pages}
        folders: dict[str, str] = {}
        used: dict[str, set[str]] = {}
        attachment_bytes = 0
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for page in pages:
                parent = page.parent_id if page.parent_id in included else None
                folder = folders[parent] if parent is not None else ""
                slug = _unique(
                    slugify(page.title) or f"page-{page.id}", used.setdefault(folder, set())
                )
                folders[page.id] = f"{folder}{slug}/"
                markdown = make_file("markdown", page.title, page.body).read()
                archive.writestr(zipfile.ZipInfo(f"{folder}{slug}.md", _ZIP_TIME), markdown)
                if not with_attachments:
                    continue
                for name, data in self.attachments.get(page.id, {}).items():
                    if len(data) > MAX_ATTACHMENT_BYTES:
                        continue
                    if attachment_bytes + len(data) > MAX_TOTAL_ATTACHMENT_BYTES:
                        continue
                    attachment_bytes += len(data)
                    archive.writestr(
                        zipfile.ZipInfo(f"{folder}attachments/{name}", _ZIP_TIME), data
                    )
        return base64.b64encode(buffer.getvalue()).decode()


def _opt(body: dict[str, Any], key: str, kind: type[_T], default: _T) -> _T:
    """Read an optional field of JSON type *kind*; a value of another type is ``400``."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Failure(400, f"{key} must be a {_JSON_TYPES.get(kind, kind.__name__)}")
    return value


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0].lower()


def _unique(slug: str, used: set[str]) -> str:
    candidate, number = slug, 1
    while candidate in used:
        number += 1
        candidate = f"{slug}-{number}"
    used.add(candidate)
    return candidate
