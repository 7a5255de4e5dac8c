"""Vendor-shaped routes: existing scripts for Scroll's REST API and the Content Exporter
Remote API work against the bridge by changing only their base URL and credential.

Each vendor call becomes a normal bridge job (so the file outlives the upstream's short
retention and the usual retries apply), and every download URL is rewritten to a signed
bridge link that ends in the plain file name. Answers keep the vendors' shapes and
status codes, errors included.

- Scroll: ``/proxy/scroll/{product}/api/public/1/…`` (``scroll-office``/``scroll-word``,
  ``scroll-pdf``, ``scroll-html``). Credentials as Scroll clients send them: a bearer API
  key, or HTTP basic with the API key as the password.
- Content Exporter: ``/proxy/content-exporter/api/remoteExport/…`` with the API key in
  ``CEX-API-KEY``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Blueprint, Response, jsonify, request

from bridge.errors import (
    AuthenticationError,
    BridgeError,
    FieldError,
    NotFoundError,
    ValidationError,
)
from bridge.models import Caller, Job, JobState
from bridge.views import attachment_disposition
from handlers.auth import bridge

scroll = Blueprint("proxy_scroll", __name__, url_prefix="/proxy/scroll/<product>/api/public/1")
content_exporter = Blueprint(
    "proxy_cex", __name__, url_prefix="/proxy/content-exporter/api/remoteExport"
)

SCROLL_PRODUCTS = {
    "scroll-office": "docx",
    "scroll-word": "docx",
    "scroll-pdf": "pdf",
    "scroll-html": "html",
}
SCROLL_BACKENDS = ("scroll-rest", "scroll-macro")
SCROLL_EXTRAS = ("locale", "versionId", "variantId", "languageKey", "timeZone")


def vendor_error(status: int, message: str) -> Response:
    """The vendors' error object: ``{"status": …, "message": …}``."""
    response = jsonify({"status": status, "message": message})
    response.status_code = status
    return response


def _vendor_error_handler(exc: BridgeError) -> Response:
    message = exc.message
    errors = getattr(exc, "errors", None)
    if errors:
        message += " " + "; ".join(f"{e.field}: {e.message}" for e in errors)
    response = vendor_error(exc.status_code, message)
    if isinstance(exc, AuthenticationError):
        response.headers["WWW-Authenticate"] = 'Basic realm="confluence-export-bridge"'
    return response


scroll.register_error_handler(BridgeError, _vendor_error_handler)
content_exporter.register_error_handler(BridgeError, _vendor_error_handler)


def _api_key_caller(key: str | None) -> Caller:
    if not key:
        raise AuthenticationError("Credentials are required.", reason="missing_credentials")
    tenant = bridge().tenants.by_api_key(key)
    if tenant is None:
        raise AuthenticationError("The credentials are not valid.", reason="unknown_api_key")
    return Caller(tenant_id=tenant.id, admin=True, scheme="api-key")


def _scroll_caller() -> Caller:
    """A bearer API key, or basic auth with the API key as the password (DC scripts)."""
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return _api_key_caller(credential.strip())
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credential.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthenticationError("Malformed basic credentials.", reason="malformed") from None
        return _api_key_caller(decoded.partition(":")[2])
    if request.args.get("os_password"):
        return _api_key_caller(request.args["os_password"])
    return _api_key_caller(None)


def _owned_job(caller: Caller, job_id: str) -> Job:
    return bridge().service.get(caller, job_id)


# --- Scroll -----------------------------------------------------------------------------


def _scroll_request(product: str, params: dict[str, Any]) -> dict[str, Any]:
    fmt = SCROLL_PRODUCTS.get(product)
    if fmt is None:
        raise NotFoundError(f"Unknown Scroll product {product!r}.")
    tenant = bridge().tenants.get(_scroll_caller().tenant_id)
    preferred = tenant.default_backend.get(fmt)
    candidates = ((preferred,) if preferred in SCROLL_BACKENDS else ()) + SCROLL_BACKENDS
    backend = next((b for b in candidates if b in tenant.backends), "scroll-rest")
    scope = params.get("scope")
    body: dict[str, Any] = {
        "backend": backend,
        "format": fmt,
        "source": {"pageId": params.get("pageId"), "scope": "current" if scope is None else scope},
    }
    template = params.get("templateId")
    if template is not None and not (isinstance(template, str) and template):
        raise ValidationError(
            "templateId must be a non-empty string.",
            [FieldError("templateId", "A Scroll template id.")],
        )
    if template:
        body["template"] = template
    if backend == "scroll-rest":
        # Scroll ignores placeholder values of these; keep what fits, drop the rest.
        body["options"] = {
            k: str(params[k]) for k in SCROLL_EXTRAS if isinstance(params.get(k), str) and params[k]
        }
    return body


def scroll_status(job: Job) -> dict[str, Any]:
    """A bridge job in Scroll's status shape, with a signed bridge ``downloadUrl``."""
    status = {
        JobState.QUEUED: "incomplete",
        JobState.RUNNING: "incomplete",
        JobState.COMPLETE: "complete",
        JobState.FAILED: "error",
        JobState.CANCELLED: "cancelled",
    }[job.state]
    link = bridge().service.link(job)
    return {
        "status": status,
        "step": 1,
        "totalSteps": 1,
        "stepProgress": job.progress,
        "downloadUrl": link.url if link else None,
    }


