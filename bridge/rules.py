"""Webhook events → exports: reading Confluence's event payloads, matching tenant rules.

Three senders, one vocabulary (upstreams.md §5.5):

* **Connect** webhooks (``/webhooks/connect/<event>``): the route names the event; the body is
  ``{"page": {"id" | "idAsString", "spaceKey", "title", "version", ...}, "userAccountId",
  "timestamp", "updateTrigger", ...}`` with the page id as a number *or* a string;
* **Data Center** webhooks (``/webhooks/dc/<tenant>``): HMAC-SHA256 of the raw body in
  ``X-Hub-Signature: sha256=<hex>``; the event name in the body's ``event`` (tolerated:
  ``webhookEvent``, or an ``X-Event-Key`` header), the page under ``page`` or ``content``.
  The exact DC payload is UNCONFIRMED (only the signing is documented), hence the tolerance;
* **Forge** events through Forge Remote (``/webhooks/forge``): ``{"eventType":
  "avi:confluence:updated:page", "atlassianId", "content": {"id", "space": {"key"},
  "version": {"number"}, ...}}``.

Unknown keys are ignored everywhere; a payload without a usable page id makes no export.

**Rules** (:class:`~bridge.config.ExportRule`) come from ``[[tenants.rules]]`` for configured
tenants and ``connect_rules`` for tenants created by a Connect install. Every matching rule
starts one export through :meth:`ExportService.create` as the tenant's admin, with ``asUser``
the event's user (rule ``run_as = "event_user"``, the default) so scroll-macro renders, and the
attachment is uploaded, as the person who edited the page.

**Duplicates.** Atlassian redelivers webhooks; each export is created with an
``Idempotency-Key`` derived from (tenant, rule index, event name, page id, revision), where
the revision is the page version, else the event timestamp, else a digest of the raw body.
A redelivery therefore returns the job the first delivery made instead of starting another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bridge.config import ExportRule, Settings, normalize_event
from bridge.errors import (
    AuthenticationError,
    BridgeError,
    ConfigurationError,
    FieldError,
    IdempotencyKeyReusedError,
    ValidationError,
)
from bridge.installations import TENANT_PREFIX
from bridge.models import Caller

if TYPE_CHECKING:
    from bridge.service import ExportService

log = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="
_MAX_ID_DIGITS = 20


@dataclass(frozen=True)
class PageEvent:
    """One page event, whichever product sent it."""

    name: str
    """Normalized: ``page_created``, ``page_updated``, ..."""
    page_id: str | None
    space_key: str | None = None
    title: str | None = None
    version: int | None = None
    timestamp: int | None = None
    user: str | None = None
    """The accountId of whoever caused the event, when the payload names one."""
    labels: tuple[str, ...] | None = None
    """The page's labels when the payload lists them (``None``: not listed, unknown)."""
    digest: str = field(default="", repr=False)
    """SHA-256 of the raw body: the identity of a delivery that has neither version nor time."""

    @property
    def revision(self) -> str:
        """What tells two events about the same page apart (and a redelivery from a new one)."""
        if self.version is not None:
            return f"v{self.version}"
        if self.timestamp is not None:
            return f"t{self.timestamp}"
        return f"b{self.digest}"


def connect_event(name: str, body: object, raw: bytes) -> PageEvent:
    """A Connect webhook for *name* (the route names it; the body does not)."""
    data = body if isinstance(body, dict) else {}
    page = _object(data.get("page"))
    return _page_event(
        name,
        page,
        raw,
        user=_text(data.get("userAccountId")),
        timestamp=_integer(data.get("timestamp")),
        extra_labels=data.get("labels"),
    )


def dc_event(body: object, raw: bytes, header_event: str | None = None) -> PageEvent | None:
    """A Data Center webhook; ``None`` when no event name can be found."""
    data = body if isinstance(body, dict) else {}
    raw_name = _text(data.get("event")) or _text(data.get("webhookEvent")) or header_event
    name = normalize_event(raw_name) if raw_name else None
    if name is None:
        return None
    page = _object(data.get("page")) or _object(data.get("content"))
    return _page_event(
        name,
        page,
        raw,
        user=_text(data.get("userAccountId")),
        timestamp=_integer(data.get("timestamp")),
        extra_labels=data.get("labels"),
    )


def forge_event(body: object, raw: bytes) -> PageEvent | None:
    """A Forge product event; ``None`` when ``eventType`` is missing or not understood."""
    data = body if isinstance(body, dict) else {}
    raw_name = _text(data.get("eventType"))
    name = normalize_event(raw_name) if raw_name else None
    if name is None:
        return None
    return _page_event(
        name,
        _object(data.get("content")),
        raw,
        user=_text(data.get("atlassianId")),
        timestamp=_integer(data.get("timestamp")),
        extra_labels=data.get("labels"),
    )


