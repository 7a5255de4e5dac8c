"""The simulated Scroll Word/PDF/HTML Exporter REST API, Data Center and Cloud flavours.

Written from ``seeds/scroll-exporter-rest-api.txt`` and ``upstreams.md`` §1; jobs live in a
:class:`~bridge.sandbox.scroll_engine.ScrollJobEngine`.

Data Center (``flavor="dc"``), below ``{context_path}/plugins/servlet/{product}/api/public/1/``
with product ``scroll-office``, ``scroll-pdf`` or ``scroll-html``:

* ``POST exports`` (JSON body) -> 200 ``{"jobId": …}``; ``GET exports/{id}/status``;
  ``DELETE exports/{id}`` -> 204 without body; ``GET exports/{id}/download/{file name}``
  (the ``downloadUrl`` of a complete job; needs the same credentials as the other calls);
  ``GET export-sync?templateId=&pageId=&scope=`` -> the file, streamed.
* ``GET {context_path}/rest/api/user/current`` for credential checks.
* Auth: ``Authorization: Bearer <PAT>``, HTTP Basic, ``os_username``/``os_password`` query
  parameters, or (``allow_anonymous``) none. Anonymous jobs belong to the ``JSESSIONID``
  session the start response set, so later calls without that cookie get 404.
* ``nodes > 1``: each response that opens a session sets ``JSESSIONID=<id>.node<n>`` (Tomcat
  ``jvmRoute`` style); a request without a known session cookie is routed round-robin, and a
  job is known only on the node that started it.

Cloud (``flavor="cloud"``), one port with a path prefix per product host
(``/scroll-word``, ``/scroll-pdf``, ``/scroll-html``; ``/scroll-office`` for the older host):
``POST /{p}/api/public/1/exports``, ``GET …/exports/{id}/status``, ``DELETE …/exports/{id}``
with ``Authorization: Bearer <Scroll API token>``; ``downloadUrl`` is pre-signed,
``/{p}/download/{file name}?jwt=<HS256 token>``, fetched without auth.

UNCONFIRMED choices (each vendor-undocumented): the error body ``{"status", "message"}``;
204 for DELETE; 401 for missing or wrong credentials, 404 for another owner's job; 415 for
a start body that is not ``application/json``; a missing, bad or expired pre-signed ``jwt``
-> 403 (as object stores answer); the pre-signed link lives ``download_ttl`` seconds (10 min);
credentials are checked on every request (a session cookie alone does not log a user in);
``GET rest/api/user/current`` without credentials answers ``{"type": "anonymous"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import jwt
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from bridge.sandbox.files import GeneratedFile
from bridge.sandbox.harness import Clock, FaultInjector
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.scroll_engine import PRODUCTS, ScrollError, ScrollJobEngine

CLOUD_PRODUCTS: dict[str, str] = {
    "scroll-word": "scroll-office",
    "scroll-office": "scroll-office",
    "scroll-pdf": "scroll-pdf",
    "scroll-html": "scroll-html",
}
"""Cloud host prefix -> engine product (``scroll-office`` is the older Word host)."""

SESSION_COOKIE = "JSESSIONID"
_API = "api/public/1"
_CREDENTIAL_PARAMS = ("os_username", "os_password", "os_authType")


@dataclass(frozen=True)
class Call:
    """One request the sandbox received."""

    method: str
    path: str
    query: str


class CallLog:
    """A thread-safe record of received requests, for tests that count upstream calls."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def append(self, call: Call) -> None:
        """Record one request."""
        with self._lock:
            self._calls.append(call)

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """How many requests matched *method* (any if ``None``) and *path_contains*."""
        return sum(
            1
            for call in self
            if (method is None or call.method == method) and path_contains in call.path
        )

    def clear(self) -> None:
        """Forget all recorded requests."""
        with self._lock:
            self._calls.clear()

    def __iter__(self) -> Iterator[Call]:
        with self._lock:
            return iter(list(self._calls))

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)


