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


_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _vendor(summary: str, operation_id: str, *params: str) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["vendor-shaped proxy"],
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ],
        "responses": {
            "200": {"description": "The vendor's own answer shape."},
            "204": {"description": "Cancelled."},
            "4XX": {"description": "The vendor's error object `{status, message}`."},
        },
    }


def _vendor_paths() -> dict[str, Any]:
    """Scroll's and Content Exporter's own routes, answered in their shapes."""
    scroll = "/proxy/scroll/{product}/api/public/1"
    cex = "/proxy/content-exporter/api/remoteExport"
    return {
        f"{scroll}/exports": {
            "post": _vendor("Scroll: start an export.", "scrollStart", "product")
        },
        f"{scroll}/exports/{{job_id}}/status": {
            "get": _vendor("Scroll: job status.", "scrollStatus", "product", "job_id")
        },
        f"{scroll}/exports/{{job_id}}": {
            "delete": _vendor("Scroll: cancel.", "scrollCancel", "product", "job_id")
        },
        f"{scroll}/export-sync": {
            "get": _vendor("Scroll: export and return the file.", "scrollExportSync", "product")
        },
        f"{cex}/{{page_id}}/init": {
            "post": _vendor("Content Exporter: start an export.", "cexInit", "page_id")
        },
        f"{cex}/poll": {"get": _vendor("Content Exporter: progress.", "cexPoll")},
        f"{cex}/download": {"get": _vendor("Content Exporter: the file.", "cexDownload")},
    }


def build_spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    request_schema = ExportRequest.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    defs = request_schema.pop("$defs", {})
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
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
                "bearer": {"type": "http", "scheme": "bearer", "description": "A tenant API key."},
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
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
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
                    "parameters": [_JOB_ID],
                    "responses": {"200": _job("The job."), **_errors("401", "404")},
                },
                "delete": {
                    "operationId": "cancelExport",
                    "summary": "Cancel a job.",
                    "security": bearer,
                    "parameters": [_JOB_ID],
                    "responses": {"200": _job("Cancelled."), **_errors("401", "404", "409")},
                },
            },
            "/v1/downloads/{token}": {
                "get": {
                    "operationId": "download",
                    "summary": "Stream an exported file (the signed link is the credential).",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "The file."},
                        "206": {"description": "The requested range."},
                        **_errors("403", "404", "410", "416"),
                    },
                },
            },
            "/v1/downloads/{token}/{filename}": {
                "get": {
                    "operationId": "downloadNamed",
                    "summary": "The same, with the file name as the last path segment.",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "filename",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {"description": "The file."},
                        "206": {"description": "The requested range."},
                        **_errors("403", "404", "410", "416"),
                    },
                },
            },
            **_vendor_paths(),
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