@scroll.post("/exports")
def scroll_start(product: str) -> Response:
    """Start an export; 200 with ``{"jobId": …}`` as Scroll answers."""
    params = request.get_json(silent=True)
    if not isinstance(params, dict):
        return vendor_error(400, "The request body must be a JSON object.")
    caller = _scroll_caller()
    job, _ = bridge().service.create(caller, _scroll_request(product, params))
    return jsonify({"jobId": job.id})


@scroll.get("/exports/<job_id>/status")
def scroll_job_status(product: str, job_id: str) -> Response:
    """Scroll's status object for the job."""
    return jsonify(scroll_status(_owned_job(_scroll_caller(), job_id)))


@scroll.delete("/exports/<job_id>")
def scroll_cancel(product: str, job_id: str) -> Response:
    """Cancel the job; 204 like Scroll (also for a job that already ended)."""
    caller = _scroll_caller()
    job = _owned_job(caller, job_id)
    if not job.state.final:
        bridge().service.cancel(caller, job_id)
    return Response(status=204)


@scroll.get("/export-sync")
def scroll_export_sync(product: str) -> Response:
    """Export and answer with the file itself, as Scroll's ``export-sync`` does."""
    caller = _scroll_caller()
    service = bridge().service
    job, _ = service.create(caller, _scroll_request(product, request.args.to_dict()))
    job = service.wait(caller, job.id, bridge().settings.max_wait)
    if job.state is JobState.COMPLETE:
        return _file_response(job)
    if job.state.final:
        return vendor_error(_failed_status(job), _failure_message(job))
    response = vendor_error(504, f"The export is still running; poll job {job.id}.")
    response.headers["Retry-After"] = "5"
    return response


def _failed_status(job: Job) -> int:
    """What the vendor would have answered: its own 4xx, or a gateway error for a
    failure between the bridge and the upstream (500 when the export itself failed)."""
    error = job.error
    if error is None or job.state is JobState.CANCELLED:
        return 409
    if error.upstream_status is not None and 400 <= error.upstream_status < 500:
        return error.upstream_status
    return {"upstream_unavailable": 502, "upstream_timeout": 504, "upstream_bad_response": 502}.get(
        error.code, 500
    )


def _failure_message(job: Job) -> str:
    return job.error.message if job.error else f"The export was {job.state.value}."


def _file_response(job: Job) -> Response:
    artifact = job.artifact
    assert artifact is not None
    artifacts = bridge().service.artifacts
    return Response(
        artifacts.open(artifact.key),
        headers={
            "Content-Type": artifact.content_type,
            "Content-Length": str(artifact.size),
            "Content-Disposition": attachment_disposition(artifact.filename),
        },
        direct_passthrough=True,
    )


# --- Content Exporter -------------------------------------------------------------------

CEX_FORMATS = (("PDF", "pdf"), ("WORD", "docx"), ("HTML", "html"))


def _cex_caller() -> Caller:
    return _api_key_caller(request.headers.get("CEX-API-KEY"))


def _cex_request(page_id: str, body: dict[str, Any]) -> dict[str, Any]:
    from bridge.backends.content_exporter import ContentExporterOptions

    known = {f.alias or name for name, f in ContentExporterOptions.model_fields.items()}
    output = str(body.get("outputFormat") or "PDF_MERGE")
    fmt = next((f for prefix, f in CEX_FORMATS if output.upper().startswith(prefix)), "pdf")
    export_type = str(body.get("exportType") or "CURRENT_PAGE")
    return {
        "backend": "content-exporter",
        "format": fmt,
        "source": {
            "pageId": page_id,
            "scope": "current" if export_type == "CURRENT_PAGE" else "descendants",
        },
        # Like the Remote API, keys it does not know are ignored rather than refused.
        "options": {k: v for k, v in body.items() if k in known},
    }


@content_exporter.post("/<page_id>/init")
def cex_init(page_id: str) -> Response:
    """Start an export; answers ``{"hash": …}``."""
    caller = _cex_caller()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return vendor_error(400, "The request body must be a JSON object.")
    root = body.get("rootContentId")
    if root is not None and str(root) != page_id:
        return vendor_error(400, "rootContentId must be the page id of the URL.")
    job, _ = bridge().service.create(caller, _cex_request(page_id, body))
    return jsonify({"hash": job.id})


def _cex_job() -> tuple[Caller, Job]:
    caller = _cex_caller()
    export_hash = request.args.get("hash", "")
    if not export_hash:
        raise NotFoundError("Unknown hash.")
    return caller, _owned_job(caller, export_hash)


@content_exporter.get("/poll")
def cex_poll() -> Response:
    """``{"done": …, "progressData": {"phase": …, "progressValue": …}}``."""
    _caller, job = _cex_job()
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        return vendor_error(_failed_status(job), _failure_message(job))
    done = job.state is JobState.COMPLETE
    return jsonify(
        {
            "done": done,
            "progressData": {
                "phase": job.phase.upper().replace(" ", "_"),
                "progressValue": 100 if done else min(job.progress, 99),
            },
        }
    )


@content_exporter.get("/download")
def cex_download() -> Response:
    """The exported file (409 until it is ready)."""
    _caller, job = _cex_job()
    if job.state is not JobState.COMPLETE:
        return vendor_error(409, "The export is not finished.")
    return _file_response(job)