def _page_event(
    name: str,
    page: dict[str, Any],
    raw: bytes,
    *,
    user: str | None,
    timestamp: int | None,
    extra_labels: object,
) -> PageEvent:
    space = _object(page.get("space"))
    version = page.get("version")
    labels = _labels(page.get("labels"))
    if labels is None:
        metadata = _object(_object(page.get("metadata")).get("labels"))
        labels = _labels(metadata.get("results"))
    if labels is None:
        labels = _labels(extra_labels)
    return PageEvent(
        name=name,
        page_id=_content_id(page.get("idAsString")) or _content_id(page.get("id")),
        space_key=_text(page.get("spaceKey")) or _text(space.get("key")),
        title=_text(page.get("title")),
        version=_integer(version.get("number") if isinstance(version, dict) else version),
        timestamp=timestamp,
        user=user,
        labels=labels,
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object, limit: int = 255) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= _MAX_ID_DIGITS:
        return int(value)
    return None


def _content_id(value: object) -> str | None:
    """A page id sent as a number or a string (Confluence does both)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if isinstance(value, str) and value.isdigit() and len(value) <= _MAX_ID_DIGITS:
        return value
    return None


def _labels(value: object) -> tuple[str, ...] | None:
    """Label names from ``["a", ...]`` or ``[{"name": "a"}, ...]``; ``None`` if not a list."""
    if not isinstance(value, list):
        return None
    names = []
    for item in value:
        name = _text(item.get("name") if isinstance(item, dict) else item, 255)
        if name is not None:
            names.append(name)
    return tuple(names)


def verify_hub_signature(secret: str | None, body: bytes, header: str | None) -> None:
    """Check a Data Center webhook's ``X-Hub-Signature`` (``sha256=<hex>`` HMAC of *body*).

    :raises AuthenticationError: ``webhook_not_configured`` (no secret for this tenant: the
        same answer as for an unknown tenant), ``missing_signature`` or ``bad_signature``.
    """
    if not secret:
        raise AuthenticationError(
            "No Data Center webhook is configured here.", reason="webhook_not_configured"
        )
    if not header:
        raise AuthenticationError(
            "The webhook carries no X-Hub-Signature.", reason="missing_signature"
        )
    expected = SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    given = header.strip()
    if not given.lower().startswith(SIGNATURE_PREFIX):
        raise AuthenticationError(
            "The webhook signature is not sha256=<hex>.", reason="bad_signature"
        )
    given = SIGNATURE_PREFIX + given[len(SIGNATURE_PREFIX) :].lower()
    if not hmac.compare_digest(given.encode("ascii", "replace"), expected.encode()):
        raise AuthenticationError("The webhook signature does not match.", reason="bad_signature")


def idempotency_key(tenant_id: str, rule_index: int, event: PageEvent) -> str:
    """The ``Idempotency-Key`` of the export rule *rule_index* makes for *event*."""
    material = "\0".join(
        (tenant_id, str(rule_index), event.name, event.page_id or "", event.revision)
    )
    return "webhook-" + hashlib.sha256(material.encode()).hexdigest()


class WebhookRules:
    """Every tenant's export rules and Data Center webhook secret."""

    def __init__(
        self,
        rules: Mapping[str, Sequence[ExportRule]],
        dc_secrets: Mapping[str, str],
        connect_rules: Sequence[ExportRule] = (),
    ) -> None:
        self._rules = {tenant: tuple(items) for tenant, items in rules.items()}
        self._dc_secrets = dict(dc_secrets)
        self.connect_rules = tuple(connect_rules)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookRules:
        """The rules of ``settings.tenants`` and ``settings.connect_rules``.

        :raises ConfigurationError: a rule names a backend its tenant has not configured.
        """
        rules: dict[str, list[ExportRule]] = {}
        secrets: dict[str, str] = {}
        for index, tenant in enumerate(settings.tenants):
            where = f"tenants[{index}] ({tenant.id})"
            for number, rule in enumerate(tenant.rules):
                if rule.backend != "auto" and rule.backend not in tenant.backends:
                    raise ConfigurationError(
                        f"{where}: rules[{number}] exports with {rule.backend!r}, which is not "
                        "configured for this tenant"
                    )
                _check_callback(rule, tenant.callback_secret is not None, f"{where}: rules")
            rules[tenant.id] = list(tenant.rules)
            if tenant.dc_webhook_secret is not None:
                secrets[tenant.id] = tenant.dc_webhook_secret.get_secret_value()
        for rule in settings.connect_rules:
            _check_callback(rule, settings.connect_callback_secret is not None, "connect_rules")
        return cls(rules, secrets, settings.connect_rules)

    def rules_for(self, tenant_id: str) -> tuple[ExportRule, ...]:
        """A configured tenant's rules; an installed tenant's are ``connect_rules``."""
        if tenant_id in self._rules:
            return self._rules[tenant_id]
        return self.connect_rules if tenant_id.startswith(TENANT_PREFIX) else ()

    def dc_secret(self, tenant_id: str) -> str | None:
        """The tenant's Data Center webhook secret, if it has one."""
        return self._dc_secrets.get(tenant_id)

    def connect_events(self, subscribed: Sequence[str]) -> frozenset[str]:
        """Connect events the bridge takes: *subscribed* ones and those ``connect_rules`` name."""
        return frozenset(subscribed) | {e for rule in self.connect_rules for e in rule.events}

    def matching(self, tenant_id: str, event: PageEvent) -> list[tuple[int, ExportRule]]:
        """The rules (with their index) that *event* matches."""
        return [
            (index, rule)
            for index, rule in enumerate(self.rules_for(tenant_id))
            if matches(rule, event)
        ]


