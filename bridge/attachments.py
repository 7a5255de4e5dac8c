"""Attach a finished export to its Confluence page (the ``attach`` delivery).

``PUT {site}/rest/api/content/{pageId}/child/attachment`` ("create or update": a file of that
name already attached gets a new version; ``POST`` would answer 400 for it), multipart with one
``file`` part, ``minorEdit=true`` (no notification storm for automated uploads) and a
``comment``, and ``X-Atlassian-Token: no-check``. The file is streamed from the artifact store
in chunks with a known ``Content-Length``: it is never held in memory whole.

**As whom, and where** (first that applies):

1. the job carries a Forge caller's user token (sealed with the job): as that user, at
   ``{app.apiBaseUrl}/wiki/rest/api`` (only Atlassian's API hosts or the site's host);
2. the job runs as a user and the tenant's Connect installation can act as users (an
   ``oauth_client_id``): as that user, with an impersonation token asking for ``WRITE``;
3. the tenant has a Connect installation: as the app, with a Connect JWT (``qsh`` of the
   upload request, ``iss`` = the app key as ACE sends it).

The site and installation are the tenant's ``scroll-macro`` table (``site_url``,
``client_key``, ``oauth_client_id``, ``shared_secret``, ``auth_server``) — which a Connect
install fills in — else, for an installed tenant without an OAuth client, the stored install.
With none of these the delivery stops: there is nowhere, or no one, to upload as.

Outcomes: 2xx attached; 429/5xx/unreachable → :class:`DeliveryFailed` (retried on the delivery
schedule, honouring ``Retry-After``); 401 with a cached impersonation token → renewed and tried
once more; 401/403/404 and other 4xx → :class:`DeliveryStopped` saying who was refused what.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import requests
from urllib3.fields import format_multipart_header_param

from bridge.artifacts import ArtifactStore
from bridge.atlassian_jwt import encode_outbound
from bridge.backends.scroll_macro import FORGE_API_HOSTS, ScrollMacroConfig
from bridge.config import Settings
from bridge.delivery import DeliveryFailed, DeliveryStopped
from bridge.errors import (
    BridgeError,
    NotFoundError,
    UpstreamError,
    UpstreamRejectedError,
)
from bridge.http import HostPolicy, UpstreamClient
from bridge.impersonation import ConnectInstallation, ImpersonationTokens
from bridge.installations import TENANT_PREFIX, Installations
from bridge.models import Artifact, Job
from bridge.tenants import TenantDirectory

log = logging.getLogger(__name__)

ATTACH_SCOPES = ("WRITE",)
"""The impersonation scope an upload needs."""
_CRLF = b"\r\n"


class MultipartUpload:
    """A ``multipart/form-data`` body: text fields, then one file streamed from *chunks*.

    Iterable (requests sends it chunk by chunk) with a length (so it is sent with a
    ``Content-Length``, not chunked); each iteration opens the file afresh.
    """

    def __init__(
        self,
        fields: dict[str, str],
        filename: str,
        content_type: str,
        size: int,
        chunks: Callable[[], Iterator[bytes]],
        boundary: str | None = None,
    ) -> None:
        self.boundary = boundary or secrets.token_hex(16)
        self.size = size
        self._chunks = chunks
        head = b""
        for name, value in fields.items():
            head += self._part_header(format_multipart_header_param("name", name), "text/plain")
            head += value.encode() + _CRLF
        disposition = (
            f"{format_multipart_header_param('name', 'file')}; "
            f"{format_multipart_header_param('filename', filename)}"
        )
        self._head = head + self._part_header(disposition, content_type)
        self._tail = _CRLF + f"--{self.boundary}--".encode() + _CRLF

    def _part_header(self, disposition: str, content_type: str) -> bytes:
        return (
            f"--{self.boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()

    @property
    def content_type(self) -> str:
        """The request's ``Content-Type`` (with the boundary)."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        yield from self._chunks()
        yield self._tail


@dataclass(frozen=True)
class _Uploader:
    """Where and as whom one upload goes."""

    api: str
    """The REST root, ``…/rest/api``."""
    who: str
    authorization: Callable[[str, str], str]
    """``(method, url)`` → the ``Authorization`` header value."""
    renew: Callable[[], None] | None = None
    """Drop a cached token so the next try mints a fresh one."""


@dataclass(frozen=True)
class _Site:
    """A tenant's Confluence Cloud site and its Connect installation."""

    url: str
    client_key: str
    shared_secret: str
    installation: ConnectInstallation | None
    """Set when the installation may act as users (it has an OAuth client)."""


