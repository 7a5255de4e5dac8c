"""Webhook payloads are read tolerantly, matched against tenant rules, and turned into
exports whose idempotency keys make redeliveries harmless."""

from __future__ import annotations

import hashlib
import hmac
import json
import tomllib
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import ExportRule, load_settings, normalize_event
from bridge.errors import (
    AuthenticationError,
    ConfigurationError,
    FieldError,
    IdempotencyKeyReusedError,
    UnsupportedRequestError,
    ValidationError,
)
from bridge.models import Caller, Job
from bridge.rules import (
    PageEvent,
    WebhookRules,
    connect_event,
    dc_event,
    forge_event,
    idempotency_key,
    matches,
    parse_body,
    start_exports,
    verify_hub_signature,
)

RAW = b"{}"
EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def rule(**fields: Any) -> ExportRule:
    return ExportRule.model_validate({"events": ["page_updated"], "format": "pdf", **fields})


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("page_updated", "page_updated"),
        ("avi:confluence:updated:page", "page_updated"),
        ("avi:confluence:created:blogpost", "blogpost_created"),
        (" page_created ", "page_created"),
        ("Page_Updated", None),
        ("avi:jira:updated:issue", None),
        ("page-updated", None),
        ("", None),
    ],
)
def test_event_names_are_normalized(name: str, normalized: str | None) -> None:
    assert normalize_event(name) == normalized


def test_rules_are_validated_at_start_up() -> None:
    assert rule(events=["avi:confluence:created:page", "page_updated"]).events == [
        "page_created",
        "page_updated",
    ]
    assert rule(page_ids=[1002]).page_ids == ["1002"]
    bad = [
        {"events": []},
        {"events": ["avi:jira:created:issue"]},
        {"callback_url": "not a url"},
        {"backend": "nope"},
        {"template": 42},
        {"spaces": ["bad key!"]},
        {"unknown": True},
    ]
    for fields in bad:
        with pytest.raises(ConfigurationError):
            load_settings(connect_rules=[{"events": ["page_updated"], "format": "pdf", **fields}])


def test_a_rule_naming_a_backend_its_tenant_lacks_is_refused() -> None:
    settings = load_settings(
        tenants=[
            {
                "id": "acme",
                "rules": [{"events": ["page_updated"], "format": "pdf", "backend": "scroll-rest"}],
            }
        ]
    )
    with pytest.raises(ConfigurationError, match=r"rules\[0\].*scroll-rest"):
        WebhookRules.from_settings(settings)
    callback = {"events": ["page_updated"], "format": "pdf", "callback_url": "https://h.example/x"}
    for settings in (
        load_settings(tenants=[{"id": "acme", "rules": [callback]}]),
        load_settings(connect_rules=[callback]),
    ):
        with pytest.raises(ConfigurationError, match="callback secret"):
            WebhookRules.from_settings(settings)


def test_rules_per_tenant_and_for_installed_tenants() -> None:
    settings = load_settings(
        tenants=[
            {
                "id": "acme",
                "dc_webhook_secret": "s" * 20,
                "rules": [{"events": ["page_created"], "format": "pdf"}],
            }
        ],
        connect_rules=[{"events": ["page_updated", "comment_created"], "format": "pdf"}],
    )
    rules = WebhookRules.from_settings(settings)
    assert [r.events for r in rules.rules_for("acme")] == [["page_created"]]
    assert [r.events for r in rules.rules_for("connect:site")] == [
        ["page_updated", "comment_created"]
    ]
    assert rules.rules_for("globex") == ()
    assert rules.dc_secret("acme") == "s" * 20 and rules.dc_secret("connect:site") is None
    assert rules.connect_events(("page_created",)) == {
        "page_created",
        "page_updated",
        "comment_created",
    }


# --- payloads -------------------------------------------------------------------------------


CONNECT = {
    "page": {
        "idAsString": "13139970",
        "creatorAccountId": "5e28",
        "spaceKey": "IT",
        "spaceId": 65634,
        "modificationDate": 1706398859667,
        "self": "https://x.atlassian.net/wiki/spaces/IT/pages/13139970/Test+Page",
        "id": 13139970,
        "title": "Test Page",
        "contentType": "page",
        "version": 2,
    },
    "accountType": "customer",
    "timestamp": 1706398859681,
    "userAccountId": "5e28-user",
    "updateTrigger": "edit_page",
}


