"""Simulated Confluence webhook senders and payloads (upstreams.md §5.5).

* :func:`connect_page_payload`: a Connect page webhook body, as captured from real Cloud sites
  (the page id as a number with ``idAsString``, or — as in a 2026 capture — as a string, with
  ``suppressNotifications``). Sent by :meth:`ConnectSite.send_webhook`.
* :func:`forge_page_event`: a Forge product event (``avi:confluence:updated:page``) with the
  page under ``content``. Sent by :meth:`ForgeInvoker.send_event`. Labels appear under
  ``content.metadata.labels.results`` as in the REST content shape (UNCONFIRMED for events).
* :class:`DataCenterWebhooks`: a Confluence Data Center site's webhook sender, signing the raw
  body with HMAC-SHA256 in ``X-Hub-Signature: sha256=<hex>`` (documented). The body shape —
  ``event``, ``timestamp`` (ms), ``userKey``, ``page`` — is UNCONFIRMED.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import requests

from bridge.sandbox.pages import Page

SITE = "https://sandbox.atlassian.net/wiki"


def _millis(timestamp: float | None) -> int:
    return int((time.time() if timestamp is None else timestamp) * 1000)


def connect_page_payload(
    page: Page,
    user: str,
    *,
    version: int = 2,
    id_as_string: bool = False,
    timestamp: float | None = None,
    update_trigger: str = "edit_page",
    **extra: Any,
) -> dict[str, Any]:
    """A Connect ``page_*`` webhook body for *page*, edited by *user*."""
    body: dict[str, Any] = {
        "creatorAccountId": user,
        "spaceKey": page.space_key,
        "modificationDate": _millis(timestamp),
        "lastModifierAccountId": user,
        "self": f"{SITE}/spaces/{page.space_key}/pages/{page.id}",
        "title": page.title,
        "creationDate": _millis(timestamp) - 60_000,
        "contentType": "page",
        "version": version,
    }
    if id_as_string:
        body["id"] = page.id
    else:
        body.update(id=int(page.id), idAsString=page.id)
    payload: dict[str, Any] = {
        "page": body,
        "accountType": "customer",
        "timestamp": _millis(timestamp),
        "userAccountId": user,
        "updateTrigger": update_trigger,
        **extra,
    }
    if id_as_string:
        payload.setdefault("suppressNotifications", False)
    return payload


def forge_page_event(
    page: Page,
    user: str | None,
    *,
    event_type: str = "avi:confluence:updated:page",
    version: int = 2,
) -> dict[str, Any]:
    """A Forge Confluence page event for *page* (``atlassianId`` = who caused it)."""
    payload: dict[str, Any] = {
        "eventType": event_type,
        "suppressNotifications": False,
        "updateTrigger": "edit_page",
        "content": {
            "id": page.id,
            "type": "page",
            "status": "current",
            "title": page.title,
            "space": {"key": page.space_key},
            "version": {"number": version},
            "metadata": {"labels": {"results": [{"name": name} for name in page.labels]}},
        },
    }
    if user is not None:
        payload["atlassianId"] = user
    return payload


def dc_page_payload(
    page: Page,
    event: str = "page_updated",
    *,
    user_key: str = "8a7f808a5c4e0b6f015c4e0c5a2b0000",
    version: int = 2,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """A Data Center webhook body for *page* (shape UNCONFIRMED, see the module docstring)."""
    return {
        "event": event,
        "timestamp": _millis(timestamp),
        "userKey": user_key,
        "page": {
            "id": int(page.id),
            "spaceKey": page.space_key,
            "title": page.title,
            "version": version,
            "creatorKey": user_key,
            "lastModifierKey": user_key,
        },
    }


class DataCenterWebhooks:
    """A Confluence Data Center site delivering webhooks signed with a shared secret."""

    def __init__(self, secret: str, timeout: float = 10.0) -> None:
        self.secret = secret
        self.timeout = timeout

    def signature(self, body: bytes) -> str:
        """The ``X-Hub-Signature`` of *body*."""
        return "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()

    def send(
        self, url: str, payload: object, *, signature: str | None = None, signed: bool = True
    ) -> requests.Response:
        """POST *payload* as JSON, signed (or with *signature* instead, or unsigned)."""
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            headers["X-Hub-Signature"] = signature or self.signature(body)
        return requests.post(url, data=body, headers=headers, timeout=self.timeout)
