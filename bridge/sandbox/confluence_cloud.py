"""Simulated Confluence Cloud site: content-body convert with the hidden Scroll export macros.

Contracts: ``upstreams.md`` §3.1/§3.2 (convert, sync and async), §3.4 (429 headers, v1 error
body), §1.4 and ``seeds/scroll-exporter-macro-integration.txt`` (the Scroll macros), §4.4 (the
caller is a user-impersonation bearer token from :class:`OAuthSandbox`). The Scroll Cloud
side (which Confluence asks to render the macro) lives in the same app; its pre-signed
download route is ``/scroll/{product}/download/{filename}?jwt=…``.

Choices the sources leave open (UNCONFIRMED; the configurable ones are constructor flags):

* the macro output is the seed's ``<div class="result"><code class="success|error">`` wrapper
  with the JSON as escaped text, inside a ``<div class="conf-macro output-block"
  data-macro-name=…>`` as Confluence wraps macro output; unknown macros render as
  ``<span class="error">Unknown macro: '…'</span>``;
* ``issued-at`` must be a whole number of seconds within ±``issued_at_leeway`` of the clock at
  render time; ``export-request`` wins over ``export-job-id`` when both are given; the texts
  of errors other than the seed's ``issued-at`` one are invented;
* an async render happens when it is requested; the first poll says ``QUEUED``, later ones
  ``WORKING``, until ``async_steps`` polls have passed, then ``COMPLETED`` (``FAILED`` for
  storage that does not parse). The ``value`` field is absent until then. A result is
  forgotten ``async_result_ttl`` seconds after it completed (or, never polled to completion,
  after it was requested), and when the same user repeats the request with
  ``allowCache=false``; with ``allowCache=true`` a live identical request gets the old id;
* ``X-Atlassian-Token: no-check`` is enforced on attachment uploads (documented) and, only
  with ``require_xsrf_on_convert``, on convert POSTs (CJS sends it; enforcement unknown);
* download links live ``download_url_ttl`` seconds; a download carrying an ``Authorization``
  header is refused with 400 unless ``reject_download_authorization`` is off (the seed says
  "Do not send any Authorization headers");
* error bodies: the v1 shape of §3.4 (``authorized/valid/successful`` as in the quoted
  sample), ``{"code": 401, "message": "Unauthorized; scope does not match"}`` for a token
  without the needed Connect scope (``READ`` to convert and list, ``WRITE`` to upload),
  Scroll's ``{"status", "message"}`` on the download route, ``XSRF check failed`` as text;
* the attachment routes also take an installed Connect app's own JWT (``Authorization: JWT``,
  upstreams.md §4.2/§4.4), for apps registered with :meth:`ConfluenceCloudSandbox.register_app`:
  HS256 under the install's shared secret, ``iss`` the app key (as ACE sends it) or the
  clientKey (as ``atlassian-jwt`` sends it; which one Atlassian requires is UNCONFIRMED), an
  ``aud`` (when sent) naming the clientKey, ``exp`` not passed (``APP_JWT_LEEWAY`` seconds of
  skew), ``qsh`` of the request relative to the site base URL, and the app's descriptor
  scopes must include the one needed. The upload is recorded as the app's bot user.
"""

from __future__ import annotations

import hmac
import html
import html.entities
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import NamedTuple
from urllib.parse import quote, urlencode

import jwt
from flask import Flask, Response, g, jsonify, request
from lxml import etree
from werkzeug.exceptions import HTTPException

from bridge.atlassian_jwt import query_string_hash
from bridge.sandbox.harness import Clock
from bridge.sandbox.oauth_server import AccessTokenInfo, OAuthSandbox
from bridge.sandbox.pages import Page, PageTree
from bridge.sandbox.scroll_engine import PRODUCTS, ScrollError, ScrollJobEngine

