"""A big artifact through the bridge: the bridge's memory must stay flat.

Starts the sandbox (in this process) with one page whose PDF is SIZE MiB, runs
``export-bridge serve`` as a child process, exports that page through the HTTP API, then
downloads it through the signed link. Samples the bridge process tree's RSS throughout and
prints the baseline, the peak while the bridge copies the file from the upstream into its
artifact store, and the peak while it streams the file to the client.

    .venv/bin/python bench/bench_streaming.py --size-mib 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import API_KEY, PeakRSS, bridge_process, free_port, mib, write_config
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.suite import SandboxSuite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200)
    args = parser.parse_args()
    size = args.size_mib * 2**20

    pages = demo_tree()
    pages.add("7777", "Big Page", pad_to=size)
    with SandboxSuite(pages=pages, job_seconds=0.2) as suite, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(
            workdir / "bridge.toml",
            workdir,
            url,
            {"scroll-rest": suite.tenant_backends()["scroll-rest"]},
            poll_interval=0.2,
        )
        with bridge_process(config, port) as process:
            rss = PeakRSS(process.pid)
            baseline = rss.current()
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {API_KEY}"
            with rss:
                began = time.monotonic()
                job = session.post(
                    f"{url}/v1/exports",
                    json={
                        "backend": "scroll-rest",
                        "format": "pdf",
                        "source": {"pageId": "7777"},
                    },
                ).json()
                while job["state"] not in ("complete", "failed"):
                    time.sleep(0.1)
                    job = session.get(f"{url}/v1/exports/{job['id']}").json()
                export_seconds = time.monotonic() - began
            fetch_peak = rss.peak
            assert job["state"] == "complete", job
            assert job["download"]["size"] == size

            rss = PeakRSS(process.pid)
            with rss:
                began = time.monotonic()
                received = 0
                with requests.get(job["download"]["url"], stream=True) as response:
                    for chunk in response.iter_content(1 << 20):
                        received += len(chunk)
                download_seconds = time.monotonic() - began
            assert received == size

    print(f"artifact size:                      {mib(size)}")
    print(f"bridge RSS at rest:                 {mib(baseline)}")
    print(
        f"bridge peak RSS, upstream -> store: {mib(fetch_peak)} "
        f"(+{mib(fetch_peak - baseline)}; export took {export_seconds:.1f} s)"
    )
    print(
        f"bridge peak RSS, store -> client:   {mib(rss.peak)} "
        f"(+{mib(rss.peak - baseline)}; {size / download_seconds / 2**20:.0f} MiB/s)"
    )


if __name__ == "__main__":
    main()