def test_connect_payloads_in_both_id_forms() -> None:
    event = connect_event("page_updated", CONNECT, RAW)
    assert (event.page_id, event.space_key, event.title, event.version) == (
        "13139970",
        "IT",
        "Test Page",
        2,
    )
    assert (event.user, event.timestamp, event.labels) == ("5e28-user", 1706398859681, None)
    newer = {
        **CONNECT,
        "page": {"id": "10000001", "spaceKey": "IT", "version": 5},
        "suppressNotifications": False,
    }
    assert connect_event("page_updated", newer, RAW).page_id == "10000001"
    for bad_id in (True, -1, "12a", "1" * 21, 1.5, None, {"id": 1}):
        page = {"id": bad_id, "spaceKey": "IT"}
        assert connect_event("page_updated", {"page": page}, RAW).page_id is None
    assert connect_event("page_updated", {"comment": {}}, RAW).page_id is None


def test_forge_and_data_center_payloads() -> None:
    forge = forge_event(
        {
            "eventType": "avi:confluence:created:page",
            "atlassianId": "acc-1",
            "content": {
                "id": "1004",
                "space": {"key": "DOCS"},
                "version": {"number": 3},
                "metadata": {"labels": {"results": [{"name": "release"}, {"prefix": "x"}]}},
            },
        },
        RAW,
    )
    assert forge is not None
    assert (forge.name, forge.page_id, forge.space_key, forge.version, forge.user) == (
        "page_created",
        "1004",
        "DOCS",
        3,
        "acc-1",
    )
    assert forge.labels == ("release",)
    assert forge_event({"content": {"id": "1"}}, RAW) is None
    assert forge_event({"eventType": "avi:jira:created:issue"}, RAW) is None

    dc = dc_event({"event": "page_updated", "page": {"id": 1002, "spaceKey": "DOCS"}}, RAW)
    assert dc is not None and (dc.name, dc.page_id) == ("page_updated", "1002")
    content = dc_event({"webhookEvent": "page_created", "content": {"id": "7"}}, RAW)
    assert content is not None and (content.name, content.page_id) == ("page_created", "7")
    header = dc_event({"page": {"id": 9}, "labels": ["a", {"name": "b"}]}, RAW, "page_removed")
    assert header is not None and header.name == "page_removed" and header.labels == ("a", "b")
    assert dc_event({"page": {"id": 9}}, RAW) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "page",
                    "content",
                    "id",
                    "idAsString",
                    "version",
                    "labels",
                    "space",
                    "metadata",
                    "results",
                    "name",
                    "eventType",
                    "event",
                    "timestamp",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@given(JSON)
def test_no_payload_makes_a_parser_raise(body: Any) -> None:
    for event in (
        connect_event("page_updated", body, RAW),
        dc_event(body, RAW, "page_updated"),
        forge_event(body, RAW),
    ):
        assert event is None or event.page_id is None or event.page_id.isdigit()


def test_bodies_must_be_json_objects() -> None:
    assert parse_body(b'{"a": 1}') == {"a": 1}
    for raw in (b"", b"[1]", b"not json", b"\xff\xfe", b'"text"'):
        with pytest.raises(ValidationError):
            parse_body(raw)


# --- matching and keys ---------------------------------------------------------------------


def event(**fields: Any) -> PageEvent:
    return PageEvent(**{"name": "page_updated", "page_id": "1002", "space_key": "DOCS", **fields})


def test_matching_filters() -> None:
    assert matches(rule(), event())
    assert not matches(rule(), event(name="page_created"))
    assert not matches(rule(), event(page_id=None))
    assert matches(rule(spaces=["DOCS", "REL"]), event())
    assert not matches(rule(spaces=["REL"]), event())
    assert not matches(rule(spaces=["REL"]), event(space_key=None))
    assert matches(rule(page_ids=["1002"]), event()) and not matches(
        rule(page_ids=["1003"]), event()
    )
    labelled = rule(labels=["release", "public"])
    assert matches(labelled, event(labels=("public",)))
    assert not matches(labelled, event(labels=("draft",)))
    assert not matches(labelled, event(labels=()))
    assert not matches(labelled, event(labels=None))  # unknown labels never match


def test_idempotency_keys_identify_one_event_per_rule() -> None:
    base = idempotency_key("acme", 0, event(version=2))
    assert base == idempotency_key("acme", 0, event(version=2, timestamp=5, digest="other"))
    assert base.startswith("webhook-") and len(base) <= 255
    others = {
        idempotency_key("globex", 0, event(version=2)),
        idempotency_key("acme", 1, event(version=2)),
        idempotency_key("acme", 0, event(version=3)),
        idempotency_key("acme", 0, event(version=2, name="page_created")),
        idempotency_key("acme", 0, event(version=2, page_id="1003")),
    }
    assert base not in others and len(others) == 5
    assert event(timestamp=17).revision == "t17"
    assert event(digest="abc").revision == "babc"


