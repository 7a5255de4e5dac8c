"""Tests for bridge.scroll.ScrollStatus: reading Scroll's job status and its progress."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import UpstreamResponseError
from bridge.scroll import STATUSES, ScrollStatus

PROPERTY = settings(max_examples=300, deadline=None)


def test_from_json_reads_every_field() -> None:
    status = ScrollStatus.from_json(
        {
            "status": "incomplete",
            "step": 2,
            "totalSteps": 5,
            "stepProgress": 40,
            "downloadUrl": "https://x.test/f.pdf",
        }
    )
    assert status == ScrollStatus("incomplete", 2, 5, 40, "https://x.test/f.pdf")


def test_missing_numbers_are_zero() -> None:
    assert ScrollStatus.from_json({"status": "incomplete"}) == ScrollStatus("incomplete", 0, 0, 0)


@pytest.mark.parametrize("bad", [None, "2", True, [2], {"n": 2}])
def test_non_numbers_are_zero(bad: object) -> None:
    status = ScrollStatus.from_json(
        {"status": "incomplete", "step": bad, "totalSteps": bad, "stepProgress": bad}
    )
    assert (status.step, status.total_steps, status.step_progress) == (0, 0, 0)


def test_float_numbers_are_truncated() -> None:
    status = ScrollStatus.from_json({"status": "incomplete", "step": 2.9, "totalSteps": 3.0})
    assert (status.step, status.total_steps) == (2, 3)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_do_not_crash(value: float) -> None:
    """``requests``' ``.json()`` accepts NaN and Infinity, so Scroll's status can carry them;
    from_json promises a status or an UpstreamResponseError, nothing else."""
    try:
        status = ScrollStatus.from_json({"status": "incomplete", "step": value, "totalSteps": 3})
    except UpstreamResponseError:
        return
    assert 0 <= status.progress_percent <= 99


@pytest.mark.parametrize("url", ["", None, 5, ["https://x"]])
def test_unusable_download_url_is_none(url: object) -> None:
    assert ScrollStatus.from_json({"status": "complete", "downloadUrl": url}).download_url is None


@pytest.mark.parametrize("status", sorted(STATUSES))
def test_known_statuses(status: str) -> None:
    assert ScrollStatus.from_json({"status": status}).status == status


@pytest.mark.parametrize(
    "data",
    [
        {"status": "running"},
        {"status": "COMPLETE"},
        {"status": None},
        {"status": 1},
        {"status": []},
        {"status": {"name": "complete"}},
        {},
        {"step": 1},
    ],
)
def test_unknown_status_is_a_response_error(data: dict[str, object]) -> None:
    with pytest.raises(UpstreamResponseError) as info:
        ScrollStatus.from_json(data, backend="scroll-macro")
    assert info.value.backend == "scroll-macro"


@pytest.mark.parametrize("data", [None, [], ["complete"], "complete", 3])
def test_non_object_is_a_response_error(data: object) -> None:
    with pytest.raises(UpstreamResponseError):
        ScrollStatus.from_json(data)


def test_progress_examples() -> None:
    assert ScrollStatus("incomplete", 1, 4, 0).progress_percent == 0
    assert ScrollStatus("incomplete", 1, 4, 50).progress_percent == 12
    assert ScrollStatus("incomplete", 3, 4, 0).progress_percent == 50
    assert ScrollStatus("incomplete", 4, 4, 100).progress_percent == 99
    assert ScrollStatus("incomplete", 0, 0, 80).progress_percent == 0
    assert ScrollStatus("complete").progress_percent == 100
    assert ScrollStatus("complete", 1, 4, 0).progress_percent == 100


def test_phase() -> None:
    assert ScrollStatus("incomplete", 2, 3).phase == "exporting (step 2 of 3)"
    assert ScrollStatus("incomplete").phase == "exporting"


@st.composite
def two_points(draw: st.DrawFn) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """totalSteps and two (step, stepProgress) points within the documented range."""
    total = draw(st.integers(1, 10))
    point = st.tuples(st.integers(1, total), st.integers(0, 100))
    return total, draw(point), draw(point)


@PROPERTY
@given(two_points())
def test_progress_is_monotonic_in_step_then_step_progress(
    case: tuple[int, tuple[int, int], tuple[int, int]],
) -> None:
    total, a, b = case
    low, high = sorted([a, b])
    before = ScrollStatus("incomplete", low[0], total, low[1]).progress_percent
    after = ScrollStatus("incomplete", high[0], total, high[1]).progress_percent
    assert before <= after


@PROPERTY
@given(
    status=st.sampled_from(sorted(STATUSES - {"complete"})),
    step=st.integers(-(10**6), 10**6),
    total=st.integers(-(10**6), 10**6),
    progress=st.integers(-(10**6), 10**6),
)
def test_never_100_unless_complete(status: str, step: int, total: int, progress: int) -> None:
    assert 0 <= ScrollStatus(status, step, total, progress).progress_percent <= 99


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=10,
)


@PROPERTY
@given(
    st.fixed_dictionaries(
        {"status": st.sampled_from(sorted(STATUSES)) | JSONISH},
        optional={
            "step": JSONISH,
            "totalSteps": JSONISH,
            "stepProgress": JSONISH,
            "downloadUrl": JSONISH,
        },
    )
    | JSONISH
)
def test_from_json_yields_a_status_or_a_response_error(data: object) -> None:
    try:
        status = ScrollStatus.from_json(data)
    except UpstreamResponseError:
        return
    assert 0 <= status.progress_percent <= 100