class PageAttachments:
    """Uploads a complete job's file to its page; the ``attach`` of :class:`Deliveries`."""

    def __init__(
        self,
        settings: Settings,
        artifacts: ArtifactStore,
        tenants: TenantDirectory,
        installations: Installations,
        tokens: ImpersonationTokens,
        client: UpstreamClient,
        job_secrets: Callable[[Job], dict[str, str]],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.artifacts = artifacts
        self.tenants = tenants
        self.installations = installations
        self.tokens = tokens
        self.client = client
        """Makes one try per call (attempts = 1): the delivery schedule does the retrying."""
        self.job_secrets = job_secrets
        self.clock = clock

    def __call__(self, job: Job) -> None:
        """Attach *job*'s file to its page.

        :raises DeliveryFailed: try again later. :raises DeliveryStopped: never will work.
        """
        page_id = str((job.request.get("source") or {}).get("pageId") or "")
        artifact = job.artifact
        if artifact is None or not page_id.isdigit():
            raise DeliveryStopped("the job has no file or no page to attach it to")
        with self._outcome(job, page_id, "anyone"):
            uploader = self._uploader(job)
        url = f"{uploader.api}/content/{quote(page_id, safe='')}/child/attachment"
        for attempt in (1, 2):
            with self._outcome(job, page_id, uploader.who):
                try:
                    self._put(url, uploader, artifact)
                    return
                except UpstreamRejectedError as exc:
                    if exc.upstream_status != 401 or attempt == 2 or uploader.renew is None:
                        raise
                    uploader.renew()

    def _put(self, url: str, uploader: _Uploader, artifact: Artifact) -> None:
        size = self.artifacts.size(artifact.key)
        body = MultipartUpload(
            {"minorEdit": "true", "comment": f"Exported by {self.settings.app_name}"},
            artifact.filename,
            artifact.content_type,
            size,
            lambda: self.artifacts.open(artifact.key),
        )
        headers = {
            "Authorization": uploader.authorization("PUT", url),
            "X-Atlassian-Token": "no-check",
            "Accept": "application/json",
            "Content-Type": body.content_type,
        }
        response = self.client.request(
            "PUT", url, data=body, headers=headers, allow_redirects=False
        )
        with response:
            log.info(
                "export attached to its page",
                extra={"as": uploader.who, "attachment": _attachment_id(response), "bytes": size},
            )

    @contextmanager
    def _outcome(self, job: Job, page_id: str, who: str) -> Iterator[None]:
        """Turn what can go wrong into retry-later or stop-for-good."""
        try:
            yield
        except UpstreamRejectedError as exc:
            raise DeliveryStopped(
                f"Confluence refused to attach job {job.id}'s file to page {page_id} as {who} "
                f"(HTTP {exc.upstream_status}): {exc.message}"
            ) from None
        except UpstreamError as exc:
            if exc.retryable:
                raise DeliveryFailed(exc.message, exc.retry_after) from None
            raise DeliveryStopped(exc.message) from None
        except NotFoundError:
            raise DeliveryStopped(f"job {job.id}'s file is gone") from None
        except BridgeError as exc:
            raise DeliveryStopped(exc.message) from None
        except ValueError as exc:  # a Connect secret too short to sign with
            raise DeliveryStopped(f"cannot sign the upload: {exc}") from None

    # --- identity ----------------------------------------------------------------------

    def _uploader(self, job: Job) -> _Uploader:
        sealed = self.job_secrets(job) if job.secrets else {}
        site = self._site(job.tenant_id)
        forge_token = sealed.get("user_token")
        if forge_token:
            return self._forge_user(job, forge_token, sealed.get("product_base_url", ""), site)
        if site is None:
            raise DeliveryStopped(
                f"tenant {job.tenant_id!r} has no Confluence Cloud site to attach to "
                "(no scroll-macro table, no Connect install)"
            )
        if job.as_user and site.installation is not None:
            installation, user = site.installation, job.as_user
            return _Uploader(
                f"{site.url}/rest/api",
                f"user {user}",
                lambda _method, _url: (
                    f"Bearer {self.tokens.token(installation, user, ATTACH_SCOPES)}"
                ),
                lambda: self.tokens.forget(installation, user, ATTACH_SCOPES),
            )
        return _Uploader(f"{site.url}/rest/api", "the app", self._app_jwt(site))

    def _forge_user(self, job: Job, token: str, base: str, site: _Site | None) -> _Uploader:
        base = base.rstrip("/")
        hosts = (*FORGE_API_HOSTS, urlsplit(site.url).netloc if site else "")
        policy = HostPolicy(
            frozenset(h for h in hosts if h),
            allow_loopback=self.settings.allow_loopback_upstreams,
        )
        policy.check(base, self.client.backend)
        who = f"user {job.as_user}" if job.as_user else "the Forge caller's user"
        return _Uploader(f"{base}/wiki/rest/api", who, lambda _method, _url: f"Bearer {token}")

    def _app_jwt(self, site: _Site) -> Callable[[str, str], str]:
        def header(method: str, url: str) -> str:
            token = encode_outbound(
                method,
                url,
                base_url=site.url,
                client_key=site.client_key,
                shared_secret=site.shared_secret,
                app_key=self.settings.connect_app_key,
                now=int(self.clock()),
            )
            return f"JWT {token}"

        return header

    def _site(self, tenant_id: str) -> _Site | None:
        tenant = self.tenants.find(tenant_id)
        config = tenant.backends.get("scroll-macro") if tenant else None
        if isinstance(config, ScrollMacroConfig) and config.client_key and config.shared_secret:
            return _Site(
                config.site_url,
                config.client_key,
                config.shared_secret.get_secret_value(),
                config.installation(),
            )
        if tenant_id.startswith(TENANT_PREFIX):
            installed = self.installations.get(tenant_id[len(TENANT_PREFIX) :])
            if installed is not None:
                return _Site(
                    installed.base_url, installed.client_key, installed.shared_secret, None
                )
        return None


def _attachment_id(response: requests.Response) -> str | None:
    """The id Confluence gave the upload (for the log); the upload worked either way."""
    try:
        results = response.json().get("results")
        return str(results[0]["id"])
    except (ValueError, AttributeError, LookupError, TypeError):
        return None
