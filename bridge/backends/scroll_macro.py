"""``scroll-macro``: the Scroll Word/PDF/HTML exporters on Confluence Cloud, as a given user.

The macro route (``seeds/scroll-exporter-macro-integration.txt``, upstreams.md §1.4 and §3):
the bridge asks Confluence to render a hidden ``scroll-*-export-job`` macro to ``export_view``,
Confluence asks Scroll to render it, and Scroll answers with an escaped JSON object inside
``<div class="result"><code class="success|error">``. Rendering with an ``export-request``
starts an export (→ ``jobId``); rendering with an ``export-job-id`` reports its status; at
``complete`` the file is fetched from ``downloadUrl``, which carries its own token, so it is
fetched **without** an ``Authorization`` header, and only from an allowed host
(``*.exporter.k15t.app``, the tenant's site, configured ``download_hosts``).

Every render runs as the job's user (``asUser``): a Connect installation's impersonation token
(:mod:`bridge.impersonation`), or, when the caller is a Forge app, its own user token handed
over in ``JobContext.secrets`` (``user_token`` and ``product_base_url``, the FIT's
``app.apiBaseUrl``; REST calls then go to ``{product_base_url}/wiki/rest/api``).

The convert call, per tenant ``convert``:

* ``async``: ``POST …/contentbody/convert/async/export_view`` → ``asyncId``, then
  ``GET …/contentbody/convert/async/{asyncId}`` until ``COMPLETED`` (or ``FAILED``);
* ``sync``: ``POST …/contentbody/convert/export_view`` (deprecated on Cloud, still on some sites);
* ``auto`` (default): async, falling back to sync when the async route answers 404. A fallback
  that worked is remembered in the job's handle and, per site, in the process.

**Convert polling inside one step.** One bridge step (a ``start`` or ``poll`` of the service)
makes at most one convert POST and ``async_polls`` result GETs spaced ``async_poll_delay``,
doubling (0.1 + 0.2 s by default), so a step stays well under a second. If the render is not
done by then, the ``asyncId`` is kept in the handle (``pending``) and the next step collects
it instead of rendering again. A result Confluence has forgotten (404; results live five
minutes) is rendered afresh at the next step, at most ``MAX_LOST_RESULTS`` times per job —
for a *start* render this may leave an orphan Scroll export, which Scroll drops on its own.

``issued-at`` is taken right before each POST; Scroll allows it 10 s of leeway. A rejection
of it is retried once with a fresh timestamp; a second one fails the job saying the bridge's
clock is probably off. A render that status-polls is idempotent, so its 5xx answers are
retried inline like a GET's; a start render is retried inline only on 429/503 (the shared
policy of :class:`~bridge.http.UpstreamClient`) and otherwise at the job level. A 401 with a
cached impersonation token drops the token and tries once more with a fresh one.

Scroll has no documented cancel operation on the macro route: cancelling a job stops the
bridge polling; the Scroll export runs to its end and is forgotten by Scroll.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import requests
from pydantic import Field, SecretStr, field_validator, model_validator

from bridge.backends.base import (
    Backend,
    BackendConfig,
    BackendServices,
    Download,
    Handle,
    JobContext,
    Ready,
    Running,
    Step,
)
from bridge.backends.scroll_rest import (
    CONTENT_TYPES,
    ScrollRestConfig,
    ScrollRestOptions,
    _filename,
    export_parameters,
    status_step,
)
from bridge.errors import (
    ConfigurationError,
    FieldError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamResponseError,
    UpstreamUnavailableError,
    ValidationError,
)
from bridge.impersonation import ConnectInstallation, ImpersonationTokens
from bridge.macro import (
    MacroError,
    build_start_macro,
    build_status_macro,
    parse_start_result,
    parse_status_result,
)
from bridge.models import ExportRequest, Format
from bridge.scroll import ScrollStatus

SCROLL_DOWNLOAD_HOSTS = ("*.exporter.k15t.app",)
FORGE_API_HOSTS = ("api.atlassian.com", "api.stg.atlassian.com")
ASYNC_WORKING = frozenset({"WORKING", "QUEUED", "RERUNNING"})
MAX_LOST_RESULTS = 2
ISSUED_AT_LEEWAY = 10

Operation = Literal["start", "status"]


class ScrollMacroConfig(BackendConfig):
    """A tenant's Confluence Cloud site with Scroll installed, and how to act as its users."""

    site_url: str
    """The Confluence base URL including ``/wiki`` (the install hook's ``baseUrl``)."""
    client_key: str | None = None
    oauth_client_id: str | None = None
    shared_secret: SecretStr | None = Field(default=None, min_length=32)
    """The Connect installation; leave all three out for a Forge-only tenant."""
    auth_server: str | None = None
    """Override of the OAuth authorization server (by default chosen by the site's host)."""
    scopes: list[str] = Field(default_factory=lambda: ["READ"])
    """Scopes the impersonation token asks for (convert needs ``READ``); empty sends none."""
    convert: Literal["async", "sync", "auto"] = "auto"
    app_name: str | None = Field(default=None, min_length=1, max_length=200)
    """The ``issued-by-app`` value (the app's Marketplace name); defaults to ``app_name``."""
    templates: dict[Format, str] = Field(default_factory=dict)
    """Default template id per format, used when the request names none."""
    download_hosts: list[str] = Field(default_factory=list)
    """Extra hosts ``downloadUrl`` may point at (Scroll's and the site's are always allowed)."""
    async_polls: int = Field(default=3, ge=1, le=20)
    """Result GETs per step for an async render before leaving it to the next step."""
    async_poll_delay: float = Field(default=0.1, ge=0, le=5)
    """First pause between two result GETs; it doubles after each."""

    @field_validator("site_url", "auth_server")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _upper(cls, scopes: list[str]) -> list[str]:
        return [scope.strip().upper() for scope in scopes if scope.strip()]

    @field_validator("app_name")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text")
        return value

    @model_validator(mode="after")
    def _connect_complete(self) -> ScrollMacroConfig:
        given = [self.client_key, self.oauth_client_id, self.shared_secret]
        if any(given) and not all(given):
            raise ValueError(
                "a Connect installation needs client_key, oauth_client_id and shared_secret"
            )
        return self

    def installation(self) -> ConnectInstallation | None:
        """The Connect installation, or ``None`` for a Forge-only tenant."""
        if not (self.client_key and self.oauth_client_id and self.shared_secret):
            return None
        return ConnectInstallation(
            client_key=self.client_key,
            base_url=self.site_url,
            oauth_client_id=self.oauth_client_id,
            shared_secret=self.shared_secret.get_secret_value(),
            auth_server=self.auth_server,
        )


