"""Tests for bridge.models: the normalized request's validation and error paths, and jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import FieldError, ValidationError
from bridge.models import (
    Artifact,
    ExportRequest,
    Job,
    JobError,
    JobState,
    PageSource,
    SpaceSource,
    parse_model,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAGE = {"pageId": "65538"}


def body(**fields: Any) -> dict[str, Any]:
    """A valid request body with *fields* changed."""
    data: dict[str, Any] = {"source": dict(PAGE), "format": "pdf"}
    data.update(fields)
    return data


def errors_of(data: object) -> dict[str, str]:
    """The field errors parse_model reports for *data*, as {field: message}."""
    with pytest.raises(ValidationError) as info:
        parse_model(ExportRequest, data)
    fields = [e.field for e in info.value.errors]
    assert len(fields) == len(set(fields)), "each field is named once"
    assert info.value.status_code == 400
    return {e.field: e.message for e in info.value.errors}


def test_valid_page_request_defaults() -> None:
    request = parse_model(ExportRequest, body())
    assert isinstance(request.source, PageSource)
    assert request.page_id == "65538"
    assert request.space_key is None
    assert request.scope == "current"
    assert request.backend == "auto"
    assert request.format == "pdf"
    assert request.template is None
    assert request.options == {}
    assert request.as_user is None
    assert request.callback is None


def test_valid_full_request() -> None:
    request = parse_model(
        ExportRequest,
        body(
            source={"pageId": "1", "scope": "descendants"},
            format="docx",
            backend="scroll-rest",
            template="com.k15t.scroll.office.default-template-2",
            options={"locale": "de-DE"},
            asUser="557058:abc",
            callback={"url": "https://hooks.example.com/done"},
        ),
    )
    assert request.scope == "descendants"
    assert request.template == "com.k15t.scroll.office.default-template-2"
    assert request.options == {"locale": "de-DE"}
    assert request.as_user == "557058:abc"
    assert request.callback is not None
    assert str(request.callback.url).startswith("https://hooks.example.com/done")


def test_valid_space_request() -> None:
    request = parse_model(ExportRequest, body(source={"spaceKey": "~jdoe"}, format="html"))
    assert isinstance(request.source, SpaceSource)
    assert request.space_key == "~jdoe"
    assert request.page_id is None
    assert request.scope == "space"


def test_numeric_page_id_becomes_a_string() -> None:
    assert parse_model(ExportRequest, body(source={"pageId": 1376263})).page_id == "1376263"


def test_template_may_be_a_string_or_an_object() -> None:
    as_text = parse_model(ExportRequest, body(template="tpl-1"))
    as_object = parse_model(ExportRequest, body(template={"id": "tpl-1", "vars": [1, 2]}))
    assert as_text.template == "tpl-1"
    assert as_object.template == {"id": "tpl-1", "vars": [1, 2]}


def test_snake_case_names_are_accepted_too() -> None:
    request = parse_model(ExportRequest, body(source={"page_id": "7"}, as_user="u1"))
    assert request.page_id == "7"
    assert request.as_user == "u1"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (body(source={"pageId": "abc"}), "source.pageId"),
        (body(source={"pageId": ""}), "source.pageId"),
        (body(source={"pageId": "123\n"}), "source.pageId"),
        (body(source={"pageId": "1" * 21}), "source.pageId"),
        (body(source={"pageId": -5}), "source.pageId"),
        (body(source={"pageId": True}), "source.pageId"),
        (body(source={"pageId": 1.5}), "source.pageId"),
        (body(source={"pageId": "1", "scope": "all"}), "source.scope"),
        (body(source={"scope": "current"}), "source.pageId"),
        (body(source={"spaceKey": "A B"}), "source.spaceKey"),
        (body(source={"spaceKey": ""}), "source.spaceKey"),
        (body(source="65538"), "source"),
        (body(source=None), "source"),
        ({"format": "pdf"}, "source"),
        (body(format="txt"), "format"),
        (body(format="PDF"), "format"),
        ({"source": PAGE}, "format"),
        (body(backend="confluence"), "backend"),
        (body(callback={"url": "not a url"}), "callback.url"),
        (body(callback={"url": "ftp://files.example.com/x"}), "callback.url"),
        (body(callback={}), "callback.url"),
        (body(callback="https://hooks.example.com"), "callback"),
        (body(options=[1, 2]), "options"),
        (body(options="fast"), "options"),
        (body(asUser=""), "asUser"),
        (body(asUser="u" * 129), "asUser"),
        (body(asUser=42), "asUser"),
        (body(template=""), "template"),
        (body(template="t" * 513), "template"),
        (body(template=5), "template"),
        (body(template=["a"]), "template"),
    ],
)
def test_invalid_field_is_named_by_its_dotted_path(data: object, field: str) -> None:
    errors = errors_of(data)
    assert field in errors, errors
    assert errors[field]


def test_union_failures_are_merged_into_one_message() -> None:
    errors = errors_of(body(template=5))
    assert list(errors) == ["template"]
    assert "Or:" in errors["template"]


def test_several_bad_fields_are_all_reported() -> None:
    errors = errors_of(
        {
            "source": {"pageId": "x"},
            "format": "txt",
            "callback": {"url": "nope"},
            "options": 1,
            "asUser": "",
            "bogus": True,
        }
    )
    assert set(errors) == {"source.pageId", "format", "callback.url", "options", "asUser", "bogus"}
    assert errors["bogus"] == "Unknown field."


def test_unknown_fields_are_named() -> None:
    assert errors_of(body(pageId="1")) == {"pageId": "Unknown field."}
    assert errors_of(body(source={"pageId": "1", "version": 3})) == {
        "source.version": "Unknown field."
    }
    assert errors_of(body(callback={"url": "https://h.example.com", "secret": "x"})) == {
        "callback.secret": "Unknown field."
    }
    # Both kinds of source at once: the space variant is chosen and pageId is extra.
    assert errors_of(body(source={"pageId": "1", "spaceKey": "DOC"})) == {
        "source.pageId": "Unknown field."
    }


@pytest.mark.parametrize("name", ["int", "str", "PageSource", "a[b]", "list[int]"])
def test_unknown_field_named_like_a_union_tag_is_still_named(name: str) -> None:
    """An unknown field whose name happens to look like one of pydantic's union tags must
    still be reported under its own name, not collapsed into "body"."""
    assert errors_of(body(**{name: 1})) == {name: "Unknown field."}


@pytest.mark.parametrize("data", [None, [], ["source"], "pdf", 42, 1.5, True])
def test_non_object_body_is_a_body_error(data: object) -> None:
    assert list(errors_of(data)) == ["body"]


def test_prefix_is_prepended_to_every_path() -> None:
    with pytest.raises(ValidationError) as info:
        parse_model(PageSource, {"pageId": "x", "extra": 1}, "options")
    assert {e.field for e in info.value.errors} == {"options.pageId", "options.extra"}
    with pytest.raises(ValidationError) as whole:
        parse_model(PageSource, "nope", "options")
    assert [e.field for e in whole.value.errors] == ["options"]


@pytest.mark.parametrize(
    "data",
    [
        body(),
        body(source={"pageId": 42, "scope": "descendants"}, template={"a": [1, {"b": None}]}),
        body(source={"spaceKey": "DOC"}, format="markdown", asUser="u"),
        body(callback={"url": "https://hooks.example.com"}, options={"x": 1}),
    ],
)
def test_to_json_round_trips(data: dict[str, Any]) -> None:
    """The service stores ``to_json()`` and re-validates it later, so it must round-trip."""
    request = parse_model(ExportRequest, data)
    stored = json.loads(json.dumps(request.to_json()))
    assert parse_model(ExportRequest, stored) == request
    assert "asUser" in stored or request.as_user is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["source", "format", "backend", "template", "options", "asUser", "as_user", "callback"]
)
NEARLY_VALID = st.fixed_dictionaries(
    {},
    optional={
        "source": st.fixed_dictionaries(
            {},
            optional={
                "pageId": JSON | st.integers(),
                "spaceKey": JSON,
                "scope": st.sampled_from(["current", "descendants", "x"]) | JSON,
            },
        )
        | JSON,
        "format": st.sampled_from(["pdf", "docx", "html", "markdown", "txt"]) | JSON,
        "backend": st.sampled_from(["auto", "scroll-rest", "nope"]) | JSON,
        "template": JSON,
        "options": JSON,
        "asUser": JSON,
        "callback": st.fixed_dictionaries({"url": JSON | st.just("https://h.example.com")}) | JSON,
    },
) | st.dictionaries(KEYS | st.text(max_size=8), JSON, max_size=6)


@PROPERTY
@given(JSON | NEARLY_VALID)
def test_arbitrary_bodies_only_ever_raise_validation_error(data: object) -> None:
    try:
        request = parse_model(ExportRequest, data)
    except ValidationError as exc:
        assert exc.errors
        for error in exc.errors:
            assert isinstance(error, FieldError)
            assert error.field and error.message
        return
    assert isinstance(request, ExportRequest)
    assert parse_model(ExportRequest, json.loads(json.dumps(request.to_json()))) == request


# --- jobs ------------------------------------------------------------------------------


def test_job_state_final() -> None:
    assert {s for s in JobState if s.final} == {
        JobState.COMPLETE,
        JobState.FAILED,
        JobState.CANCELLED,
    }


def test_job_dict_round_trip_through_json() -> None:
    job = Job(
        id="j1",
        tenant_id="acme",
        backend="scroll-rest",
        request=body(),
        created_at=1.0,
        updated_at=2.0,
        state=JobState.FAILED,
        error=JobError("upstream_rejected", "nope", 404),
        artifact=Artifact("acme/j1", "a.pdf", "application/pdf", 10, "ab" * 32),
        handle={"jobId": "x", "cookies": {"a": "b"}},
        expires_at=99.5,
        version=3,
    )
    data = json.loads(json.dumps(job.to_dict()))
    assert data["state"] == "failed"
    assert Job.from_dict(data) == job
