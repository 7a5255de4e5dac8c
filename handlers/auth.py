"""Caller authentication: one place decides who is calling.

=====================================  ==========================  ==================  =====
credential                             tenant                      user                admin
=====================================  ==========================  ==================  =====
``Authorization: Bearer <api key>``    the key's tenant            none                yes
``Authorization: JWT <jwt>`` or        ``connect:<iss>`` (a        ``sub``             no
``?jwt=`` (Connect, HS256)             stored installation)
the same, without ``sub``              ``connect:<iss>``           none (app token)    yes
``Authorization: Bearer <FIT>``        the tenant listing          ``principal``       no
(Forge Remote, RS256)                  ``app.installationId``
the same, without ``principal``        that tenant                 none (app call)     yes
=====================================  ==========================  ==================  =====

Only admins may export as another user (``asUser``). A Connect token's ``qsh`` must be the
hash of this request (its path relative to the bridge's base URL, and its query); the fixed
``context-qsh`` of context tokens is accepted only by views marked
:func:`allow_context_qsh`, and never makes an admin. A Forge caller's
``x-forge-oauth-user`` token and ``app.apiBaseUrl`` travel with its jobs (sealed) so the
export runs with that user's own product token; ``x-forge-oauth-system`` is not used (the
bridge never acts as the app itself on a Forge site).

Every failure is a 401 problem+json whose ``reason`` says which check failed, never which
secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import current_app, g, request

from bridge.atlassian_jwt import (
    CONTEXT_QSH,
    JWTAuthError,
    decode_inbound,
    unverified_issuer,
)
from bridge.bootstrap import Bridge
from bridge.connect import InstallKeys, key_client
from bridge.errors import AuthenticationError
from bridge.forge import ForgeKeys, is_fit, verify_fit
from bridge.installations import Installations
from bridge.models import Caller

F = TypeVar("F", bound=Callable[..., Any])

FORGE_USER_TOKEN = "x-forge-oauth-user"  # noqa: S105 - a header name
MAX_PRODUCT_TOKEN = 8192
_CONTEXT_QSH_FLAG = "_allows_context_qsh"


def bridge() -> Bridge:
    """The :class:`~bridge.bootstrap.Bridge` of the current app."""
    value: Bridge = current_app.extensions["bridge"]
    return value


def allow_context_qsh(view: F) -> F:
    """Mark a view as accepting Connect context tokens (``qsh: "context-qsh"``)."""
    setattr(view, _CONTEXT_QSH_FLAG, True)
    return view


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
    scheme, credential = scheme.lower(), credential.strip()
    query_token = request.args.get("jwt")
    if query_token is not None:
        if header:
            raise AuthenticationError(
                "Send one credential: an Authorization header or a jwt parameter, not both.",
                reason="ambiguous_credentials",
            )
        return connect_caller(query_token)
    if not header:
        raise AuthenticationError(
            "This endpoint needs an Authorization header.", reason="missing_credentials"
        )
    if scheme == "jwt" and credential:
        return connect_caller(credential)
    if scheme == "bearer" and credential:
        if is_fit(credential):
            return forge_caller(credential)
        tenant = bridge().tenants.by_api_key(credential)
        if tenant is None:
            raise AuthenticationError("The API key is not valid.", reason="unknown_api_key")
        return Caller(tenant_id=tenant.id, user=None, admin=True, scheme="api-key")
    raise AuthenticationError(
        f"Unsupported Authorization scheme {scheme[:20]!r}.", reason="unsupported_scheme"
    )


def connect_caller(token: str) -> Caller:
    """A Connect JWT: the tenant from ``iss``, verified with its install's shared secret."""
    running = bridge()
    try:
        client_key = unverified_issuer(token)
    except JWTAuthError as exc:
        raise AuthenticationError("The Connect token is not valid.", reason=exc.reason) from None
    installation = installations().get(client_key)
    if installation is None:
        raise AuthenticationError(
            "The Connect token's issuer is not an installation of this app.",
            reason="unknown_installation",
        )
    try:
        claims = decode_inbound(
            token,
            shared_secret=installation.shared_secret,
            method=request.method,
            url=relative_url(),
            base_url="",
            now=int(running.service.clock()),
            leeway=running.settings.jwt_leeway,
            allow_context_qsh=_view_allows_context_qsh(),
        )
    except JWTAuthError as exc:
        raise AuthenticationError("The Connect token is not valid.", reason=exc.reason) from None
    user = claims.get("sub")
    if user is not None and (not isinstance(user, str) or not 0 < len(user) <= 128):
        raise AuthenticationError("The Connect token is not valid.", reason="invalid_claim:sub")
    app_token = user is None and claims.get("qsh") != CONTEXT_QSH
    return Caller(
        tenant_id=installation.tenant_id, user=user, admin=app_token, scheme="connect-jwt"
    )


def forge_caller(token: str) -> Caller:
    """A Forge Invocation Token: the tenant that lists its installation, its principal."""
    running = bridge()
    invocation = verify_fit(
        token,
        keys=_forge_keys(),
        app_ids=running.settings.forge_app_ids,
        now=running.service.clock(),
        leeway=running.settings.jwt_leeway,
    )
    tenant = running.tenants.by_forge_installation(invocation.installation_id)
    if tenant is None:
        raise AuthenticationError(
            "This Forge installation is not connected to a tenant of the bridge.",
            reason="unknown_installation",
        )
    product_token = request.headers.get(FORGE_USER_TOKEN, "").strip() or None
    if product_token is not None and len(product_token) > MAX_PRODUCT_TOKEN:
        raise AuthenticationError(
            f"The {FORGE_USER_TOKEN} header is too long.", reason="invalid_product_token"
        )
    return Caller(
        tenant_id=tenant.id,
        user=invocation.principal,
        admin=invocation.principal is None,
        scheme="forge",
        product_token=product_token if invocation.principal else None,
        product_base_url=invocation.api_base_url,
    )


def relative_url() -> str:
    """This request's path and query relative to the bridge's base URL (what ``qsh`` hashes).

    Flask's ``request.path`` is already relative to the application root.
    """
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def installations() -> Installations:
    """The store of Connect installations."""
    return cast(Installations, bridge().extras["installations"])


def install_keys() -> InstallKeys:
    """The (per-process, cached) public keys of signed install hooks."""
    return cast(InstallKeys, _shared("connect_install_keys", InstallKeys.from_settings))


def _forge_keys() -> ForgeKeys:
    return cast(ForgeKeys, _shared("forge_keys", ForgeKeys.from_settings))


def _shared(name: str, factory: Callable[[Any, Any], object]) -> object:
    """An app-wide key cache, made on first use with its own bounded HTTP client."""
    value = current_app.extensions.get(name)
    if value is None:
        running = bridge()
        client = key_client(running.settings, name.replace("_", "-"))
        running.closers.append(client.close)
        value = current_app.extensions.setdefault(name, factory(running.settings, client))
    return value


def _view_allows_context_qsh() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, _CONTEXT_QSH_FLAG, False))


def optional_caller() -> Caller | None:
    """The caller if the request carries a credential that authenticates, else ``None``."""
    if not request.headers.get("Authorization"):
        return None
    try:
        return current_caller()
    except AuthenticationError:
        return None
