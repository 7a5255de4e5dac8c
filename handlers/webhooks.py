"""``/webhooks``: Confluence events that start exports (rules in :mod:`bridge.rules`).

* ``POST /webhooks/connect/<event>``: a Connect webhook, authenticated by the installation's
  Connect JWT (``qsh`` over this request; context tokens refused) → 204;
* ``POST /webhooks/dc/<tenant_id>``: a Data Center webhook, authenticated by the HMAC-SHA256
  of the raw body in ``X-Hub-Signature`` under the tenant's ``dc_webhook_secret`` → 204;
* ``POST /webhooks/forge``: a Forge product event through Forge Remote, authenticated by its
  Forge Invocation Token → 202 with a JSON summary (Forge Remote wants JSON, within 5 s).
  The event's user (``atlassianId``) is trusted from app-level invocations only; a FIT with a
  ``principal`` may report that user's events alone (403 otherwise).

Each answers as soon as the exports are *created* (a store insert each); the worker runs them.
An event that matches no rule, or whose rule the tenant cannot serve, still gets a 2xx: the
sender can do nothing about it and would only redeliver.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

from flask import Blueprint, Response, jsonify, request

from bridge.connect import WEBHOOK_EVENTS
from bridge.errors import (
    AuthenticationError,
    FieldError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from bridge.models import Caller
from bridge.rules import (
    Dispatch,
    PageEvent,
    WebhookRules,
    connect_event,
    dc_event,
    forge_event,
    parse_body,
    start_exports,
    verify_hub_signature,
)
from handlers.auth import bridge, current_caller

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


def rules() -> WebhookRules:
    """The tenants' webhook rules (built by the bootstrap; from the settings otherwise)."""
    running = bridge()
    found = running.extras.get("webhook_rules")
    if found is None:
        found = running.extras.setdefault(
            "webhook_rules", WebhookRules.from_settings(running.settings)
        )
    return cast(WebhookRules, found)


@bp.post("/connect/<event>")
def connect_webhook(event: str) -> Response:
    """A Connect webhook from an installed site."""
    caller = _caller_with("connect-jwt", "Connect webhooks must carry the site's Connect JWT.")
    if event not in rules().connect_events(WEBHOOK_EVENTS):
        raise NotFoundError(f"This app does not take the webhook {event[:64]!r}.")
    raw = request.get_data()
    page_event = connect_event(event, parse_body(raw), raw)
    _dispatch(Caller(caller.tenant_id, admin=True, scheme="connect-webhook"), page_event)
    return Response(status=204)


@bp.post("/dc/<tenant_id>")
def dc_webhook(tenant_id: str) -> Response:
    """A Confluence Data Center webhook for a configured tenant."""
    raw = request.get_data()
    verify_hub_signature(rules().dc_secret(tenant_id), raw, request.headers.get("X-Hub-Signature"))
    page_event = dc_event(parse_body(raw), raw, request.headers.get("X-Event-Key"))
    if page_event is None:
        raise ValidationError(
            "The webhook names no event.", [FieldError("event", "Name the event (page_updated).")]
        )
    _dispatch(Caller(tenant_id, admin=True, scheme="dc-webhook"), page_event)
    return Response(status=204)


@bp.post("/forge")
def forge_webhook() -> Response:
    """A Forge product event (``avi:confluence:updated:page``, ...) through Forge Remote."""
    caller = _caller_with("forge", "Forge events must carry a Forge Invocation Token.")
    raw = request.get_data()
    page_event = forge_event(parse_body(raw), raw)
    if page_event is None:
        raise ValidationError(
            "The event has no usable eventType.",
            [FieldError("eventType", "Send a Forge event such as avi:confluence:updated:page.")],
        )
    if caller.user is not None:
        # Only app-level invocations (no principal) come from Atlassian's event delivery; a
        # user's invocation carries a body that user controls, so it speaks for them alone.
        if page_event.user not in (None, caller.user):
            raise PermissionDeniedError(
                "An invocation on behalf of a user may only report that user's events."
            )
        page_event = replace(page_event, user=caller.user)
    # The app acts for its tenant; the invoking user's token (if any) travels with the jobs.
    acting = Caller(
        caller.tenant_id,
        user=caller.user,
        admin=True,
        scheme="forge-event",
        product_token=caller.product_token,
        product_base_url=caller.product_base_url,
    )
    result = _dispatch(acting, page_event)
    response = jsonify({"matched": result.matched, "created": result.created, "jobs": result.jobs})
    response.status_code = 202
    return response


def _caller_with(scheme: str, message: str) -> Caller:
    caller = current_caller()
    if caller.scheme != scheme:
        raise AuthenticationError(message, reason="wrong_credential_type")
    return caller


def _dispatch(caller: Caller, event: PageEvent) -> Dispatch:
    return start_exports(bridge().service, rules(), caller, event)
