"""Caller authentication: one place decides who is calling.

Tenant API keys come as ``Authorization: Bearer <key>``. Every failure is a 401
problem+json that says which check failed, never which secret.
"""

from __future__ import annotations

from flask import current_app, g, request

from bridge.bootstrap import Bridge
from bridge.errors import AuthenticationError
from bridge.models import Caller


def bridge() -> Bridge:
    """The :class:`~bridge.bootstrap.Bridge` of the current app."""
    value: Bridge = current_app.extensions["bridge"]
    return value


def current_caller() -> Caller:
    """Authenticate the request (once) and return the caller.

    :raises AuthenticationError: no or bad credential.
    """
    caller: Caller | None = g.get("caller")
    if caller is None:
        caller = authenticate()
        g.caller = caller
    return caller


def authenticate() -> Caller:
    """Read the request's credential and resolve it to a :class:`Caller`."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if not header:
        raise AuthenticationError(
            "This endpoint needs an Authorization header.", reason="missing_credentials"
        )
    if scheme.lower() == "bearer" and credential:
        tenant = bridge().tenants.by_api_key(credential)
        if tenant is None:
            raise AuthenticationError("The API key is not valid.", reason="unknown_api_key")
        return Caller(tenant_id=tenant.id, user=None, admin=True, scheme="api-key")
    raise AuthenticationError(
        f"Unsupported Authorization scheme {scheme[:20]!r}.", reason="unsupported_scheme"
    )


def optional_caller() -> Caller | None:
    """The caller if the request carries a credential that authenticates, else ``None``."""
    if not request.headers.get("Authorization"):
        return None
    try:
        return current_caller()
    except AuthenticationError:
        return None
