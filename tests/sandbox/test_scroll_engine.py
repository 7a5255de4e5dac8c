"""The Scroll export-job engine: validation, clock-driven progress, retention, isolation."""

from __future__ import annotations

import threading

import pytest

from bridge.sandbox.harness import ManualClock
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.scroll_engine import (
    DC_TEMPLATE_UUIDS,
    PRODUCTS,
    ScrollError,
    ScrollJobEngine,
)

START = 1_704_110_400.0  # 2024-01-01 12:00:00 UTC
PDF_TEMPLATE = "com.k15t.scroll.pdf.default-template-article"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def engine(clock: ManualClock) -> ScrollJobEngine:
    return ScrollJobEngine(demo_tree(), clock, job_seconds=3.0)


def pdf_params(page_id: str = "1001", **extra: object) -> dict[str, object]:
    return {"pageId": page_id, "templateId": PDF_TEMPLATE, "scope": "current", **extra}


def error_of(call: object) -> ScrollError:
    assert callable(call)
    with pytest.raises(ScrollError) as info:
        call()
    return info.value


def test_job_progresses_by_the_clock_and_completes(
    engine: ScrollJobEngine, clock: ManualClock
) -> None:
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    seen = []
    for _ in range(4):
        seen.append(engine.status(job, "alice"))
        clock.advance(1.0)
    assert [(s["status"], s["step"], s["stepProgress"]) for s in seen] == [
        ("incomplete", 1, 0),
        ("incomplete", 2, 0),
        ("incomplete", 3, 0),
        ("complete", 3, 100),
    ]
    assert all(s["totalSteps"] == 3 and s["downloadUrl"] is None for s in seen)


def test_descendants_export_takes_longer_per_page(
    engine: ScrollJobEngine, clock: ManualClock
) -> None:
    job = engine.start("scroll-pdf", pdf_params(scope="descendants"), "alice")
    clock.advance(3.0 * 3)
    assert engine.status(job, "alice")["status"] == "incomplete"
    clock.advance(3.0)
    assert engine.status(job, "alice")["status"] == "complete"


@pytest.mark.parametrize(("product", "magic"), [("scroll-pdf", b"%PDF-"), ("scroll-office", b"PK")])
def test_file_of_complete_job(
    engine: ScrollJobEngine, clock: ManualClock, product: str, magic: bytes
) -> None:
    job = engine.start(product, {"pageId": "1001", "templateId": DC_TEMPLATE_UUIDS[product]}, "a")
    assert error_of(lambda: engine.file(job)).status == 404
    clock.advance(3.0)
    file, name = engine.file(job)
    assert file.read().startswith(magic)
    assert (
        name == f"Product-Handbook-20240101_120000.{'pdf' if product == 'scroll-pdf' else 'docx'}"
    )


def test_pad_to_grows_the_pdf_without_building_it(clock: ManualClock) -> None:
    tree = demo_tree()
    tree.add("9001", "Big Manual", pad_to=5 * 1024 * 1024)
    engine = ScrollJobEngine(tree, clock)
    job = engine.start("scroll-pdf", pdf_params("9001"), "a")
    clock.advance(1.0)
    file, _ = engine.file(job)
    assert file.size == 5 * 1024 * 1024
    assert sum(len(chunk) for chunk in file.chunks()) == file.size


def test_job_is_forgotten_ten_minutes_after_completion(
    engine: ScrollJobEngine, clock: ManualClock
) -> None:
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    clock.advance(3.0 + 599.0)
    assert engine.status(job, "alice")["status"] == "complete"
    clock.advance(1.0)
    assert error_of(lambda: engine.status(job, "alice")).status == 404
    assert error_of(lambda: engine.file(job)).status == 404


def test_running_job_is_not_forgotten(engine: ScrollJobEngine, clock: ManualClock) -> None:
    slow = ScrollJobEngine(demo_tree(), clock, job_seconds=3600.0)
    job = slow.start("scroll-pdf", pdf_params(), "alice")
    clock.advance(1800.0)
    slow.forget_expired()
    assert slow.status(job, "alice")["status"] == "incomplete"


def test_jobs_are_visible_only_to_their_owner(engine: ScrollJobEngine) -> None:
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    assert error_of(lambda: engine.status(job, "bob")).status == 404
    assert error_of(lambda: engine.cancel(job, "bob")).status == 404
    assert engine.owner_of(job) == "alice"