AC_NS = "http://atlassian.com/content"
RI_NS = "http://atlassian.com/resource/identifier"
AT_NS = "http://atlassian.com/template"
MACRO_PRODUCTS = {
    "scroll-word-export-job": "scroll-office",
    "scroll-pdf-export-job": "scroll-pdf",
    "scroll-html-export-job": "scroll-html",
}
ISSUED_AT_MESSAGE = "Must set 'issued-at' parameter to current time as Unix Epoch seconds."
ASYNC_TARGETS = frozenset({"export_view"})
SYNC_TARGETS = frozenset({"export_view", "view", "styled_view"})
APP_JWT_LEEWAY = 30
"""Seconds of clock skew allowed on an app JWT's ``exp``/``iat`` (UNCONFIRMED)."""
_EXCEPTIONS = "com.atlassian.confluence.api.service.exceptions."
_XML_ENTITIES = frozenset({"amp", "lt", "gt", "quot", "apos"})
_NAMED_ENTITY = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")


class StoredAttachment(NamedTuple):
    """One uploaded attachment as the tests read it."""

    filename: str
    data: bytes
    content_type: str
    uploader: str


@dataclass(frozen=True)
class ConnectApp:
    """A Connect app installed in the site, which may call the REST API as itself."""

    key: str
    client_key: str
    shared_secret: str = field(repr=False)
    scopes: frozenset[str]
    account_id: str
    """The app's bot user, recorded as the uploader of what the app uploads."""


@dataclass(frozen=True)
class Call:
    """One request the site answered."""

    method: str
    path: str
    query: dict[str, str]
    account_id: str | None
    status: int


@dataclass
class _Fault:
    status: int
    remaining: int
    path_contains: str
    retry_after: int | None
    body: str | Mapping[str, object] | None


@dataclass(frozen=True)
class _ConvertRequest:
    account_id: str
    storage: str
    key: tuple[object, ...]
    """What makes two requests "identical" for ``allowCache`` (per user, body, expansions)."""


@dataclass
class _RenderTask:
    id: str
    owner: str
    key: tuple[object, ...]
    representation: str
    created_at: float
    value: str | None
    error: str | None
    polls: int = 0
    completed_at: float | None = None


@dataclass
class _AttachmentRecord:
    id: str
    page_id: str
    version: int
    index: int


