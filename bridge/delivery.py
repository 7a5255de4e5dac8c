"""Deliveries of finished jobs: signed callbacks (and page attachments), retried for hours.

When a job is about to become final, the service *first* queues its deliveries in the
store's outbox and only then saves the job, so a crash between the two loses nothing: a
queued delivery of a job that is not final yet simply waits. Each delivery is taken
under a lease, so several workers never send the same attempt twice.

Callbacks follow Standard Webhooks 1.0: headers ``webhook-id`` (stable across retries, so
receivers can de-duplicate), ``webhook-timestamp`` and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under the tenant's ``whsec_`` secret).
A 2xx ends the delivery, 410 stops it for good, anything else is retried on the
configured schedule (honouring ``Retry-After``), and the last failure gives up loudly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from bridge.config import Settings
from bridge.errors import FieldError, ValidationError
from bridge.http import parse_retry_after
from bridge.models import Job
from bridge.stores.base import Store

log = logging.getLogger(__name__)

QUEUE = "deliveries"
LEASE_SECONDS = 60.0


def sign_webhook(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for *body* (Standard Webhooks ``v1``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def check_callback_url(
    url: str, allow_private: bool, resolve: Callable[[str], list[str]] | None = None
) -> None:
    """Refuse callback URLs that would make the bridge call into a private network.

    :raises ValidationError: naming ``callback.url``.
    """
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        problem = "Use an http(s) URL with a host."
    elif parts.scheme != "https" and not allow_private:
        problem = "Callbacks are sent over https only."
    elif not allow_private:
        addresses = (resolve or _resolve)(parts.hostname)
        if not addresses:
            problem = f"The host {parts.hostname!r} does not resolve."
        elif any(not ipaddress.ip_address(a).is_global for a in addresses):
            problem = "Callbacks to private, loopback or link-local addresses are not allowed."
    if problem:
        raise ValidationError(
            "The callback URL is not allowed.", [FieldError("callback.url", problem)]
        )


def _resolve(host: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return []


@dataclass
class DeliveryItem:
    """One queued delivery."""

    job_id: str
    kind: str
    attempt: int = 0

    @property
    def id(self) -> str:
        return f"{self.job_id}.{self.kind}"

    def dumps(self) -> str:
        return json.dumps({"job_id": self.job_id, "kind": self.kind, "attempt": self.attempt})

    @classmethod
    def loads(cls, payload: str) -> DeliveryItem:
        data = json.loads(payload)
        return cls(data["job_id"], data["kind"], int(data["attempt"]))


class Deliveries:
    """Queue deliveries for finished jobs and send the due ones."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Callable[[], float],
        render: Callable[[Job], dict[str, Any]],
        secret_for: Callable[[str], str | None],
        attach: Callable[[Job], None] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.render = render
        self.secret_for = secret_for
        self.attach = attach
        self.session = session or requests.Session()

    def queue_for(self, job: Job) -> None:
        """Queue the deliveries *job* asks for (call before saving its final state)."""
        kinds = []
        if job.request.get("callback"):
            kinds.append("callback")
        if job.request.get("attachToPage") and job.state.value == "complete":
            kinds.append("attach")
        for kind in kinds:
            item = DeliveryItem(job.id, kind)
            self.store.enqueue(QUEUE, item.id, item.dumps(), self.clock())

    def run_due(self, limit: int = 20) -> int:
        """Send every due delivery once; return how many were attempted."""
        attempted = 0
        for item_id in self.store.due_items(QUEUE, self.clock(), limit):
            owner = uuid.uuid4().hex
            payload = self.store.claim_item(QUEUE, item_id, owner, self.clock(), LEASE_SECONDS)
            if payload is None:
                continue
            attempted += 1
            self._attempt(DeliveryItem.loads(payload), owner)
        return attempted

    def _attempt(self, item: DeliveryItem, owner: str) -> None:
        job = self.store.get_job(item.job_id)
        if job is None:
            self.store.delete_item(QUEUE, item.id)
            return
        if not job.state.final:  # queued just before a save that has not happened (yet)
            self.store.reschedule_item(QUEUE, item.id, owner, item.dumps(), self.clock() + 1)
            return
        try:
            if item.kind == "callback":
                self._send_callback(job, item)
            elif self.attach is not None:
                self.attach(job)
            else:
                raise DeliveryStopped("no attachment sender is configured")
        except DeliveryFailed as exc:
            self._retry(item, owner, exc.retry_after, str(exc))
            return
        except DeliveryStopped as exc:
            log.warning(
                "delivery stopped", extra={"job": job.id, "kind": item.kind, "reason": str(exc)}
            )
        except Exception as exc:
            # A crashing sender must not leave its item leased and unaccounted for: it is
            # retried on the schedule like any failure, so it gives up in the end.
            log.exception("delivery crashed", extra={"job": job.id, "kind": item.kind})
            self._retry(item, owner, None, type(exc).__name__)
            return
        self.store.delete_item(QUEUE, item.id)

    def _retry(
        self, item: DeliveryItem, owner: str, retry_after: float | None, reason: str
    ) -> None:
        item.attempt += 1
        schedule = self.settings.callback_schedule
        if item.attempt >= len(schedule):
            log.error(
                "delivery given up",
                extra={
                    "job": item.job_id,
                    "kind": item.kind,
                    "attempts": item.attempt,
                    "reason": reason,
                },
            )
            self.store.delete_item(QUEUE, item.id)
            return
        delay = max(schedule[item.attempt], retry_after or 0.0)
        log.warning(
            "delivery failed, will retry",
            extra={
                "job": item.job_id,
                "kind": item.kind,
                "attempt": item.attempt,
                "reason": reason,
                "retry_in": delay,
            },
        )
        self.store.reschedule_item(QUEUE, item.id, owner, item.dumps(), self.clock() + delay)

    def _send_callback(self, job: Job, item: DeliveryItem) -> None:
        url = str(job.request["callback"]["url"])
        secret = self.secret_for(job.tenant_id)
        if not secret:
            raise DeliveryStopped("the tenant has no callback_secret")
        try:
            check_callback_url(url, self.settings.allow_private_callbacks)
        except ValidationError:
            raise DeliveryStopped("the callback URL is not allowed (anymore)") from None
        body = json.dumps(
            {
                "type": f"export.{job.state.value}",
                "timestamp": int(self.clock()),
                "data": self.render(job),
            }
        ).encode()
        timestamp = int(self.clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "confluence-export-bridge",
            "webhook-id": f"msg_{item.id}",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_webhook(secret, f"msg_{item.id}", timestamp, body),
        }
        try:
            response = self.session.post(
                url,
                data=body,
                headers=headers,
                timeout=self.settings.callback_timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise DeliveryFailed(f"{type(exc).__name__}") from None
        with response:
            if 200 <= response.status_code < 300:
                log.info(
                    "callback delivered", extra={"job": job.id, "status": response.status_code}
                )
                return
            if response.status_code == 410:
                raise DeliveryStopped("the receiver answered 410 Gone")
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"),
                self.clock(),
                self.settings.retry.retry_after_cap,
            )
            raise DeliveryFailed(f"HTTP {response.status_code}", retry_after)


class DeliveryFailed(Exception):
    """This attempt failed; try again later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class DeliveryStopped(Exception):
    """Do not try again (the receiver said 410, or the delivery cannot ever succeed)."""