def test_unknown_job_is_404(engine: ScrollJobEngine) -> None:
    error = error_of(lambda: engine.status("no-such-job", "alice"))
    assert error.status == 404
    assert error.body() == {"status": 404, "message": error.message}


def test_cancel_running_job(engine: ScrollJobEngine, clock: ManualClock) -> None:
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    clock.advance(1.5)
    engine.cancel(job, "alice")
    assert engine.status(job, "alice")["status"] == "cancelled"
    clock.advance(10.0)
    assert engine.status(job, "alice")["status"] == "cancelled"
    assert error_of(lambda: engine.file(job)).status == 404


def test_cancel_of_queued_job_shows_only_when_it_would_start(clock: ManualClock) -> None:
    engine = ScrollJobEngine(demo_tree(), clock, queue_seconds=5.0)
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    engine.cancel(job, "alice")
    assert engine.status(job, "alice")["status"] == "incomplete"
    clock.advance(5.0)
    assert engine.status(job, "alice")["status"] == "cancelled"


def test_cancel_of_complete_job_keeps_it_complete(
    engine: ScrollJobEngine, clock: ManualClock
) -> None:
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    clock.advance(3.0)
    engine.cancel(job, "alice")
    assert engine.status(job, "alice")["status"] == "complete"


def test_failing_page_ends_in_error_at_step_two(
    engine: ScrollJobEngine, clock: ManualClock
) -> None:
    engine.failing_pages.add("1004")
    job = engine.start("scroll-pdf", pdf_params(scope="descendants"), "alice")
    clock.advance(3.9)  # 4 pages x 3 s: step 2 begins at 4 s
    assert engine.status(job, "alice")["status"] == "incomplete"
    clock.advance(0.1)
    status = engine.status(job, "alice")
    assert (status["status"], status["step"]) == ("error", 2)
    assert error_of(lambda: engine.export_now("scroll-pdf", pdf_params("1004"))).status == 500


def test_make_job_fail_and_fail_next_start(engine: ScrollJobEngine, clock: ManualClock) -> None:
    job = engine.start("scroll-pdf", pdf_params(), "alice")
    engine.make_job_fail(job)
    clock.advance(1.0)
    assert engine.status(job, "alice")["status"] == "error"
    engine.fail_next_start(503, "Busy")
    assert error_of(lambda: engine.start("scroll-pdf", pdf_params(), "alice")).body() == {
        "status": 503,
        "message": "Busy",
    }
    engine.start("scroll-pdf", pdf_params(), "alice")


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"pageId": "1001"}, 400),
        ({"pageId": "1001", "templateId": "nope"}, 400),
        ({"pageId": "1001", "templateId": "com.k15t.scroll.office.default-template-2"}, 400),
        ({"templateId": PDF_TEMPLATE}, 400),
        ({"pageId": "", "templateId": PDF_TEMPLATE}, 400),
        ({"pageId": "1001", "templateId": PDF_TEMPLATE, "scope": "all"}, 400),
        ({"pageId": "424242", "templateId": PDF_TEMPLATE}, 404),
    ],
)
def test_invalid_parameters(
    engine: ScrollJobEngine, params: dict[str, object], status: int
) -> None:
    assert error_of(lambda: engine.start("scroll-pdf", params, "alice")).status == status
    assert engine.jobs_started == 0


def test_placeholder_optional_values_are_ignored(engine: ScrollJobEngine) -> None:
    params = pdf_params(
        versionId="string",
        variantId="string",
        languageKey="string",
        locale="xx-INVALID",
        timeZone="",
        somethingElse=[1, 2],
    )
    assert engine.start("scroll-pdf", params, "alice")
    assert engine.start("scroll-pdf", {"pageId": 1001, "templateId": PDF_TEMPLATE}, "alice")


def test_every_product_accepts_its_default_templates(engine: ScrollJobEngine) -> None:
    for product in PRODUCTS:
        for template in engine.templates[product]:
            engine.start(product, {"pageId": "1001", "templateId": template}, "a")


def test_concurrent_starts_get_distinct_ids(engine: ScrollJobEngine) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def start_some() -> None:
        for _ in range(50):
            job = engine.start("scroll-pdf", pdf_params(), "alice")
            with lock:
                ids.append(job)

    threads = [threading.Thread(target=start_some) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 400 == engine.jobs_started