def _check_callback(rule: ExportRule, has_secret: bool, where: str) -> None:
    if rule.callback_url is not None and not has_secret:
        raise ConfigurationError(
            f"{where}: a rule has a callback_url but its tenants have no callback secret "
            "(callback_secret, or connect_callback_secret for installed tenants)"
        )


def matches(rule: ExportRule, event: PageEvent) -> bool:
    """Whether *event* passes every filter of *rule* (see :class:`ExportRule`)."""
    if event.name not in rule.events or event.page_id is None:
        return False
    if rule.spaces and event.space_key not in rule.spaces:
        return False
    if rule.page_ids and event.page_id not in rule.page_ids:
        return False
    return not rule.labels or bool(event.labels and set(rule.labels) & set(event.labels))


@dataclass
class Dispatch:
    """What one event started."""

    matched: int = 0
    jobs: list[str] = field(default_factory=list)
    """Ids of the jobs the matching rules map to (new or, for a redelivery, earlier)."""
    created: int = 0
    refused: list[str] = field(default_factory=list)
    """Why a matching rule made no export (a backend or request the tenant cannot serve)."""


def start_exports(
    service: ExportService, rules: WebhookRules, caller: Caller, event: PageEvent
) -> Dispatch:
    """Create one export per rule of the caller's tenant that *event* matches.

    *caller* acts for the tenant (an admin credential); for ``run_as = "app"`` rules its user
    and product token are dropped. A rule whose export the service refuses is logged and
    skipped: the sender cannot fix it, so it must not see an error and redeliver.
    Store failures propagate (the sender should redeliver; the keys make that safe).
    """
    result = Dispatch()
    for index, rule in rules.matching(caller.tenant_id, event):
        result.matched += 1
        assert event.page_id is not None
        acting = caller
        if rule.run_as == "app":
            acting = replace(caller, user=None, product_token=None, product_base_url=None)
        body = rule.export_body(event.page_id, event.user)
        key = idempotency_key(caller.tenant_id, index, event)
        try:
            job, created = service.create(acting, body, key)
        except IdempotencyKeyReusedError:
            # The rule changed between two deliveries of one event: the first export stands.
            log.info("webhook redelivered after a rule change", extra=_where(caller, index))
            continue
        except BridgeError as exc:
            detail = exc.message
            if isinstance(exc, ValidationError) and exc.errors:
                detail += " " + "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
            result.refused.append(f"rules[{index}]: {detail}")
            log.warning(
                "webhook rule made no export", extra={**_where(caller, index), "reason": detail}
            )
            continue
        result.jobs.append(job.id)
        result.created += int(created)
        log.info(
            "webhook export started" if created else "webhook redelivery, export exists",
            extra={**_where(caller, index), "job": job.id, "event": event.name},
        )
    return result


def _where(caller: Caller, index: int) -> dict[str, object]:
    return {"tenant": caller.tenant_id, "rule": index}


def parse_body(raw: bytes) -> dict[str, Any]:
    """A webhook body: a JSON object (whatever the ``Content-Type`` says).

    :raises ValidationError: not a JSON object.
    """
    try:
        body = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise ValidationError(
            "The webhook body must be a JSON object.", [FieldError("body", "Invalid JSON.")]
        )
    return body
