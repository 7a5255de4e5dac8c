"""The Content Exporter Remote API sandbox over real loopback HTTP, on a manual clock."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from bridge.sandbox.content_exporter import ContentExporterSandbox
from bridge.sandbox.harness import ManualClock, ServerThread
from bridge.sandbox.pages import PageTree, demo_tree

KEY = {"CEX-API-KEY": "sandbox-cex-key"}
BIG = 3 * 1024 * 1024


def body(page_id: str | int = 1001, **overrides: Any) -> dict[str, Any]:
    """The documented example init body, for *page_id*."""
    example: dict[str, Any] = {
        "pageSettings": {"size": "A4", "orientation": "PORTRAIT"},
        "margins": [{"top": 1, "bottom": 1, "right": 0.5, "left": 0.5}],
        "unit": "IN",
        "tocLevel": 6,
        "tocTitle": "Table of Contents",
        "tocMode": "FLAT",
        "fontResize": True,
        "headingNumbering": False,
        "pageNumbersArea": {"numbersFrom": "COVER_PAGE", "numbersTo": "BACK_COVER_PAGE"},
        "rootContentId": page_id,
        "outputFormat": "PDF_MERGE",
        "exportType": "ALL_CHILD",
        "frontCover": 123456789,
        "labels": None,
        "selectedContentIdList": [],
    }
    return {**example, **overrides}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_704_110_400.0)


@pytest.fixture
def tree() -> PageTree:
    tree = demo_tree()
    tree.add("9001", "Big Manual", pad_to=BIG)
    return tree


class Swappable:
    """A WSGI app that forwards to whichever sandbox the current test installed."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    """One loopback server for the module (starting and stopping one costs 0.5 s)."""
    target = Swappable()
    with ServerThread(target) as running:
        yield target, running.url


@pytest.fixture
def cex(
    tree: PageTree, clock: ManualClock, server: tuple[Swappable, str]
) -> tuple[ContentExporterSandbox, str]:
    sandbox = ContentExporterSandbox(tree, clock, export_seconds=10.0, retention_seconds=60.0)
    target, url = server
    target.app = sandbox.app
    return sandbox, url


def init(url: str, payload: object, page_id: str = "1001", **headers: str) -> requests.Response:
    return requests.post(
        f"{url}/api/remoteExport/{page_id}/init",
        json=payload,
        headers={**KEY, **headers},
        timeout=5,
    )


def poll(url: str, job_hash: str, headers: dict[str, str] = KEY) -> requests.Response:
    return requests.get(
        f"{url}/api/remoteExport/poll", params={"hash": job_hash}, headers=headers, timeout=5
    )


def download(url: str, job_hash: str, headers: dict[str, str] = KEY) -> requests.Response:
    return requests.get(
        f"{url}/api/remoteExport/download", params={"hash": job_hash}, headers=headers, timeout=5
    )


def start(url: str, clock: ManualClock, payload: dict[str, Any], page_id: str = "1001") -> str:
    """Start an export and let it finish; return its hash."""
    response = init(url, payload, page_id)
    assert response.status_code == 200, response.text
    clock.advance(10.0)
    job_hash: str = response.json()["hash"]
    return job_hash


def test_happy_path_init_poll_download(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    sandbox, url = cex
    started = init(url, body())
    assert started.status_code == 200
    job_hash = started.json()["hash"]
    progress = [poll(url, job_hash).json()]
    for step in (0.5, 4.5, 4.0, 1.0):
        clock.advance(step)
        progress.append(poll(url, job_hash).json())
    assert [
        (p["done"], p["progressData"]["phase"], p["progressData"]["progressValue"])
        for p in progress
    ] == [
        (False, "COLLECTING_PAGES", 0),
        (False, "COLLECTING_PAGES", 5),
        (False, "CONVERTING_PAGES", 50),
        (False, "CONVERTING_PAGES", 90),
        (True, "CONVERTING_PAGES", 100),
    ]
    file = download(url, job_hash)
    assert file.status_code == 200
    assert file.headers["Content-Type"] == "application/pdf"
    assert file.headers["Content-Disposition"] == 'attachment; filename="Product Handbook.pdf"'
    assert int(file.headers["Content-Length"]) == len(file.content)
    assert file.content.startswith(b"%PDF-")
    for title in (b"Product Handbook", b"Getting Started", b"Architecture", b"Storage Layer"):
        assert title in file.content
    assert sandbox.jobs[job_hash].run_as == "sandbox-admin"


def test_text_hash_response(tree: PageTree, clock: ManualClock) -> None:
    sandbox = ContentExporterSandbox(tree, clock, hash_response="text")
    client = sandbox.app.test_client()
    response = client.post("/api/remoteExport/1001/init", json=body(), headers=KEY)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    job_hash = response.get_data(as_text=True)
    assert job_hash in sandbox.jobs
    assert client.get(f"/api/remoteExport/poll?hash={job_hash}", headers=KEY).status_code == 200


def test_large_export_streams_with_its_length(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    _, url = cex
    job_hash = start(url, clock, body("9001"), "9001")
    with requests.get(
        f"{url}/api/remoteExport/download",
        params={"hash": job_hash},
        headers=KEY,
        stream=True,
        timeout=5,
    ) as response:
        assert int(response.headers["Content-Length"]) == BIG
        received = sum(len(chunk) for chunk in response.iter_content(256 * 1024))
    assert received == BIG


def test_word_merge_is_a_docx_with_the_descendants(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    _, url = cex
    file = download(url, start(url, clock, body(outputFormat="WORD_MERGE")))
    assert file.headers["Content-Type"].endswith("wordprocessingml.document")
    document = zipfile.ZipFile(io.BytesIO(file.content)).read("word/document.xml").decode()
    assert "Storage Layer" in document


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exportType": "CURRENT_PAGE"}, ["Product Handbook"]),
        ({"exportType": "DIRECT_CHILD"}, ["Product Handbook", "Getting Started", "Architecture"]),
        (
            {"exportType": "SELECTED", "selectedContentIdList": [1004]},
            ["Product Handbook", "Storage Layer"],
        ),
    ],
)
def test_export_types_choose_the_pages(
    cex: tuple[ContentExporterSandbox, str],
    clock: ManualClock,
    overrides: dict[str, Any],
    expected: list[str],
) -> None:
    _, url = cex
    file = download(url, start(url, clock, body(outputFormat="PDF_ZIP", **overrides)))
    assert file.headers["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(file.content)).namelist()
    assert [n.rsplit("-", 1)[0] for n in names] == expected
    assert all(n.endswith(".pdf") for n in names)


def test_pages_hidden_from_the_key_owner_are_left_out(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    sandbox, url = cex
    sandbox.restricted = {"1003"}
    job_hash = start(url, clock, body())
    assert sandbox.jobs[job_hash].page_ids == ("1001", "1002", "1004")
    assert init(url, body(1003), "1003").status_code == 404


def test_missing_key_is_401_and_wrong_key_403(cex: tuple[ContentExporterSandbox, str]) -> None:
    _, url = cex
    missing = requests.post(f"{url}/api/remoteExport/1001/init", json=body(), timeout=5)
    assert missing.status_code == 401
    assert init(url, body(), **{"CEX-API-KEY": "guess"}).status_code == 403
    assert poll(url, "x", {}).status_code == 401
    assert download(url, "x", {"CEX-API-KEY": "guess"}).status_code == 403


def test_regenerated_key_replaces_the_old_one(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    sandbox, url = cex
    job_hash = start(url, clock, body())
    new_key = sandbox.regenerate_key()
    assert new_key != KEY["CEX-API-KEY"]
    assert poll(url, job_hash).status_code == 403
    assert poll(url, job_hash, {"CEX-API-KEY": new_key}).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {k: v for k, v in body().items() if k != "rootContentId"},
        body(1002),
        body("1002"),
        body(True),
        body(outputFormat="PNG"),
        body(outputFormat=None),
        body(exportType="EVERYTHING"),
        body(exportType="SELECTED", selectedContentIdList=[]),
        body(exportType="SELECTED", selectedContentIdList=[2001]),
        body(tocLevel=9),
        body(fontResize="yes"),
        body(margins={"top": 1}),
        body(labels="draft"),
        [1, 2],
    ],
)
def test_invalid_init_bodies_are_400(cex: tuple[ContentExporterSandbox, str], payload: Any) -> None:
    sandbox, url = cex
    assert init(url, payload).status_code == 400
    assert sandbox.jobs == {}


def test_root_content_id_may_be_a_string_and_unknown_keys_are_tolerated(
    cex: tuple[ContentExporterSandbox, str],
) -> None:
    _, url = cex
    assert init(url, body("1001", somethingNew={"x": 1})).status_code == 200


def test_unknown_page_is_404_and_non_json_is_415(cex: tuple[ContentExporterSandbox, str]) -> None:
    _, url = cex
    assert init(url, body(424242), "424242").status_code == 404
    form = requests.post(
        f"{url}/api/remoteExport/1001/init", data="rootContentId=1001", headers=KEY, timeout=5
    )
    assert form.status_code == 415


def test_unknown_missing_and_unfinished_hashes(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    _, url = cex
    assert poll(url, "deadbeef").status_code == 404
    assert download(url, "deadbeef").status_code == 404
    no_hash = requests.get(f"{url}/api/remoteExport/poll", headers=KEY, timeout=5)
    assert no_hash.status_code == 400
    job_hash = init(url, body()).json()["hash"]
    assert download(url, job_hash).status_code == 409
    clock.advance(10.0)
    assert download(url, job_hash).status_code == 200


def test_finished_exports_expire_after_retention(
    cex: tuple[ContentExporterSandbox, str], clock: ManualClock
) -> None:
    _, url = cex
    job_hash = start(url, clock, body())
    clock.advance(60.0)
    assert poll(url, job_hash).status_code == 200
    clock.advance(0.5)
    assert poll(url, job_hash).status_code == 404
    assert download(url, job_hash).status_code == 404


def test_injected_fault_then_recovery(cex: tuple[ContentExporterSandbox, str]) -> None:
    sandbox, url = cex
    sandbox.inject(503, times=2, path_contains="/init", retry_after=1.5)
    first = init(url, body())
    assert (first.status_code, first.headers["Retry-After"]) == (503, "1.5")
    assert init(url, body()).status_code == 503
    assert init(url, body()).status_code == 200
    assert [c.path for c in sandbox.calls] == ["/api/remoteExport/1001/init"] * 3
    assert sandbox.calls[0].headers["Cex-Api-Key"] == "sandbox-cex-key"


def test_region_picks_the_application_url(tree: PageTree) -> None:
    assert ContentExporterSandbox(tree, region="eu").application_url.endswith(
        "addon-eu.meta-inf.hu"
    )
    with pytest.raises(ValueError, match="region"):
        ContentExporterSandbox(tree, region="apac")  # type: ignore[arg-type]
