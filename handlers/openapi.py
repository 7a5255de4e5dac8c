"""``/openapi.json``: the spec of the public API. A test keeps it true to the routes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from bridge import __version__
from bridge.models import ExportRequest

bp = Blueprint("openapi", __name__)

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_ERRORS = {
    code: {"description": text, "content": {"application/problem+json": {"schema": _PROBLEM}}}
    for code, text in {
        "400": "Invalid request (the fields are named in `errors`).",
        "401": "Missing or invalid credentials.",
        "403": "Not allowed, or a tampered download link.",
        "404": "No such job for this caller.",
        "409": "Conflicts with the job's state.",
        "410": "The download link has expired.",
        "413": "The request body is too large.",
        "415": "Unsupported media type.",
        "416": "Range not satisfiable.",
        "422": "No configured backend can serve the request, or a reused Idempotency-Key.",
        "503": "Not ready.",
    }.items()
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _ERRORS[code] for code in codes}


def _job(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Location": {"schema": {"type": "string"}},
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "Seconds until polling is worthwhile (running jobs).",
            },
        },
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
    }


def _download(operation_id: str, summary: str, *path_params: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [_param(name) for name in path_params],
        "responses": {
            "200": {"description": "The file."},
            "206": {"description": "The requested range."},
            **_errors("403", "404", "410", "416"),
        },
    }


_VENDOR_ERROR = {
    "description": "The vendor's error object.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
            }
        }
    },
}
_PRODUCT = {
    "name": "product",
    "in": "path",
    "required": True,
    "schema": {"enum": ["scroll-office", "scroll-word", "scroll-pdf", "scroll-html"]},
}
_SCROLL_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
_CEX_SECURITY: list[dict[str, list[str]]] = [{"cexApiKey": []}]


def _param(name: str, where: str = "path", required: bool = True, **schema: Any) -> dict[str, Any]:
    if "enum" not in schema:
        schema = {"type": "string", **schema}
    return {"name": name, "in": where, "required": required, "schema": schema}


def _vendor(
    summary: str,
    operation_id: str,
    security: list[dict[str, list[str]]],
    parameters: list[dict[str, Any]],
    ok: dict[str, Any],
    errors: tuple[str, ...],
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["vendor-shaped proxy"],
        "security": security,
        "parameters": parameters,
        "responses": {**ok, **{code: _VENDOR_ERROR for code in errors}},
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_SCROLL_STATUS = {
    "type": "object",
    "properties": {
        "status": {"enum": ["incomplete", "complete", "error", "cancelled"]},
        "step": {"type": "integer"},
        "totalSteps": {"type": "integer"},
        "stepProgress": {"type": "integer"},
        "downloadUrl": {"type": ["string", "null"]},
    },
}
_SCROLL_START = {
    "type": "object",
    "required": ["pageId"],  # templateId may be left to the tenant's default template
    "properties": {
        "pageId": {
            "anyOf": [
                {"type": "string", "pattern": "^[0-9]{1,20}$"},
                {"type": "integer", "minimum": 0, "maximum": 99999999999999999999},
            ]
        },
        "templateId": {
            "anyOf": [{"type": "string", "minLength": 1, "maxLength": 512}, {"type": "null"}]
        },
        "scope": {"enum": ["current", "descendants", None]},
        # Like Scroll, the bridge ignores placeholder or unusable values of these.
        **{
            name: {"description": "Passed on when a usable string; otherwise ignored."}
            for name in ("locale", "versionId", "variantId", "languageKey", "timeZone")
        },
    },
}


def _vendor_paths() -> dict[str, Any]:
    """Scroll's and Content Exporter's own routes, answered in their shapes."""
    scroll = "/proxy/scroll/{product}/api/public/1"
    cex = "/proxy/content-exporter/api/remoteExport"
    job = _param("job_id")
    file = {"description": "The exported file."}
    export_hash = _param("hash", "query")
    return {
        f"{scroll}/exports": {
            "post": _vendor(
                "Scroll: start an export.",
                "scrollStart",
                _SCROLL_SECURITY,
                [_PRODUCT],
                {
                    "200": _json(
                        "Started.", {"type": "object", "properties": {"jobId": {"type": "string"}}}
                    )
                },
                ("400", "401", "404", "422"),
                body=_SCROLL_START,
            )
        },
        f"{scroll}/exports/{{job_id}}/status": {
            "get": _vendor(
                "Scroll: job status.",
                "scrollStatus",
                _SCROLL_SECURITY,
                [_PRODUCT, job],
                {"200": _json("The status.", _SCROLL_STATUS)},
                ("401", "404"),
            )
        },
        f"{scroll}/exports/{{job_id}}": {
            "delete": _vendor(
                "Scroll: cancel.",
                "scrollCancel",
                _SCROLL_SECURITY,
                [_PRODUCT, job],
                {"204": {"description": "Cancelled."}},
                ("401", "404"),
            )
        },
        f"{scroll}/export-sync": {
            "get": _vendor(
                "Scroll: export and return the file.",
                "scrollExportSync",
                _SCROLL_SECURITY,
                [
                    _PRODUCT,
                    _param("pageId", "query", pattern="^[0-9]{1,20}$"),
                    _param("templateId", "query", minLength=1, maxLength=512),
                    _param("scope", "query", False, enum=["current", "descendants"]),
                ],
                {"200": file},
                ("400", "401", "404", "422", "500", "504"),
            )
        },
        f"{cex}/{{page_id}}/init": {
            "post": _vendor(
                "Content Exporter: start an export.",
                "cexInit",
                _CEX_SECURITY,
                [_param("page_id", pattern="^[0-9]{1,20}$")],
                {
                    "200": _json(
                        "Started.", {"type": "object", "properties": {"hash": {"type": "string"}}}
                    )
                },
                ("400", "401", "404", "422"),
                body={"type": "object"},
            )
        },
        f"{cex}/poll": {
            "get": _vendor(
                "Content Exporter: progress.",
                "cexPoll",
                _CEX_SECURITY,
                [export_hash],
                {
                    "200": _json(
                        "Progress.",
                        {
                            "type": "object",
                            "properties": {
                                "done": {"type": "boolean"},
                                "progressData": {
                                    "type": "object",
                                    "properties": {
                                        "phase": {"type": "string"},
                                        "progressValue": {"type": "integer"},
                                    },
                                },
                            },
                        },
                    )
                },
                ("401", "404", "500"),
            )
        },
        f"{cex}/download": {
            "get": _vendor(
                "Content Exporter: the file.",
                "cexDownload",
                _CEX_SECURITY,
                [export_hash],
                {"200": file},
                ("401", "404", "409"),
            )
        },
    }


_EVENT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"type": "object"}}},
}


def _webhook_paths() -> dict[str, Any]:
    """The webhook targets (rules in ``bridge.rules``; unknown payload keys are ignored)."""
    done = {"204": {"description": "Taken: an export per matching rule was created."}}
    return {
        "/webhooks/connect/{event}": {
            "post": {
                "operationId": "connectWebhook",
                "summary": "A Connect webhook (page_created, page_updated, ...) from an "
                "installed site; the route names the event.",
                "tags": ["webhooks"],
                "security": [{"connectJwt": []}],
                "parameters": [_param("event", pattern="^[a-z][a-z0-9_]{0,63}$")],
                "requestBody": _EVENT_BODY,
                "responses": {**done, **_errors("400", "401", "404", "413")},
            }
        },
        "/webhooks/dc/{tenant_id}": {
            "post": {
                "operationId": "dataCenterWebhook",
                "summary": "A Confluence Data Center webhook; the event is named in the body.",
                "tags": ["webhooks"],
                "security": [{"hubSignature": []}],
                "parameters": [_param("tenant_id")],
                "requestBody": _EVENT_BODY,
                "responses": {**done, **_errors("400", "401", "413")},
            }
        },
        "/webhooks/forge": {
            "post": {
                "operationId": "forgeEvent",
                "summary": "A Forge product event (avi:confluence:updated:page, ...) through "
                "Forge Remote.",
                "tags": ["webhooks"],
                "security": [{"bearer": []}],
                "requestBody": _EVENT_BODY,
                "responses": {
                    "202": _json(
                        "Taken: the exports the matching rules made.",
                        {
                            "type": "object",
                            "properties": {
                                "matched": {"type": "integer"},
                                "created": {"type": "integer"},
                                "jobs": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    ),
                    **_errors("400", "401", "403", "413"),
                },
            }
        },
    }


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    request_schema = ExportRequest.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    defs = request_schema.pop("$defs", {})
    bearer: list[dict[str, list[str]]] = [{"bearer": []}, {"connectJwt": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "confluence-export-bridge",
            "version": __version__,
            "description": "One normalized export API in front of the Confluence exporters, "
            "with signed, expiring download links.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant API key, or a Forge Invocation Token (Forge Remote; "
                    "the user's product token may come in `x-forge-oauth-user`).",
                },
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "Scroll-style (proxy routes): the API key as the password.",
                },
                "cexApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "CEX-API-KEY",
                    "description": "Content Exporter-style (proxy routes): the API key.",
                },
                "connectJwt": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`JWT <token>` (or the `jwt` query parameter): a Connect JWT "
                    "signed with the installation's shared secret, `qsh` bound to the request.",
                },
                "hubSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Hub-Signature",
                    "description": "`sha256=<hex>`: HMAC-SHA256 of the raw body under the "
                    "tenant's `dc_webhook_secret` (Confluence Data Center webhooks).",
                },
            },
            "schemas": {
                **defs,
                "ExportRequest": request_schema,
                "Job": {
                    "type": "object",
                    "required": [
                        "id",
                        "backend",
                        "state",
                        "progress",
                        "phase",
                        "createdAt",
                        "updatedAt",
                    ],
                    "properties": {
                        "id": {"type": "string"},
                        "backend": {"type": "string"},
                        "state": {"enum": ["queued", "running", "complete", "failed", "cancelled"]},
                        "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                        "phase": {"type": "string"},
                        "format": {"type": "string"},
                        "source": {"type": "object"},
                        "asUser": {"type": ["string", "null"]},
                        "createdAt": {"type": "string", "format": "date-time"},
                        "updatedAt": {"type": "string", "format": "date-time"},
                        "error": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "code": {"type": "string"},
                                        "message": {"type": "string"},
                                        "upstreamStatus": {"type": ["integer", "null"]},
                                    },
                                },
                            ]
                        },
                        "download": {
                            "oneOf": [
                                {"type": "null"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "url": {"type": "string"},
                                        "expiresAt": {"type": "string", "format": "date-time"},
                                        "filename": {"type": "string"},
                                        "contentType": {"type": "string"},
                                        "size": {"type": "integer"},
                                        "sha256": {"type": "string"},
                                    },
                                },
                            ]
                        },
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "field": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "paths": {
            "/v1/exports": {
                "post": {
                    "operationId": "createExport",
                    "summary": "Start an export.",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "schema": {"type": "string"},
                            "description": "`wait=N` (RFC 7240): wait up to N s for the result.",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ExportRequest"}
                            }
                        },
                    },
                    "responses": {
                        "202": _job("Accepted; poll the Location."),
                        "201": _job("Finished within the `Prefer: wait` time."),
                        "200": _job("The job an earlier request with this Idempotency-Key made."),
                        **_errors("400", "401", "403", "413", "422"),
                    },
                },
            },
            "/v1/exports/{job_id}": {
                "get": {
                    "operationId": "getExport",
                    "summary": "Read a job; a fresh download link when complete.",
                    "security": bearer,
                    "parameters": [_param("job_id")],
                    "responses": {"200": _job("The job."), **_errors("401", "404")},
                },
                "delete": {
                    "operationId": "cancelExport",
                    "summary": "Cancel a job.",
                    "security": bearer,
                    "parameters": [_param("job_id")],
                    "responses": {"200": _job("Cancelled."), **_errors("401", "404", "409")},
                },
            },
            "/v1/downloads/{token}": {
                "get": _download(
                    "download",
                    "Stream an exported file (the signed link is the credential).",
                    "token",
                ),
            },
            "/v1/downloads/{token}/{filename}": {
                "get": _download(
                    "downloadNamed",
                    "The same, with the file name as the last path segment.",
                    "token",
                    "filename",
                ),
            },
            **_vendor_paths(),
            **_webhook_paths(),
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness.",
                    "responses": {"200": {"description": "Up."}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness.",
                    "responses": {"200": {"description": "Ready."}, **_errors("503")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics.",
                    "responses": {"200": {"description": "Exposition text."}},
                }
            },
            "/atlassian-connect.json": {
                "get": {
                    "operationId": "connectDescriptor",
                    "summary": "The Atlassian Connect app descriptor.",
                    "responses": {"200": {"description": "The descriptor."}},
                }
            },
            "/installed": {
                "post": {
                    "operationId": "connectInstalled",
                    "summary": "Connect lifecycle: a site installed the app (RS256-signed).",
                    "responses": {"204": {"description": "Stored."}, **_errors("400", "401")},
                }
            },
            "/uninstalled": {
                "post": {
                    "operationId": "connectUninstalled",
                    "summary": "Connect lifecycle: a site uninstalled the app (RS256-signed).",
                    "responses": {"204": {"description": "Forgotten."}, **_errors("400", "401")},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {"200": {"description": "The spec."}},
                }
            },
        },
    }


@bp.get("/openapi.json")
def openapi() -> Response:
    """Serve the spec."""
    return jsonify(build_spec())
