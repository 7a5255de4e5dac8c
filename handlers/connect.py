"""Atlassian Connect: the app descriptor and the signed install/uninstall hooks."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from bridge.connect import build_descriptor, verify_install_token
from bridge.errors import AuthenticationError, FieldError, ValidationError
from bridge.installations import TENANT_PREFIX
from handlers.auth import bridge, install_keys, installations, relative_url

bp = Blueprint("connect", __name__)


@bp.get("/atlassian-connect.json")
def descriptor() -> Response:
    """Serve the Connect app descriptor."""
    return jsonify(build_descriptor(bridge().settings))


@bp.post("/installed")
def installed() -> Response:
    """Store (or replace) a site's installation after verifying Atlassian's signature."""
    body = _verified_body()
    installation = installations().save(body)
    bridge().tenants.remove(installation.tenant_id)  # drop a cached earlier install
    return Response(status=204)


@bp.post("/uninstalled")
def uninstalled() -> Response:
    """Forget a site's installation after verifying Atlassian's signature."""
    body = _verified_body()
    client_key = str(body["clientKey"])
    installations().remove(client_key)
    bridge().tenants.remove(TENANT_PREFIX + client_key)
    return Response(status=204)


def _verified_body() -> dict[str, object]:
    """The lifecycle JSON body, once its ``Authorization: JWT`` token is verified.

    :raises AuthenticationError: no JWT, or a failed check (named in ``reason``).
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "jwt" or not token.strip():
        raise AuthenticationError(
            "Lifecycle hooks must carry an Authorization: JWT token.",
            reason="missing_credentials",
        )
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ValidationError(
            "The lifecycle body must be a JSON object.", [FieldError("body", "Invalid JSON.")]
        )
    running = bridge()
    verify_install_token(
        token.strip(),
        body,
        request.method,
        relative_url(),
        running.settings,
        install_keys().key,
        running.service.clock(),
    )
    return body
