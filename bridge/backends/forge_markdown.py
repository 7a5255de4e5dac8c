"""``forge-markdown``: the Markdown exporter's Forge app REST API (singleExport, bulkExport).

Contract: seeds/forge-markdown-export-api.txt and upstreams.md §5.1. The app answers
synchronously, within Forge's limits: 100 pages, 25 s (a ``424`` beyond) and ~5 MB a call.

Where the work happens: :meth:`ForgeMarkdownBackend.start` only records what to export in
the handle and says ``Ready``; everything else runs in :meth:`ForgeMarkdownBackend.fetch`,
in the background worker that copies the file into the artifact store. ``start`` also runs
when a caller reads the job, so it must stay quick. A single page or a space is one call;
a page with its descendants is:

1. walked through the Confluence v2 API (:class:`~bridge.pagetree.TreeWalker`);
2. cut into batches (:func:`~bridge.pagetree.plan_batches`): subtrees that fit in
   ``batch_size`` pages are one ``bulkExport`` each, a page whose subtree is larger is
   exported alone (``bulkExport: false``);
3. exported ``parallelism`` batches at a time, largest first. A failing batch is tried
   ``batch_attempts`` times with exponential backoff (``retry_backoff``). A batch that times
   out (``424``) or comes back short is planned again with half its size as the limit.
   Whatever still fails fails the job, naming the missing pages; a 400/401/403/404 stops
   the export at once;
4. merged (:mod:`bridge.zipmerge`) into the layout one unlimited export would have, checked
   to hold a page file for every walked page, and streamed from a temporary file.

Base64 is decoded a slice at a time straight into temporary files; nothing decoded is held
in memory. While batches run, the download yields empty chunks every few seconds so the
service keeps renewing the job's lease. The handle holds only the request (kind, page or
space, attachments), so after a restart any process repeats the fetch from the beginning:
the export calls only read, so repeating them is safe.

A space is one ``bulkExport`` (no v2 call lists a space's root pages by key here). If it
comes back with ``batch_size`` pages it may have been cut short, so the job fails and asks
for an export of the space's root pages instead.
"""

from __future__ import annotations

import codecs
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests
from pydantic import Field, SecretStr, field_validator, model_validator

from bridge.backends.base import (
    Backend,
    BackendConfig,
    BackendOptions,
    Download,
    Handle,
    JobContext,
    Ready,
    Step,
)
from bridge.errors import (
    ConfigurationError,
    UpstreamError,
    UpstreamJobFailedError,
    UpstreamResponseError,
)
from bridge.models import ExportRequest
from bridge.pagetree import Batch, Tree, TreeEndpoint, TreePage, TreeWalker, plan_batches
from bridge.zipmerge import (
    BadArchiveError,
    BatchArchive,
    Part,
    expected_layout,
    inspect_batch,
    merge,
    slugify,
    write_base64,
)

log = logging.getLogger(__name__)

APP_ID = "0def1d4f-1593-4dd0-99a3-a098b3959067"
ENV_IDS: dict[str, str] = {
    "production": "796457c9-9c03-4382-b44f-d19571068ece",
    "staging": "73c9d7be-47c5-479a-b08d-14fb79453df8",
    "development": "08a10a13-932b-47bb-b760-0cc1e93d4a50",
}
MAX_PAGES = 100
MARKDOWN = "text/markdown; charset=utf-8"
ZIP = "application/zip"
HEARTBEAT = 5.0
"""Seconds between empty chunks while batches run (the service renews the lease on chunks)."""
READ_CHUNK = 256 * 1024

EXPLANATIONS: dict[int, str] = {
    400: "The Markdown exporter refused the request for {subject} as malformed",
    401: "The Markdown exporter refused the OAuth token: missing, expired, or without the "
    "app's scopes (read:forge-app:confluence and its :custom scopes)",
    403: "The Markdown exporter's REST API is closed to this token: App REST APIs are not "
    "enabled for the app on this site, or the OAuth integration is connected to another "
    "environment than {environment}",
    404: "The Markdown exporter found no pages for {subject} (or the cloud id, app or "
    "environment in its URL is wrong)",
    424: "The Markdown exporter ran out of time (Forge's 25-second limit) exporting {subject}",
    500: "The Markdown exporter failed exporting {subject}; its Forge logs say why "
    "(forge logs -e {environment})",
}
_T = TypeVar("_T")