class ScrollMacroOptions(ScrollRestOptions):
    """Scroll export parameters (as for ``scroll-rest``); the macro route has no sync mode."""

    mode: Literal["async"] = "async"


@dataclass(frozen=True)
class _Credentials:
    """Where and as whom to call Confluence for one job."""

    api: str
    """The REST root, ``…/wiki/rest/api``."""
    token: str
    user: str
    renew: Callable[[], None] | None
    """Drop the cached token so the next call mints a fresh one (Connect only)."""


class ScrollMacroBackend(Backend):
    """Exports through the hidden Scroll macros, rendered by Confluence Cloud as the job's user."""

    name = "scroll-macro"
    formats = frozenset({"docx", "pdf", "html"})
    Config = ScrollMacroConfig
    Options = ScrollMacroOptions
    pages_only = True

    def __init__(self, services: BackendServices) -> None:
        super().__init__(services)
        self._sleep: Callable[[float], None] = services.extras.get("sleep", time.sleep)
        self._tokens: ImpersonationTokens | None = services.extras.get("impersonation")
        self._sync_sites: set[str] = set()

    def unsupported(self, config: Any, request: ExportRequest) -> str | None:
        if request.backend == "auto" and request.as_user is None:
            return "scroll-macro exports as a user; name one with asUser"
        return super().unsupported(config, request)

    def validate(self, config: Any, request: ExportRequest) -> None:
        options = self.parse_options(request)
        assert isinstance(options, ScrollMacroOptions)
        if request.as_user is None:
            raise ValidationError(
                "scroll-macro exports as a Confluence user.",
                [
                    FieldError(
                        "asUser",
                        "Name the accountId to export as; the export runs with that user's "
                        "permissions.",
                    )
                ],
            )
        export_request(config, request, options)

    # --- the three verbs -------------------------------------------------------------

    def start(self, ctx: JobContext, request: ExportRequest) -> Step:
        options = ScrollMacroOptions.model_validate(request.options)
        handle: Handle = {
            "format": request.format,
            "pageId": request.page_id,
            "exportRequest": export_request(ctx.config, request, options),
            "phase": "starting",
        }
        return self._advance(ctx, handle)

    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        if "downloadUrl" in handle:
            return Ready(handle)
        return self._advance(ctx, dict(handle))

    @contextmanager
    def fetch(self, ctx: JobContext, handle: Handle) -> Iterator[Download]:
        config: ScrollMacroConfig = ctx.config
        url = handle["downloadUrl"]
        site_host = urlsplit(config.site_url).netloc
        self.host_policy(config, *SCROLL_DOWNLOAD_HOSTS, site_host).check(url, self.name)
        # The URL carries its own token; Scroll refuses (and must never see) any credential.
        response = self.client.request("GET", url, stream=True, allow_redirects=False)
        fmt = handle["format"]
        size = response.headers.get("Content-Length")
        yield Download(
            chunks=self.client.iter_body(response),
            filename=_filename(response.headers.get("Content-Disposition"), response.url, fmt),
            content_type=response.headers.get("Content-Type", CONTENT_TYPES[fmt]).split(";")[0],
            size=int(size) if size and size.isdigit() else None,
        )

    # --- one step: render, read, decide ----------------------------------------------

    def _advance(self, ctx: JobContext, handle: Handle) -> Step:
        op: Operation = "status" if "jobId" in handle else "start"
        result = self._macro(ctx, handle, op)
        if result is None:
            return Running(
                handle, progress=handle.get("progress", 0), phase=handle.get("phase", "exporting")
            )
        if isinstance(result, str):
            handle.update(jobId=result, phase="exporting")
            return Running(handle, progress=0, phase="exporting")
        return self._status_step(handle, result)

    def _status_step(self, handle: Handle, status: ScrollStatus) -> Step:
        if status.status == "incomplete":
            handle.update(progress=status.progress_percent, phase=status.phase)
        return status_step(status, handle, self.name)

    def _macro(self, ctx: JobContext, handle: Handle, op: Operation) -> str | ScrollStatus | None:
        """Render *op*'s macro and read its output; ``None`` while Confluence still renders."""
        parse: Callable[[str], str | ScrollStatus] = (
            parse_start_result if op == "start" else parse_status_result
        )
        while True:
            html = self._render(ctx, handle, op)
            if html is None:
                return None
            try:
                result = parse(html)
            except MacroError as exc:
                if not _issued_at_rejected(exc):
                    raise self._macro_failure(exc, op) from None
                if handle.pop("reissued", False):
                    raise self._clock_failure(exc) from None
                handle["reissued"] = True
                continue
            handle.pop("reissued", None)
            return result

    def _macro_failure(self, exc: MacroError, op: Operation) -> UpstreamError:
        what = "start the export" if op == "start" else "report the export's status"
        status = exc.status
        if status is not None and (status == 429 or status >= 500):
            return UpstreamUnavailableError(
                f"Scroll could not {what} (status {status}): {exc.message}",
                backend=self.name,
                upstream_status=status,
            )
        return UpstreamRejectedError(
            f"Scroll refused to {what} (status {status}): {exc.message}",
            backend=self.name,
            upstream_status=status,
        )

    def _clock_failure(self, exc: MacroError) -> UpstreamRejectedError:
        now = datetime.fromtimestamp(self.services.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return UpstreamRejectedError(
            f"Scroll rejected the macro's issued-at timestamp twice ({exc.message}): the bridge's "
            f"clock (now {now}) is probably more than {ISSUED_AT_LEEWAY} seconds off; "
            "synchronize it (NTP).",
            backend=self.name,
            upstream_status=exc.status,
        )

    # --- the convert call ------------------------------------------------------------

    def _render(self, ctx: JobContext, handle: Handle, op: Operation) -> str | None:
        """The export_view HTML of *op*'s macro, or ``None`` (handle keeps the ``asyncId``)."""
        pending = handle.pop("pending", None)
        if isinstance(pending, dict) and pending.get("op") == op:
            return self._collect(ctx, handle, op, str(pending["asyncId"]))
        config: ScrollMacroConfig = ctx.config
        if self._route(config, handle) == "sync":
            return self._convert_sync(ctx, handle, op)
        try:
            async_id = self._convert_async(ctx, handle, op)
        except UpstreamRejectedError as exc:
            if exc.upstream_status != 404 or config.convert != "auto":
                raise
            return self._fall_back_to_sync(ctx, handle, op, exc)
        return self._collect(ctx, handle, op, async_id)

    def _fall_back_to_sync(
        self, ctx: JobContext, handle: Handle, op: Operation, async_404: UpstreamRejectedError
    ) -> str:
        """Render with the sync route after the async one answered 404.

        Only a sync route that works is remembered: a 404 about the page itself (no such
        content) comes from both routes and must not switch the site to the deprecated one.
        """
        try:
            value = self._convert_sync(ctx, handle, op)
        except UpstreamRejectedError as exc:
            if exc.upstream_status == 404:
                raise async_404 from None
            raise
        handle["route"] = "sync"
        self._sync_sites.add(ctx.config.site_url)
        return value

    def _route(self, config: ScrollMacroConfig, handle: Handle) -> str:
        if config.convert != "auto":
            return config.convert
        if handle.get("route") == "sync" or config.site_url in self._sync_sites:
            return "sync"
        return "async"

    def _convert_async(self, ctx: JobContext, handle: Handle, op: Operation) -> str:
        response = self._post_macro(ctx, handle, op, "/contentbody/convert/async/export_view")
        body = self.client.json(response)
        async_id = body.get("asyncId") if isinstance(body, dict) else None
        if not isinstance(async_id, str) or not async_id:
            raise UpstreamResponseError(
                "Confluence's async convert answer has no asyncId", backend=self.name
            )
        return async_id

    def _convert_sync(self, ctx: JobContext, handle: Handle, op: Operation) -> str:
        response = self._post_macro(ctx, handle, op, "/contentbody/convert/export_view")
        return self._value(self.client.json(response))

    def _collect(self, ctx: JobContext, handle: Handle, op: Operation, async_id: str) -> str | None:
        """Poll an async render a few times; keep it pending in the handle if not done."""
        config: ScrollMacroConfig = ctx.config
        delay = config.async_poll_delay
        for attempt in range(config.async_polls):
            if attempt:
                self._sleep(delay)
                delay *= 2
            try:
                response = self._call(
                    ctx, "GET", f"/contentbody/convert/async/{quote(async_id, safe='')}"
                )
            except UpstreamRejectedError as exc:
                if exc.upstream_status != 404:
                    raise
                self._lost(handle, exc)
                return None
            body = self.client.json(response)
            status = body.get("status") if isinstance(body, dict) else None
            if status == "COMPLETED":
                return self._value(body)
            if status == "FAILED":
                error = body.get("error") if isinstance(body, dict) else None
                raise UpstreamRejectedError(
                    f"Confluence could not render the Scroll macro: {error or 'no reason given'}",
                    backend=self.name,
                )
            if status not in ASYNC_WORKING:
                raise UpstreamResponseError(
                    f"Confluence reports an unknown async render status {status!r}",
                    backend=self.name,
                )
        handle["pending"] = {"op": op, "asyncId": async_id}
        return None

    def _lost(self, handle: Handle, exc: UpstreamRejectedError) -> None:
        """Confluence forgot a render result: render again at the next step (a few times)."""
        handle["lost"] = handle.get("lost", 0) + 1
        if handle["lost"] > MAX_LOST_RESULTS:
            raise UpstreamRejectedError(
                f"Confluence keeps losing the macro's render result: {exc.message}",
                backend=self.name,
                upstream_status=exc.upstream_status,
            )

    def _value(self, body: object) -> str:
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str):
            raise UpstreamResponseError(
                "Confluence's convert answer has no rendered value", backend=self.name
            )
        return value

    def _post_macro(
        self, ctx: JobContext, handle: Handle, op: Operation, path: str
    ) -> requests.Response:
        fmt = handle["format"]
        config: ScrollMacroConfig = ctx.config

        def body() -> dict[str, str]:
            # issued-at is taken here, right before each send (Scroll allows 10 s of skew).
            issued_at = int(self.services.clock())
            if op == "start":
                app_name = config.app_name or self.services.settings.app_name
                value = build_start_macro(
                    fmt, handle["exportRequest"], app_name=app_name, issued_at=issued_at
                )
            else:
                value = build_status_macro(fmt, handle["jobId"], issued_at=issued_at)
            return {"value": value, "representation": "storage"}

        # Two identical renders (same user, body and issued-at second: a double click, or
        # two jobs sharing that Scroll job) must not void each other's result, which is
        # what an identical request with allowCache=false does. With allowCache=true they
        # share one render: one Scroll job and one file for identical starts, and one
        # answer (at most a second old) for identical status polls.
        params = {"contentIdContext": handle["pageId"]}
        if "/async/" in path:  # the sync route has no cache to share
            params["allowCache"] = "true"
        # A status render reads only; repeating it is harmless, so 5xx is retried inline.
        return self._call(ctx, "POST", path, body=body, params=params, idempotent=op == "status")

    def _call(
        self,
        ctx: JobContext,
        method: str,
        path: str,
        *,
        body: Callable[[], dict[str, str]] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One Confluence REST call as the job's user; a refused cached token is renewed once."""
        for attempt in (1, 2):
            creds = self._credentials(ctx)
            headers = {"Authorization": f"Bearer {creds.token}", "Accept": "application/json"}
            if body is not None:
                headers["X-Atlassian-Token"] = "no-check"
                kwargs["json"] = body()
            try:
                return self.client.request(method, creds.api + path, headers=headers, **kwargs)
            except UpstreamRejectedError as exc:
                if exc.upstream_status != 401:
                    raise
                if attempt == 1 and creds.renew is not None:
                    creds.renew()
                    continue
                raise UpstreamRejectedError(
                    f"Confluence refused the user token for {creds.user!r}: {exc.message}",
                    backend=self.name,
                    upstream_status=401,
                ) from None
        raise AssertionError("unreachable")

    def _credentials(self, ctx: JobContext) -> _Credentials:
        config: ScrollMacroConfig = ctx.config
        forge_token = ctx.secrets.get("user_token")
        if forge_token:
            base = ctx.secrets.get("product_base_url", "").rstrip("/")
            if not base:
                raise ValidationError(
                    "A Forge user token needs the product base URL it is valid for.",
                    [FieldError("product_base_url", "Pass the FIT's app.apiBaseUrl.")],
                )
            policy = self.host_policy(config, *FORGE_API_HOSTS, urlsplit(config.site_url).netloc)
            policy.check(base, self.name)
            label = ctx.as_user or "the Forge caller's user"
            return _Credentials(f"{base}/wiki/rest/api", forge_token, label, None)
        installation = config.installation()
        if installation is None:
            raise ConfigurationError(
                "scroll-macro for this tenant has no Connect installation (client_key, "
                "oauth_client_id, shared_secret) and the caller passed no Forge user token."
            )
        user = ctx.as_user
        if not user:
            raise ValidationError(
                "scroll-macro exports as a Confluence user; the job has none.",
                [FieldError("asUser", "Name the accountId to export as.")],
            )
        tokens = self._token_provider()
        token = tokens.token(installation, user, config.scopes)
        return _Credentials(
            f"{config.site_url}/rest/api",
            token,
            user,
            lambda: tokens.forget(installation, user, config.scopes),
        )

    def _token_provider(self) -> ImpersonationTokens:
        if self._tokens is None:
            store = self.services.extras.get("store")
            box = self.services.extras.get("secret_box")
            if store is None or box is None:
                raise ConfigurationError(
                    "scroll-macro needs the shared store and secret box to cache user tokens"
                )
            self._tokens = ImpersonationTokens(self.client, store, box, self.services.clock)
        return self._tokens


def export_request(
    config: ScrollMacroConfig, request: ExportRequest, options: ScrollMacroOptions
) -> dict[str, str]:
    """The ``export-request`` JSON of the start macro: the REST "Start Export" parameters.

    :raises ValidationError: no template named and none configured for the format.
    """
    # The REST backend's builder only reads ``templates`` from its configuration.
    templates = ScrollRestConfig(flavor="cloud", templates=config.templates)
    return export_parameters(templates, request, options)


def _issued_at_rejected(exc: MacroError) -> bool:
    return exc.status == 400 and "issued-at" in exc.message