class ScrollRestSandbox:
    """The Scroll exporters' REST API as a Flask app (``.app``) over a shared job engine.

    *pats* is a collection of Personal Access Tokens (each belonging to user ``admin``) or a
    mapping token -> user name. *users* maps user names to passwords for Basic auth and URL
    parameters (admins can switch either off: *allow_basic*, *allow_url_params*).
    *api_tokens* are the Cloud Scroll API tokens. *nodes* simulates a multi-node Data
    Center behind a sticky load balancer. Cloud download links are HS256 JWTs signed with
    *signing_key* (random by default) and expire *download_ttl* seconds after the status
    response that minted them. ``.calls`` records every request; :meth:`inject` adds faults.
    """

    def __init__(
        self,
        engine: ScrollJobEngine | None = None,
        *,
        flavor: Literal["dc", "cloud"] = "dc",
        context_path: str = "/confluence",
        pats: Collection[str] | Mapping[str, str] = ("sandbox-pat",),
        users: Mapping[str, str] | None = None,
        api_tokens: Collection[str] = ("sandbox-scroll-token",),
        allow_anonymous: bool = False,
        allow_basic: bool = True,
        allow_url_params: bool = True,
        nodes: int = 1,
        clock: Clock | None = None,
        download_ttl: float = 600.0,
        signing_key: bytes | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.clock: Clock = clock or (engine.clock if engine else time.time)
        self.engine = engine or ScrollJobEngine(demo_tree(), self.clock)
        self.flavor = flavor
        self.context_path = context_path.rstrip("/")
        self.pats: dict[str, str] = (
            dict(pats) if isinstance(pats, Mapping) else dict.fromkeys(pats, "admin")
        )
        self.users: dict[str, str] = dict({"admin": "admin"} if users is None else users)
        self.api_tokens = frozenset(api_tokens)
        self.allow_anonymous = allow_anonymous
        self.allow_basic = allow_basic
        self.allow_url_params = allow_url_params
        self.nodes = nodes
        self.download_ttl = download_ttl
        self.calls = CallLog()
        self._signing_key = signing_key or secrets.token_bytes(32)
        self.faults = FaultInjector(lambda status: ScrollError(status, "Injected fault.").body())
        self.inject = self.faults.add
        """Queue a fault: ``inject(status, times=, path_contains=, retry_after=, body=)``."""
        self._sessions: set[str] = set()
        self._job_homes: dict[str, tuple[str, int]] = {}
        self._round_robin = itertools.count()
        self._lock = threading.Lock()
        self.app = self._build_app()

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        app.json.sort_keys = False  # type: ignore[attr-defined]
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.register_error_handler(ScrollError, self._error_response)
        app.register_error_handler(HTTPException, self._http_error_response)
        if self.flavor == "dc":
            prefix = f"{self.context_path}/plugins/servlet/{_any(PRODUCTS)}/{_API}"
            app.add_url_rule(f"{self.context_path}/rest/api/user/current", view_func=self._user)
            app.add_url_rule(f"{prefix}/export-sync", view_func=self._export_sync)
            app.add_url_rule(
                f"{prefix}/exports/<job_id>/download/<filename>", view_func=self._dc_download
            )
        else:
            prefix = f"/{_any(CLOUD_PRODUCTS)}/{_API}"
            app.add_url_rule(
                f"/{_any(CLOUD_PRODUCTS)}/download/<filename>", view_func=self._cloud_download
            )
        app.add_url_rule(f"{prefix}/exports", view_func=self._start, methods=["POST"])
        app.add_url_rule(f"{prefix}/exports/<job_id>/status", view_func=self._status)
        app.add_url_rule(f"{prefix}/exports/<job_id>", view_func=self._cancel, methods=["DELETE"])
        return app

    def _before_request(self) -> Response | None:
        self.calls.append(Call(request.method, request.path, request.query_string.decode()))
        fault = self.faults.take(request.path)
        if fault is not None:
            return fault
        if self.flavor == "dc":
            self._open_session()
        return None

    def _after_request(self, response: Response) -> Response:
        if g.get("new_session"):
            response.set_cookie(
                SESSION_COOKIE, g.session, path=self.context_path or "/", httponly=True
            )
        return response

    def _open_session(self) -> None:
        """Route the request to a node: its session's node, or the next one round-robin."""
        cookie = request.cookies.get(SESSION_COOKIE, "")
        with self._lock:
            if cookie in self._sessions:
                g.session, g.new_session = cookie, False
            else:
                node = next(self._round_robin) % self.nodes
                g.session = f"{secrets.token_hex(16).upper()}.node{node + 1}"
                g.new_session = True
                self._sessions.add(g.session)
        g.node = int(g.session.rpartition(".node")[2]) - 1

    # -- views -----------------------------------------------------------------------

    def _start(self, product: str) -> Response:
        owner = self._owner()
        if not request.is_json:
            raise ScrollError(415, "Content-Type must be application/json.")
        params = request.get_json(silent=True)
        if not isinstance(params, dict):
            raise ScrollError(400, "The request body must be a JSON object.")
        job_id = self.engine.start(self._product(product), params, owner)
        with self._lock:
            self._job_homes[job_id] = (self._product(product), g.get("node", 0))
        return jsonify({"jobId": job_id})

    def _status(self, product: str, job_id: str) -> Response:
        owner = self._owner()
        self._require_local_job(product, job_id)
        status = self.engine.status(job_id, owner)
        if status["status"] == "complete":
            _, filename = self.engine.file(job_id)
            status["downloadUrl"] = self._download_url(product, job_id, filename)
        return jsonify(status)

    def _cancel(self, product: str, job_id: str) -> Response:
        owner = self._owner()
        self._require_local_job(product, job_id)
        self.engine.cancel(job_id, owner)
        return Response(status=204)

    def _export_sync(self, product: str) -> Response:
        self._owner()
        params = {k: v for k, v in request.args.items() if k not in _CREDENTIAL_PARAMS}
        return _file_response(*self.engine.export_now(product, params))

    def _dc_download(self, product: str, job_id: str, filename: str) -> Response:
        owner = self._owner()
        self._require_local_job(product, job_id)
        if self.engine.owner_of(job_id) != owner:
            raise ScrollError(404, f"Export job {job_id} not found.")
        return self._job_file(job_id, filename)

    def _cloud_download(self, product: str, filename: str) -> Response:
        token = request.args.get("jwt")
        if not token:
            raise ScrollError(403, "Missing download token.")
        try:
            claims = jwt.decode(
                token,
                self._signing_key,
                algorithms=["HS256"],
                audience=product,
                options={
                    "require": ["exp", "sub", "aud"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidTokenError as error:
            raise ScrollError(403, f"Invalid download token: {error}") from None
        if float(claims["exp"]) <= self.clock():
            raise ScrollError(403, "The download link has expired.")
        return self._job_file(str(claims["sub"]), filename)

    def _user(self) -> Response:
        owner = self._owner(anonymous_ok=True)
        if owner.startswith("user:"):
            name = owner.removeprefix("user:")
            return jsonify(
                {"type": "known", "username": name, "userKey": name, "displayName": name}
            )
        return jsonify({"type": "anonymous"})

    # -- helpers ---------------------------------------------------------------------

    def _error_response(self, error: ScrollError) -> Response:
        response = jsonify(error.body())
        response.status_code = error.status
        if error.status == 401:
            challenge = 'Basic realm="Confluence"' if self.flavor == "dc" else "Bearer"
            response.headers["WWW-Authenticate"] = challenge
        return response

    def _http_error_response(self, error: HTTPException) -> Response:
        return self._error_response(ScrollError(error.code or 500, error.name))

    def _product(self, product: str) -> str:
        return CLOUD_PRODUCTS[product] if self.flavor == "cloud" else product

    def _owner(self, *, anonymous_ok: bool = False) -> str:
        """The caller's identity (jobs are visible only to it); 401 if not authenticated."""
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if self.flavor == "cloud":
            if scheme.lower() == "bearer" and _known(credential, self.api_tokens):
                return "token:" + hashlib.sha256(credential.encode()).hexdigest()[:16]
            raise ScrollError(401, "A valid Scroll API token is required.")
        if header:
            return "user:" + self._header_user(scheme.lower(), credential)
        if self.allow_url_params and "os_username" in request.args:
            user = request.args["os_username"]
            return "user:" + self._check_password(user, request.args.get("os_password", ""))
        if self.allow_anonymous or anonymous_ok:
            return f"anonymous:{g.session}"
        raise ScrollError(401, "Authentication required.")

    def _header_user(self, scheme: str, credential: str) -> str:
        if scheme == "bearer" and credential:
            for token, user in self.pats.items():
                if hmac.compare_digest(token, credential):
                    return user
        auth = request.authorization
        if scheme == "basic" and self.allow_basic and auth is not None and auth.username:
            return self._check_password(auth.username, auth.password or "")
        raise ScrollError(401, "Invalid credentials.")

    def _check_password(self, user: str, password: str) -> str:
        if hmac.compare_digest(self.users.get(user, "\0"), password):
            return user
        raise ScrollError(401, "Invalid credentials.")

    def _require_local_job(self, product: str, job_id: str) -> None:
        """A job is known only to the exporter and (multi-node DC) the node that started it."""
        with self._lock:
            home = self._job_homes.get(job_id)
        if home is not None and home != (self._product(product), g.get("node", 0)):
            raise ScrollError(404, f"Export job {job_id} not found.")

    def _download_url(self, product: str, job_id: str, filename: str) -> str:
        root = request.host_url.rstrip("/")
        if self.flavor == "dc":
            return (
                f"{root}{self.context_path}/plugins/servlet/{product}/{_API}/exports/"
                f"{job_id}/download/{filename}"
            )
        now = self.clock()
        claims = {"sub": job_id, "aud": product, "iat": int(now), "exp": now + self.download_ttl}
        token = jwt.encode(claims, self._signing_key, algorithm="HS256")
        return f"{root}/{product}/download/{filename}?jwt={token}"

    def _job_file(self, job_id: str, filename: str) -> Response:
        file, name = self.engine.file(job_id)
        if filename != name:
            raise ScrollError(404, f"No file {filename} for export job {job_id}.")
        return _file_response(file, name)


def _any(products: Collection[str]) -> str:
    """A route variable ``product`` matching exactly the given names."""
    return "<any({}):product>".format(",".join(f"'{name}'" for name in products))


def _known(credential: str, accepted: Collection[str]) -> bool:
    return bool(credential) and any(hmac.compare_digest(s, credential) for s in accepted)


def _file_response(file: GeneratedFile, filename: str) -> Response:
    """Stream *file* as an attachment; padding is generated as it is sent."""
    return Response(
        file.chunks(),
        content_type=file.content_type,
        headers={
            "Content-Length": str(file.size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        },
        direct_passthrough=True,
    )