class ForgeMarkdownConfig(BackendConfig):
    """A tenant's Markdown exporter (Forge app REST API) and the v2 API to walk trees."""

    cloud_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    """The site's cloud id (``https://<site>/_edge/tenant_info``): the api.atlassian.com route."""
    site_url: str | None = None
    """The site (``https://<site>.atlassian.net``): the site gateway route."""
    api_url: str = "https://api.atlassian.com"
    route: Literal["api", "site"] | None = None
    """Which URL form to call; by default ``api`` when a cloud id is set, else ``site``."""
    app_id: str = APP_ID
    environment: Literal["production", "staging", "development"] = "production"
    env_id: str | None = None
    """An explicit environment id (overrides ``environment``)."""
    token: SecretStr | None = None
    """A 3LO OAuth access token; a job's own ``user_token`` secret takes precedence."""
    confluence_url: str | None = None
    """Where ``/wiki/api/v2`` hangs; by default ``{api_url}/ex/confluence/{cloud_id}``, else
    ``site_url``."""
    batch_size: int = Field(default=MAX_PAGES, ge=1, le=MAX_PAGES)
    parallelism: int = Field(default=4, ge=1, le=16)
    batch_attempts: int = Field(default=3, ge=1, le=10)
    retry_backoff: float = Field(default=1.0, ge=0, le=60)
    """Seconds before a batch's second try; doubled for each later one."""
    include_attachments: bool = False
    tree_endpoint: TreeEndpoint = "descendants"
    tree_page_limit: int = Field(default=250, ge=1, le=250)
    max_tree_pages: int = Field(default=100_000, ge=1)

    @field_validator("site_url", "api_url", "confluence_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("site_url")
    @classmethod
    def _site_root(cls, value: str | None) -> str | None:
        return value.removesuffix("/wiki") if value else value

    @model_validator(mode="after")
    def _reachable(self) -> ForgeMarkdownConfig:
        if self.resolved_route == "api" and not self.cloud_id:
            raise ValueError("cloud_id is required for the api.atlassian.com route")
        if self.resolved_route == "site" and not self.site_url:
            raise ValueError("set cloud_id (api.atlassian.com route) or site_url (site route)")
        return self

    @property
    def resolved_route(self) -> str:
        return self.route or ("api" if self.cloud_id else "site")

    @property
    def environment_id(self) -> str:
        return self.env_id or ENV_IDS[self.environment]

    def app_url(self, path: str) -> str:
        """The URL of the app's REST path (``bulkExport``, ``singleExport``)."""
        app = f"{self.app_id}_{self.environment_id}"
        if self.resolved_route == "api":
            return f"{self.api_url}/svc/confluence/{self.cloud_id}/apps/{app}/{path}"
        return f"{self.site_url}/gateway/api/svc/confluence/apps/{app}/{path}"

    @property
    def v2_base(self) -> str:
        """Where ``/wiki/api/v2`` hangs."""
        if self.confluence_url:
            return self.confluence_url
        if self.cloud_id:
            return f"{self.api_url}/ex/confluence/{self.cloud_id}"
        assert self.site_url is not None
        return self.site_url


class ForgeMarkdownOptions(BackendOptions):
    """Markdown export options."""

    include_attachments: bool | None = Field(default=None, alias="includeAttachments")


@dataclass(frozen=True)
class _Export:
    """What every upstream call of one export shares."""

    config: ForgeMarkdownConfig
    auth: dict[str, str]
    attachments: bool
    workdir: Path
    """A temporary folder for batch archives and the merged file."""


class ForgeMarkdownBackend(Backend):
    """Exports Markdown through the Forge app, batching trees past its 100-page cap."""

    name = "forge-markdown"
    formats = frozenset({"markdown"})
    Config = ForgeMarkdownConfig
    Options = ForgeMarkdownOptions

    # --- the three verbs -------------------------------------------------------------

    def start(self, ctx: JobContext, request: ExportRequest) -> Step:
        self._token(ctx)
        options = ForgeMarkdownOptions.model_validate(request.options)
        attachments = options.include_attachments
        if attachments is None:
            attachments = ctx.config.include_attachments
        if request.space_key is not None:
            kind = "space"
        else:
            kind = "tree" if request.scope == "descendants" else "page"
        handle: Handle = {
            "kind": kind,
            "pageId": request.page_id,
            "spaceKey": request.space_key,
            "attachments": attachments,
        }
        return Ready(handle, phase="exporting")

    def poll(self, ctx: JobContext, handle: Handle) -> Step:
        return Ready(handle, phase="exporting")

    @contextmanager
    def fetch(self, ctx: JobContext, handle: Handle) -> Iterator[Download]:
        workdir = Path(tempfile.mkdtemp(prefix="bridge-forge-"))
        download: Download | None = None
        try:
            download = self._download(ctx, handle, workdir)
            yield download
        finally:
            if download is not None and isinstance(download.chunks, Generator):
                download.chunks.close()
            shutil.rmtree(workdir, ignore_errors=True)

    # --- kinds of export -------------------------------------------------------------

    def _download(self, ctx: JobContext, handle: Handle, workdir: Path) -> Download:
        auth = {"Authorization": f"Bearer {self._token(ctx)}"}
        job = _Export(ctx.config, auth, bool(handle["attachments"]), workdir)
        if handle["kind"] == "space":
            return self._space(job, str(handle["spaceKey"]))
        if handle["kind"] == "page":
            return self._page(job, str(handle["pageId"]))
        return self._tree(job, str(handle["pageId"]))

    def _space(self, job: _Export, key: str) -> Download:
        """A whole space: one call, refused when it may have been cut at the page cap."""
        cap = job.config.batch_size
        payload = self.export_json(
            job, "bulkExport", {"spaceKey": key, "maxPages": cap}, f"space {key}"
        )
        count = payload.get("pageCount")
        if isinstance(count, int) and count >= cap:
            raise UpstreamJobFailedError(
                f"Space {key} has at least {cap} pages, the most one Markdown export holds, so "
                'its archive may be incomplete. Export its root pages with scope "descendants" '
                "instead: those are batched.",
                backend=self.name,
            )
        return _file_download(self._unpack(payload, job.workdir / "space.zip"), f"{key}.zip", ZIP)

    def _page(self, job: _Export, page_id: str) -> Download:
        """One page: Markdown text, or a ZIP when attachments are wanted."""
        subject = f"page {page_id}"
        if not job.attachments:
            response = self._call(job, "singleExport", {"pageId": page_id}, subject, stream=True)
            return Download(_utf8(self.client.iter_body(response)), f"page-{page_id}.md", MARKDOWN)
        payload = self.export_json(job, "singleExport", {"pageId": page_id}, subject)
        name = slugify(str(payload.get("title") or "")) or f"page-{page_id}"
        return _file_download(self._unpack(payload, job.workdir / "page.zip"), f"{name}.zip", ZIP)

    def _tree(self, job: _Export, page_id: str) -> Download:
        """A page and its descendants: the root is read now, the rest as the file streams."""
        walker = TreeWalker(
            self.client,
            job.config.v2_base,
            job.auth,
            endpoint=job.config.tree_endpoint,
            limit=job.config.tree_page_limit,
            max_pages=job.config.max_tree_pages,
        )
        root = _reading_tree(lambda: walker.root(page_id))
        name = slugify(root.title) or f"page-{page_id}"
        return Download(self._tree_chunks(job, walker, root), f"{name}.zip", ZIP)

    def _tree_chunks(
        self, job: _Export, walker: TreeWalker, root: TreePage
    ) -> Generator[bytes, None, None]:
        """Walk, export in batches, merge; yield the merged archive (empty chunks meanwhile)."""
        pool = ThreadPoolExecutor(job.config.parallelism, thread_name_prefix="forge-batch")
        try:
            tree = yield from _waiting(pool.submit(_reading_tree, lambda: walker.walk(root)))
            parts = yield from _BatchRun(self, job, tree).execute(pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        merged = job.workdir / "merged.zip"
        with merged.open("wb") as out:
            report = merge(parts, out)
        if report.pages < len(tree):
            raise UpstreamJobFailedError(
                f"The merged archive holds {report.pages} page files for the {len(tree)} pages "
                f"under page {root.id}; the export is incomplete.",
                backend=self.name,
            )
        if report.skipped:
            log.warning("merge left out entries", extra={"entries": list(report.skipped)[:20]})
        yield from _read(merged)

    # --- calls -----------------------------------------------------------------------

    def export_batch(self, job: _Export, batch: Batch) -> BatchArchive:
        """Export one batch with ``bulkExport`` into a ZIP file in the export's folder."""
        body = {
            "pageId": batch.root_id,
            "bulkExport": batch.with_descendants,
            "maxPages": job.config.batch_size if batch.with_descendants else 1,
        }
        subject = f"the batch of page {batch.root_id} ({len(batch.page_ids)} pages)"
        payload = self.export_json(job, "bulkExport", body, subject)
        path = self._unpack(payload, job.workdir / f"batch-{batch.root_id}-{uuid.uuid4().hex}.zip")
        try:
            return inspect_batch(path)
        except BadArchiveError as exc:
            raise UpstreamResponseError(
                f"The Markdown exporter's archive for {subject} is unusable: {exc}",
                backend=self.name,
            ) from None

    def export_json(
        self, job: _Export, path: str, body: dict[str, Any], subject: str
    ) -> dict[str, Any]:
        """Call an export that answers JSON with a ``zipBase64`` archive."""
        body = {**body, "includeAttachments": job.attachments}
        payload = self.client.json(self._call(job, path, body, subject))
        if (
            not isinstance(payload, dict)
            or payload.get("success") is False
            or not isinstance(payload.get("zipBase64"), str)
        ):
            raise UpstreamResponseError(
                f"The Markdown exporter's answer for {subject} has no zipBase64 archive",
                backend=self.name,
            )
        return payload

    def _call(
        self, job: _Export, path: str, body: dict[str, Any], subject: str, *, stream: bool = False
    ) -> requests.Response:
        try:
            return self.client.request(
                "POST", job.config.app_url(path), json=body, headers=job.auth, stream=stream
            )
        except UpstreamError as exc:
            raise _explained(exc, subject, job.config.environment) from exc

    def _unpack(self, payload: dict[str, Any], path: Path) -> Path:
        """Decode the payload's archive into *path* (and drop the text from the payload)."""
        try:
            with path.open("wb") as out:
                write_base64(payload.pop("zipBase64"), out)
        except ValueError:
            raise UpstreamResponseError(
                "The Markdown exporter sent an archive that is not valid base64", backend=self.name
            ) from None
        return path

    @staticmethod
    def _token(ctx: JobContext) -> str:
        token = ctx.secrets.get("user_token")
        if token:
            return token
        config: ForgeMarkdownConfig = ctx.config
        if config.token is None:
            raise ConfigurationError(
                "forge-markdown has no OAuth token: configure token, or pass the user's token."
            )
        return config.token.get_secret_value()


class _Split(Exception):
    """The batch is too much for one call (timed out, or came back short): split it."""


class _BatchFailed(Exception):
    """The batch kept failing."""

    def __init__(self, batch: Batch, error: UpstreamError) -> None:
        super().__init__(error.message)
        self.batch = batch
        self.error = error


class _BatchRun:
    """The batches of one tree export, run on a thread pool."""

    def __init__(self, backend: ForgeMarkdownBackend, job: _Export, tree: Tree) -> None:
        self.backend = backend
        self.job = job
        self.config = job.config
        self.tree = tree

    def execute(self, pool: ThreadPoolExecutor) -> Generator[bytes, None, list[Part]]:
        """Run every batch; return the archives as merge parts, in tree order."""
        pending: dict[Future[BatchArchive], Batch] = {}
        done: dict[str, tuple[Batch, BatchArchive]] = {}
        failed: list[_BatchFailed] = []
        not_tried: list[str] = []

        def submit(batches: list[Batch]) -> None:
            # Largest first, so one big batch does not start last and run alone.
            for batch in sorted(batches, key=lambda b: -len(b.page_ids)):
                pending[pool.submit(self.export, batch)] = batch

        submit(plan_batches(self.tree, self.config.batch_size))
        while pending:
            finished, _ = wait(pending, timeout=HEARTBEAT, return_when=FIRST_COMPLETED)
            yield b""
            for future in finished:
                batch = pending.pop(future)
                try:
                    done[batch.root_id] = (batch, future.result())
                except _Split:
                    if failed:
                        not_tried.extend(batch.page_ids)
                    else:
                        limit = max(1, len(batch.page_ids) // 2)
                        submit(plan_batches(self.tree, limit, batch.root_id))
                except _BatchFailed as exc:
                    failed.append(exc)
                    for other in [f for f in pending if f.cancel()]:
                        not_tried.extend(pending.pop(other).page_ids)
        if failed:
            raise self._failure(failed, not_tried)
        order = {page_id: n for n, page_id in enumerate(self.tree.preorder())}
        ordered = sorted(done.values(), key=lambda item: order[item[0].root_id])
        return [
            Part(archive, batch.root_id, self.tree.pages[batch.root_id].parent_id)
            for batch, archive in ordered
        ]

    def export(self, batch: Batch) -> BatchArchive:
        """Export *batch*, retrying with backoff.

        :raises _Split: the batch timed out or came back short, and has pages to split off.
        :raises _BatchFailed: every try failed.
        :raises UpstreamError: a failure no retry mends (400, 401, 403, 404).
        """
        splittable = len(batch.page_ids) > 1
        error: UpstreamError | None = None
        for attempt in range(self.config.batch_attempts):
            if attempt:
                time.sleep(self.config.retry_backoff * 2 ** (attempt - 1))
            try:
                archive = self.backend.export_batch(self.job, batch)
            except UpstreamError as exc:
                timed_out = exc.upstream_status == 424
                if timed_out and splittable:
                    raise _Split from exc
                if not (exc.retryable or timed_out or isinstance(exc, UpstreamResponseError)):
                    raise
                error = exc
                continue
            missing = self._missing(batch, archive)
            if not missing:
                return archive
            if splittable:
                raise _Split
            error = UpstreamJobFailedError(
                f"the archive held no file for {self.tree.describe(missing)}",
                backend=self.backend.name,
            )
            break
        assert error is not None
        raise _BatchFailed(batch, error)

    def _missing(self, batch: Batch, archive: BatchArchive) -> list[str]:
        """The batch's pages without a page file (by predicted name, only when files are short)."""
        if len(archive.page_files) >= len(batch.page_ids):
            return []
        pages = self.tree.pages
        layout = expected_layout(
            [(pid, pages[pid].parent_id, pages[pid].title) for pid in batch.page_ids]
        )
        named = [pid for pid in batch.page_ids if layout[pid] not in archive.page_files]
        return named or list(batch.page_ids)

    def _failure(self, failed: list[_BatchFailed], not_tried: list[str]) -> UpstreamJobFailedError:
        missing = [pid for failure in failed for pid in failure.batch.page_ids]
        first = failed[0]
        extra = f" {len(not_tried)} more pages were not tried after that." if not_tried else ""
        return UpstreamJobFailedError(
            f"{len(missing) + len(not_tried)} of {len(self.tree)} pages could not be exported, "
            "so no archive was made. The batch of page "
            f"{self.tree.describe([first.batch.root_id])} failed ({first.error.message}). "
            f"Missing pages: {self.tree.describe(missing)}.{extra}",
            backend=self.backend.name,
            upstream_status=first.error.upstream_status,
        )


def _explained(exc: UpstreamError, subject: str, environment: str) -> UpstreamError:
    """*exc* again, its message saying what the status means for the Markdown exporter."""
    template = EXPLANATIONS.get(exc.upstream_status or 0)
    if template is None:
        return exc
    message = f"{template.format(subject=subject, environment=environment)} ({exc.message})."
    return type(exc)(
        message,
        backend=exc.backend,
        upstream_status=exc.upstream_status,
        retry_after=exc.retry_after,
    )


def _reading_tree(read: Callable[[], _T]) -> _T:
    """Run *read* (a tree walk), prefixing its failures with what was being done."""
    try:
        return read()
    except UpstreamError as exc:
        hint = {
            401: " (the token needs Confluence read scopes, e.g. read:page:confluence)",
            404: " (no such page, or the token cannot see it)",
        }.get(exc.upstream_status or 0, "")
        raise type(exc)(
            f"Reading the page tree from Confluence failed{hint}: {exc.message}",
            backend=exc.backend,
            upstream_status=exc.upstream_status,
            retry_after=exc.retry_after,
        ) from exc


def _waiting(future: Future[_T]) -> Generator[bytes, None, _T]:
    """Wait for *future*, yielding an empty chunk every :data:`HEARTBEAT` seconds."""
    while True:
        try:
            return future.result(timeout=HEARTBEAT)
        except TimeoutError:
            yield b""


def _utf8(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Re-encode a body as UTF-8 whatever its header claims (bad bytes become U+FFFD)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for chunk in chunks:
        text = decoder.decode(chunk)
        if text:
            yield text.encode()
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail.encode()


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(READ_CHUNK):
            yield chunk


def _file_download(path: Path, filename: str, content_type: str) -> Download:
    return Download(_read(path), filename, content_type, size=path.stat().st_size)