def test_data_center_signatures() -> None:
    secret, body = "dc-secret-0123456789", b'{"event":"page_updated"}'
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    verify_hub_signature(secret, body, f"sha256={digest}")
    verify_hub_signature(secret, body, f"SHA256={digest.upper()}")
    cases = {
        "webhook_not_configured": (None, f"sha256={digest}"),
        "missing_signature": (secret, None),
        "bad_signature": (secret, f"sha256={digest[:-1]}0"),
    }
    for reason, (key, header) in cases.items():
        with pytest.raises(AuthenticationError) as caught:
            verify_hub_signature(key, body, header)
        assert caught.value.reason == reason
    for header in (f"sha1={digest}", digest, "sha256=ünïcode", f"sha256={digest} "):
        with pytest.raises(AuthenticationError):
            verify_hub_signature(secret, body + b" ", header)


# --- starting exports ----------------------------------------------------------------------


class FakeService:
    """Records creates; refuses what it is told to."""

    def __init__(self, refuse: dict[int, Exception] | None = None) -> None:
        self.refuse = refuse or {}
        self.created: list[tuple[Caller, dict[str, Any], str]] = []
        self.jobs: dict[str, Job] = {}

    def create(self, caller: Caller, body: dict[str, Any], key: str) -> tuple[Job, bool]:
        error = self.refuse.get(len(self.created))
        self.created.append((caller, body, key))
        if error is not None:
            raise error
        if key in self.jobs:
            return self.jobs[key], False
        job = Job(f"job-{len(self.jobs)}", caller.tenant_id, "x", body, 0.0, 0.0)
        self.jobs[key] = job
        return job, True


def test_every_matching_rule_starts_one_export() -> None:
    rules = WebhookRules(
        {
            "acme": [
                rule(backend="scroll-macro", attach_to_page=True, template="t1"),
                rule(events=["page_created"]),
                rule(run_as="app", format="docx", callback_url="https://hooks.example/x"),
            ]
        },
        {},
    )
    service = FakeService()
    caller = Caller("acme", user="principal", admin=True, product_token="tok")
    result = start_exports(cast(Any, service), rules, caller, event(version=4, user="editor"))
    assert (result.matched, result.created, result.jobs) == (2, 2, ["job-0", "job-1"])
    (first_caller, first, _), (app_caller, second, _) = service.created
    assert first == {
        "backend": "scroll-macro",
        "format": "pdf",
        "source": {"pageId": "1002", "scope": "current"},
        "options": {},
        "template": "t1",
        "asUser": "editor",
        "attachToPage": True,
    }
    assert first_caller == caller
    assert "asUser" not in second and second["callback"] == {"url": "https://hooks.example/x"}
    assert (app_caller.user, app_caller.product_token) == (None, None)
    again = start_exports(cast(Any, service), rules, caller, event(version=4, user="editor"))
    assert (again.created, again.jobs) == (0, ["job-0", "job-1"])


def test_a_refused_rule_is_skipped_and_the_others_still_run() -> None:
    rules = WebhookRules({"acme": [rule(), rule(format="docx"), rule(format="html")]}, {})
    service = FakeService(
        {
            0: UnsupportedRequestError("No configured backend can export this request."),
            1: IdempotencyKeyReusedError("reused"),
        }
    )
    result = start_exports(cast(Any, service), rules, Caller("acme", admin=True), event(version=1))
    assert (result.matched, result.created, result.jobs) == (3, 1, ["job-0"])
    assert len(result.refused) == 1 and "rules[0]" in result.refused[0]
    invalid = FakeService({0: ValidationError("bad", [FieldError("asUser", "needed")])})
    result = start_exports(cast(Any, invalid), rules, Caller("acme", admin=True), event())
    assert "asUser: needed" in result.refused[0]


def test_rule_bodies_are_json() -> None:
    body = rule(options={"a": [1]}, scope="descendants").export_body("1", "u")
    assert json.loads(json.dumps(body))["source"] == {"pageId": "1", "scope": "descendants"}


def test_the_example_configs_webhook_rules_are_valid() -> None:
    text = EXAMPLE.read_text()
    section = text[text.index("# --- Webhooks") :].splitlines()[1:]
    # "# " lines are TOML to uncomment; "## " lines are prose.
    toml = "\n".join(line[2:] for line in section if line.startswith("# "))
    parsed = tomllib.loads(toml)
    rules = parsed["tenants"]["rules"] + parsed["connect_rules"]
    assert [ExportRule.model_validate(r).events for r in rules] == [
        ["page_updated", "page_created"],
        ["page_updated"],
    ]
