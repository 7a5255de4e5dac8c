"""The Scroll macro codec's speed: build a macro and parse its rendered answer, per second.

Two loops, each on realistic input: the Start Export pair (``build_start_macro`` with a full
export request, then ``parse_start_result`` on Confluence's export_view wrapper) and the
status pair (``build_status_macro``, then ``parse_status_result`` on a ``complete`` status
with a long signed ``downloadUrl``). One operation = one build + one parse.

    .venv/bin/python bench/bench_macro_codec.py --seconds 3
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.macro import (
    build_start_macro,
    build_status_macro,
    parse_start_result,
    parse_status_result,
)

JOB_ID = str(uuid.uuid4())
EXPORT_REQUEST = {
    "pageId": "1376263",
    "scope": "descendants",
    "templateId": "d6d04ab9-53c0-42d9-9ae2-f4903275f654",
    "locale": "en-US",
    "timeZone": "Europe/Berlin",
}
DOWNLOAD_URL = (
    "https://scroll-pdf.us.exporter.k15t.app/download/Product-Handbook-20241008_172721.pdf?jwt="
    + "eyJhbGciOiJIUzI1NiJ9."
    + "x" * 300
    + ".sig"
)


def rendered(payload: dict[str, object], macro: str = "scroll-pdf-export-job") -> str:
    """Confluence's export_view of one macro: the output block around Scroll's result."""
    return (
        "<p>Rendered for the bridge</p>"
        f'<div class="conf-macro output-block" data-hasbody="false" data-macro-name="{macro}" '
        f'data-macro-id="{uuid.uuid4()}"><div class="result"><code class="success">'
        f"{html.escape(json.dumps(payload, separators=(',', ':')))}</code></div></div>"
    )


def start_pair(output: str) -> Callable[[int], None]:
    def once(now: int) -> None:
        build_start_macro("pdf", EXPORT_REQUEST, app_name="confluence-export-bridge", issued_at=now)
        parse_start_result(output)

    return once


def status_pair(output: str) -> Callable[[int], None]:
    def once(now: int) -> None:
        build_status_macro("pdf", JOB_ID, issued_at=now)
        parse_status_result(output)

    return once


def rate(operation: Callable[[int], None], seconds: float) -> float:
    """Operations per second over about *seconds* (after a short warm-up)."""
    now = int(time.time())
    for _ in range(200):
        operation(now)
    count, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        for _ in range(100):
            operation(now)
        count += 100
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    status = {
        "status": "complete",
        "step": 3,
        "totalSteps": 3,
        "stepProgress": 100,
        "downloadUrl": DOWNLOAD_URL,
    }
    start_rate = rate(start_pair(rendered({"jobId": JOB_ID})), args.seconds)
    status_rate = rate(status_pair(rendered(status)), args.seconds)
    print(f"start  (build_start_macro + parse_start_result):   {start_rate:9,.0f} ops/s")
    print(f"status (build_status_macro + parse_status_result): {status_rate:9,.0f} ops/s")


if __name__ == "__main__":
    main()