class ApiError(Exception):
    """An error answer: status, JSON (or text) body and extra headers."""

    def __init__(
        self,
        status: int,
        body: str | Mapping[str, object],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class RenderError(Exception):
    """Storage format that does not parse."""


def v1_error(status: int, exception: str, message: str) -> ApiError:
    """A v1 REST error: ``{"statusCode", "data", "message": "<exception class>: <message>"}``."""
    body = {
        "statusCode": status,
        "data": {"authorized": status != 401, "valid": True, "errors": [], "successful": True},
        "message": f"{_EXCEPTIONS}{exception}: {message}",
    }
    return ApiError(status, body)


class StorageRenderer:
    """Renders storage format to export_view HTML, calling Scroll for its hidden macros."""

    def __init__(
        self, engine: ScrollJobEngine, clock: Clock, *, issued_at_leeway: int, download_ttl: int
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.issued_at_leeway = issued_at_leeway
        self.download_ttl = download_ttl
        self.download_secret = secrets.token_bytes(32)
        self.issuing_apps: Counter[str] = Counter()
        """``issued-by-app`` values of started exports."""
        self._job_products: dict[str, str] = {}
        self._lock = threading.Lock()

    def render(self, storage: str, account_id: str, scroll_root: str) -> str:
        """The export_view HTML of *storage* as *account_id* sees it; RenderError if malformed."""
        root = parse_storage(storage)
        for macro in list(root.iter(f"{{{AC_NS}}}structured-macro")):
            if any(ancestor is root for ancestor in macro.iterancestors()):
                _replace(macro, self._render_macro(macro, account_id, scroll_root))
        etree.strip_elements(root, f"{{{AC_NS}}}parameter", with_tail=False)
        etree.strip_tags(root, f"{{{AC_NS}}}*", f"{{{RI_NS}}}*", f"{{{AT_NS}}}*")
        root.tag = "div"
        etree.cleanup_namespaces(root)
        parts = [html.escape(root.text or "", quote=False)]
        parts += [etree.tostring(child, method="html", encoding="unicode") for child in root]
        return "".join(parts)

    def verify_download(self, token: str, product: str, filename: str) -> str:
        """The job id a download token grants, if it is genuine, unexpired and for this file."""
        try:
            claims = jwt.decode(
                token, self.download_secret, algorithms=["HS256"], options={"verify_exp": False}
            )
        except jwt.PyJWTError as exc:
            raise ScrollError(401, "Invalid download token.") from exc
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= self.clock():
            raise ScrollError(401, "Download token has expired.")
        if claims.get("product") != product or claims.get("file") != filename:
            raise ScrollError(401, "Download token does not match this file.")
        job_id = claims.get("sub")
        if not isinstance(job_id, str):
            raise ScrollError(401, "Invalid download token.")
        return job_id

    def _render_macro(
        self, macro: etree._Element, account_id: str, scroll_root: str
    ) -> etree._Element:
        name = macro.get(f"{{{AC_NS}}}name") or ""
        product = MACRO_PRODUCTS.get(name)
        if product is None:
            block = etree.Element("div", {"class": "error"})
            etree.SubElement(block, "span", {"class": "error"}).text = f"Unknown macro: '{name}'"
            return block
        params = {
            p.get(f"{{{AC_NS}}}name") or "": "".join(str(text) for text in p.itertext())
            for p in macro.findall(f"{{{AC_NS}}}parameter")
        }
        try:
            outcome, payload = "success", self._run_macro(product, params, account_id, scroll_root)
        except ScrollError as exc:
            outcome, payload = "error", exc.body()
        block = etree.Element(
            "div",
            {
                "class": "conf-macro output-block",
                "data-hasbody": "false",
                "data-macro-name": name,
                "data-macro-id": str(uuid.uuid4()),
            },
        )
        result = etree.SubElement(block, "div", {"class": "result"})
        code = etree.SubElement(result, "code", {"class": outcome})
        code.text = json.dumps(payload, separators=(",", ":"))
        return block

    def _run_macro(
        self, product: str, params: Mapping[str, str], account_id: str, scroll_root: str
    ) -> dict[str, object]:
        issued_at = params.get("issued-at", "").strip()
        if not issued_at.isdigit() or abs(int(issued_at) - self.clock()) > self.issued_at_leeway:
            raise ScrollError(400, ISSUED_AT_MESSAGE)
        if "export-request" in params:
            return {"jobId": self._start(product, params, account_id)}
        job_id = params.get("export-job-id", "").strip()
        if not job_id:
            raise ScrollError(400, "Must set either 'export-request' or 'export-job-id' parameter.")
        return self._status(product, job_id, account_id, scroll_root)

    def _start(self, product: str, params: Mapping[str, str], account_id: str) -> str:
        app_name = params.get("issued-by-app", "").strip()
        if not app_name:
            raise ScrollError(400, "Must set 'issued-by-app' parameter to your app's name.")
        try:
            export_request = json.loads(params["export-request"])
        except ValueError as exc:
            raise ScrollError(400, "Parameter 'export-request' is not valid JSON.") from exc
        if not isinstance(export_request, dict):
            raise ScrollError(400, "Parameter 'export-request' must be a JSON object.")
        job_id = self.engine.start(product, export_request, account_id)
        with self._lock:
            self._job_products[job_id] = product
            self.issuing_apps[app_name] += 1
        return job_id

    def _status(
        self, product: str, job_id: str, account_id: str, scroll_root: str
    ) -> dict[str, object]:
        with self._lock:
            started_as = self._job_products.get(job_id, product)
        if started_as != product:
            raise ScrollError(404, f"Export job {job_id} not found.")
        status = self.engine.status(job_id, account_id)
        if status.get("status") == "complete":
            _, filename = self.engine.file(job_id)
            status["downloadUrl"] = self._download_url(scroll_root, product, job_id, filename)
        return status

    def _download_url(self, scroll_root: str, product: str, job_id: str, filename: str) -> str:
        now = int(self.clock())
        claims = {
            "iss": "scroll-sandbox",
            "sub": job_id,
            "product": product,
            "file": filename,
            "iat": now,
            "exp": now + self.download_ttl,
        }
        token = jwt.encode(claims, self.download_secret, algorithm="HS256")
        path = f"/scroll/{product}/download/{quote(filename)}"
        return f"{scroll_root}{path}?{urlencode({'jwt': token})}"


def parse_storage(storage: str) -> etree._Element:
    """Parse a storage-format fragment under a root declaring ``ac:``/``ri:``/``at:``.

    No DTD, no entity expansion, no network: a DOCTYPE cannot appear inside the wrapper.
    HTML named entities (``&nbsp;``) become character references first, as Confluence
    accepts them in storage format.
    """
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_pis=True
    )
    try:
        parser.feed(f'<ac:root xmlns:ac="{AC_NS}" xmlns:ri="{RI_NS}" xmlns:at="{AT_NS}">')
        parser.feed(_NAMED_ENTITY.sub(_numeric_entity, storage))
        parser.feed("</ac:root>")
        return parser.close()
    except etree.XMLSyntaxError as exc:
        raise RenderError(f"Error parsing xhtml: {exc}") from exc


def _numeric_entity(match: re.Match[str]) -> str:
    name = match.group(1)
    codepoint = html.entities.name2codepoint.get(name)
    if name in _XML_ENTITIES or codepoint is None:
        return match.group(0)
    return f"&#{codepoint};"


def _replace(old: etree._Element, new: etree._Element) -> None:
    new.tail = old.tail
    parent = old.getparent()
    assert parent is not None
    parent.replace(old, new)


class ConfluenceCloudSandbox:
    """The simulated Confluence Cloud site (and Scroll's download host): ``.app``."""

    def __init__(
        self,
        oauth: OAuthSandbox,
        engine: ScrollJobEngine,
        pages: PageTree,
        clock: Clock = time.time,
        *,
        context_path: str = "/wiki",
        issued_at_leeway: int = 10,
        async_result_ttl: int = 300,
        async_steps: int = 1,
        sync_enabled: bool = True,
        scroll_base_url: str | None = None,
        download_url_ttl: int = 300,
        require_xsrf_on_convert: bool = False,
        reject_download_authorization: bool = True,
    ) -> None:
        self.oauth = oauth
        self.engine = engine
        self.pages = pages
        self.clock = clock
        self.context_path = "/" + context_path.strip("/") if context_path.strip("/") else ""
        self.async_result_ttl = async_result_ttl
        self.async_steps = async_steps
        self.sync_enabled = sync_enabled
        self.scroll_base_url = scroll_base_url.rstrip("/") if scroll_base_url else None
        self.require_xsrf_on_convert = require_xsrf_on_convert
        self.reject_download_authorization = reject_download_authorization
        self.renderer = StorageRenderer(
            engine, clock, issued_at_leeway=issued_at_leeway, download_ttl=download_url_ttl
        )
        self.calls: list[Call] = []
        self.attachments: dict[str, list[StoredAttachment]] = {}
        """Page id -> its attachments, in upload order (an update replaces in place)."""
        self._attachment_records: dict[tuple[str, str], _AttachmentRecord] = {}
        self._tasks: dict[str, _RenderTask] = {}
        self._task_by_key: dict[tuple[object, ...], str] = {}
        self._faults: list[_Fault] = []
        self._apps: dict[str, ConnectApp] = {}
        self._public_url: str | None = None
        self._lock = threading.Lock()
        self.app = self._make_app()

    # -- setup and fault injection ---------------------------------------------------

    def set_public_url(self, url: str) -> None:
        """Fix the server root URL (without the context path) the site is reached at."""
        self._public_url = url.rstrip("/")

    @property
    def base_url(self) -> str | None:
        """The site base URL (root + context path) once :meth:`set_public_url` was called."""
        return None if self._public_url is None else self._public_url + self.context_path

    def register_app(
        self,
        app_key: str,
        client_key: str,
        shared_secret: str,
        scopes: tuple[str, ...] = ("READ", "WRITE"),
        account_id: str | None = None,
    ) -> ConnectApp:
        """Record an installed Connect app, so its own JWTs are accepted (see the docstring)."""
        app = ConnectApp(
            app_key,
            client_key,
            shared_secret,
            frozenset(scopes),
            account_id or f"557058:app-{app_key}",
        )
        with self._lock:
            self._apps[app_key] = app
            self._apps[client_key] = app
        return app

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        path_contains: str = "",
        retry_after: int | None = None,
        body: str | Mapping[str, object] | None = None,
    ) -> None:
        """Answer the next *times* requests whose path contains *path_contains* with *status*.

        A 429 always carries ``Retry-After`` (default 1 s) and ``X-RateLimit-Reset``; other
        statuses carry them only when *retry_after* is given.
        """
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._faults.append(_Fault(status, times, path_contains, retry_after, body))

    # -- request plumbing ------------------------------------------------------------

    def _root_url(self) -> str:
        return self._public_url or request.host_url.rstrip("/")

    def _site_url(self) -> str:
        return self._root_url() + self.context_path

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _fault_error(self, fault: _Fault) -> ApiError:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            reset = datetime.fromtimestamp(self.clock() + fault.retry_after, UTC)
            headers["Retry-After"] = str(fault.retry_after)
            headers["X-RateLimit-Reset"] = reset.strftime("%Y-%m-%dT%H:%MZ")
        if fault.body is not None:
            return ApiError(fault.status, fault.body, headers)
        error = v1_error(fault.status, "ServiceException", HTTPStatus(fault.status).phrase)
        error.headers.update(headers)
        return error

    def _authenticate(self, scope: str, *, allow_app: bool = False) -> str:
        """The accountId of the request's impersonation token (which must carry *scope*), or
        with *allow_app* of the registered app whose JWT it carries."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if allow_app and scheme.lower() == "jwt" and token.strip():
            return self._authenticate_app(token.strip(), scope)
        if scheme.lower() != "bearer" or not token.strip():
            raise v1_error(401, "AuthenticationRequiredException", "Authentication required")
        info: AccessTokenInfo | None = self.oauth.verify_access_token(token.strip())
        if info is None or info.base_url.rstrip("/") != self._site_url():
            raise v1_error(401, "AuthenticationRequiredException", "Invalid or expired token")
        g.account_id = info.account_id
        if scope not in info.scopes:
            raise ApiError(401, {"code": 401, "message": "Unauthorized; scope does not match"})
        return info.account_id

    def _authenticate_app(self, token: str, scope: str) -> str:
        """The bot accountId of the registered app whose JWT this is (module docstring)."""
        refused = v1_error(401, "AuthenticationRequiredException", "Invalid JWT")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise refused from None
        with self._lock:
            app = self._apps.get(str(unverified.get("iss")))
        if header.get("alg") != "HS256" or app is None:
            raise refused
        try:
            claims = jwt.decode(
                token,
                app.shared_secret,
                algorithms=["HS256"],
                options={
                    "require": ["iss", "iat", "exp", "qsh"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.PyJWTError:
            raise refused from None
        now = self.clock()
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int | float) or exp + APP_JWT_LEEWAY <= now:
            raise v1_error(401, "AuthenticationRequiredException", "Expired JWT")
        if not isinstance(iat, int | float) or iat - APP_JWT_LEEWAY > now:
            raise refused
        audience = claims.get("aud", app.client_key)
        if app.client_key not in (audience if isinstance(audience, list) else [audience]):
            raise refused
        query = request.query_string.decode("latin-1")
        path = request.path + (f"?{query}" if query else "")
        expected = query_string_hash(request.method, path, self._site_url())
        if not hmac.compare_digest(str(claims["qsh"]).encode(), expected.encode()):
            raise v1_error(401, "AuthenticationRequiredException", "JWT qsh does not match")
        g.account_id = app.account_id
        if scope not in app.scopes:
            raise ApiError(401, {"code": 401, "message": "Unauthorized; scope does not match"})
        return app.account_id

    @staticmethod
    def _check_xsrf() -> None:
        if request.headers.get("X-Atlassian-Token") != "no-check":
            raise ApiError(403, "XSRF check failed")

    def _page(self, page_id: str) -> Page:
        if not page_id.isdigit():
            raise v1_error(400, "BadRequestException", f"Content id must be numeric: {page_id}")
        page = self.pages.get(page_id)
        if page is None:
            raise v1_error(
                404, "NotFoundException", f"No content found with id: ContentId{{id={page_id}}}"
            )
        return page

    # -- convert ---------------------------------------------------------------------

    def _read_convert_request(self, to: str, targets: frozenset[str]) -> _ConvertRequest:
        """Authenticate and validate a convert POST."""
        account_id = self._authenticate("READ")
        if self.require_xsrf_on_convert:
            self._check_xsrf()
        if to not in targets:
            raise v1_error(400, "BadRequestException", f"Cannot convert from storage to {to}")
        if request.mimetype != "application/json":
            raise v1_error(
                415, "UnsupportedMediaTypeException", "Content-Type must be application/json"
            )
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise v1_error(
                400, "BadRequestException", "Body must be a JSON object with a string 'value'"
            )
        if body.get("representation") != "storage":
            raise v1_error(
                400,
                "BadRequestException",
                f"Cannot convert from {body.get('representation')} to {to}",
            )
        args = request.args
        content_id = args.get("contentIdContext")
        if content_id is not None:
            self._page(content_id)
        space_key = args.get("spaceKeyContext")
        if space_key is not None and content_id is None and not self.pages.space(space_key):
            raise v1_error(404, "NotFoundException", f"No space with key : {space_key}")
        embedded = args.get("embeddedContentRender", "current")
        if embedded not in ("current", "version-at-save"):
            raise v1_error(400, "BadRequestException", f"Invalid embeddedContentRender: {embedded}")
        expand = tuple(sorted(e for arg in args.getlist("expand") for e in arg.split(",") if e))
        key = (account_id, to, body["value"], expand, content_id, space_key, embedded)
        return _ConvertRequest(account_id, body["value"], key)

    def _convert_async(self, to: str) -> Response:
        convert = self._read_convert_request(to, ASYNC_TARGETS)
        allow_cache = request.args.get("allowCache", "false").lower() == "true"
        with self._lock:
            self._expire_tasks_locked()
            cached = self._task_by_key.get(convert.key)
            if cached is not None and allow_cache:
                return jsonify({"asyncId": cached})
            if cached is not None:
                # An identical request voids the earlier result (two may race here).
                self._tasks.pop(cached, None)
        value, error = self._render(convert.storage, convert.account_id)
        task = _RenderTask(
            id=str(uuid.uuid4()),
            owner=convert.account_id,
            key=convert.key,
            representation=to,
            created_at=self.clock(),
            value=value,
            error=error,
        )
        with self._lock:
            self._tasks[task.id] = task
            self._task_by_key[convert.key] = task.id
        return jsonify({"asyncId": task.id})

    def _render(self, storage: str, account_id: str) -> tuple[str | None, str | None]:
        scroll_root = self.scroll_base_url or self._root_url()
        try:
            return self.renderer.render(storage, account_id, scroll_root), None
        except RenderError as exc:
            return None, str(exc)

    def _poll(self, async_id: str) -> Response:
        account_id = self._authenticate("READ")
        with self._lock:
            self._expire_tasks_locked()
            task = self._tasks.get(async_id)
            if task is None or task.owner != account_id:
                raise v1_error(404, "NotFoundException", f"No async render task with id {async_id}")
            task.polls += 1
            body: dict[str, object] = {
                "renderTaskId": task.id,
                "representation": task.representation,
                "embeddedContent": [],
                "_expandable": {"webresource": "", "mediaToken": ""},
                "_links": {"base": self._site_url(), "context": self.context_path},
            }
            if task.polls <= self.async_steps:
                body["status"] = "QUEUED" if task.polls == 1 else "WORKING"
                return jsonify(body)
            if task.completed_at is None:
                task.completed_at = self.clock()
        if task.error is not None:
            body.update(status="FAILED", error=task.error)
        else:
            body.update(status="COMPLETED", value=task.value, error=None)
        return jsonify(body)

    def _expire_tasks_locked(self) -> None:
        now = self.clock()
        for task in list(self._tasks.values()):
            since = task.completed_at if task.completed_at is not None else task.created_at
            if now - since >= self.async_result_ttl:
                del self._tasks[task.id]
                if self._task_by_key.get(task.key) == task.id:
                    del self._task_by_key[task.key]

    def _convert_sync(self, to: str) -> Response:
        if not self.sync_enabled:
            raise v1_error(404, "NotFoundException", "Not Found")
        convert = self._read_convert_request(to, SYNC_TARGETS)
        value, error = self._render(convert.storage, convert.account_id)
        if error is not None:
            raise v1_error(400, "BadRequestException", error)
        return jsonify(
            {
                "value": value,
                "representation": to,
                "embeddedContent": [],
                "_expandable": {"webresource": "", "mediaToken": ""},
                "_links": {"base": self._site_url(), "context": self.context_path},
            }
        )

    # -- attachments -----------------------------------------------------------------

    def _list_attachments(self, page_id: str) -> Response:
        self._authenticate("READ", allow_app=True)
        self._page(page_id)
        with self._lock:
            results = [self._attachment_json(page_id, a) for a in self.attachments.get(page_id, [])]
        return jsonify(
            {
                "results": results,
                "start": 0,
                "limit": max(len(results), 50),
                "size": len(results),
                "_links": {"base": self._site_url(), "context": self.context_path},
            }
        )

    def _upload_attachments(self, page_id: str, replace: bool) -> Response:
        account_id = self._authenticate("WRITE", allow_app=True)
        self._check_xsrf()
        self._page(page_id)
        if request.mimetype != "multipart/form-data":
            raise v1_error(
                415, "UnsupportedMediaTypeException", "Content-Type must be multipart/form-data"
            )
        uploads = request.files.getlist("file")
        if not uploads or any(not upload.filename for upload in uploads):
            raise v1_error(400, "BadRequestException", "At least one named 'file' part is required")
        stored = [
            StoredAttachment(
                str(upload.filename),
                upload.read(),
                upload.mimetype or "application/octet-stream",
                account_id,
            )
            for upload in uploads
        ]
        with self._lock:
            results = [self._store_attachment_locked(page_id, att, replace) for att in stored]
        return jsonify({"results": results, "size": len(results)})

    def _store_attachment_locked(
        self, page_id: str, att: StoredAttachment, replace: bool
    ) -> dict[str, object]:
        page_attachments = self.attachments.setdefault(page_id, [])
        record = self._attachment_records.get((page_id, att.filename))
        if record is None:
            record = _AttachmentRecord(
                f"att{900000 + len(self._attachment_records) + 1}",
                page_id,
                1,
                len(page_attachments),
            )
            self._attachment_records[(page_id, att.filename)] = record
            page_attachments.append(att)
        elif not replace:
            raise v1_error(
                400,
                "BadRequestException",
                "Cannot add a new attachment with same file name as an existing attachment: "
                + att.filename,
            )
        else:
            record.version += 1
            page_attachments[record.index] = att
        return self._attachment_json(page_id, att)

    def _attachment_json(self, page_id: str, att: StoredAttachment) -> dict[str, object]:
        record = self._attachment_records[(page_id, att.filename)]
        download = (
            f"/download/attachments/{page_id}/{quote(att.filename)}"
            f"?version={record.version}&modificationDate=0&api=v2"
        )
        return {
            "id": record.id,
            "type": "attachment",
            "status": "current",
            "title": att.filename,
            "version": {"number": record.version, "by": {"accountId": att.uploader}},
            "container": {"id": page_id, "type": "page"},
            "metadata": {"mediaType": att.content_type},
            "extensions": {"mediaType": att.content_type, "fileSize": len(att.data)},
            "_links": {
                "download": download,
                "self": f"{self._site_url()}/rest/api/content/{record.id}",
            },
        }

    # -- Scroll download host --------------------------------------------------------

    def _download(self, product: str, filename: str) -> Response:
        try:
            if self.reject_download_authorization and "Authorization" in request.headers:
                raise ScrollError(400, "Do not send an Authorization header with a download URL.")
            if product not in PRODUCTS:
                raise ScrollError(404, f"Unknown exporter {product!r}.")
            token = request.args.get("jwt")
            if not token:
                raise ScrollError(401, "Missing download token.")
            job_id = self.renderer.verify_download(token, product, filename)
            file, name = self.engine.file(job_id)
        except ScrollError as exc:
            raise ApiError(exc.status, exc.body()) from exc
        reply = Response(file.chunks(), content_type=file.content_type, direct_passthrough=True)
        reply.content_length = file.size
        reply.headers.set("Content-Disposition", "attachment", filename=name)
        return reply

    # -- the Flask app ---------------------------------------------------------------

    def _make_app(self) -> Flask:
        app = Flask(__name__)
        convert = f"{self.context_path}/rest/api/contentbody/convert"
        attachments = f"{self.context_path}/rest/api/content/<page_id>/child/attachment"
        app.add_url_rule(
            f"{convert}/async/<to>", "convert_async", self._convert_async, methods=["POST"]
        )
        app.add_url_rule(f"{convert}/async/<async_id>", "poll", self._poll, methods=["GET"])
        app.add_url_rule(f"{convert}/<to>", "convert_sync", self._convert_sync, methods=["POST"])
        app.add_url_rule(attachments, "list_attachments", self._list_attachments, methods=["GET"])
        app.add_url_rule(
            attachments,
            "add_attachments",
            lambda page_id: self._upload_attachments(page_id, replace=False),
            methods=["POST"],
        )
        app.add_url_rule(
            attachments,
            "put_attachments",
            lambda page_id: self._upload_attachments(page_id, replace=True),
            methods=["PUT"],
        )
        app.add_url_rule(
            "/scroll/<product>/download/<path:filename>",
            "download",
            self._download,
            methods=["GET"],
        )

        @app.before_request
        def before() -> None:
            g.account_id = None
            fault = self._take_fault(request.path)
            if fault is not None:
                raise self._fault_error(fault)

        @app.after_request
        def after(reply: Response) -> Response:
            call = Call(
                request.method,
                request.path,
                request.args.to_dict(),
                g.get("account_id"),
                reply.status_code,
            )
            with self._lock:
                self.calls.append(call)
            return reply

        @app.errorhandler(ApiError)
        def api_error(exc: ApiError) -> Response:
            if isinstance(exc.body, str):
                reply = Response(exc.body, status=exc.status, content_type="text/plain")
            else:
                reply = jsonify(exc.body)
                reply.status_code = exc.status
            reply.headers.update(exc.headers)
            return reply

        @app.errorhandler(HTTPException)
        def http_error(exc: HTTPException) -> Response:
            code = exc.code or 500
            return api_error(v1_error(code, "ServiceException", HTTPStatus(code).phrase))

        return app
