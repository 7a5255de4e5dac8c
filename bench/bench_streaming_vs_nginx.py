"""A 1 GiB artifact through the bridge's signed link vs. nginx serving the same file.

Starts the sandbox (in this process) with one page whose PDF is SIZE MiB, runs
``export-bridge serve`` (1 worker) as a child process, exports the page through the HTTP
API, then points an nginx of its own (foreground, loopback, config and pid file in a temp
folder, one worker process, ``sendfile on``) at the bridge's artifact folder, so both serve
the very same file on disk (in the page cache after the export wrote it). Downloads it
with ``curl`` (the same streaming client for both, out of process, discarding the body)
ROUNDS times each, alternating bridge and nginx, and prints the median throughput of each,
their ratio, and the bridge's peak RSS while streaming: the gunicorn worker alone and the
whole tree (arbiter + worker).

    .venv/bin/python bench/bench_streaming_vs_nginx.py
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import API_KEY, PeakRSS, bridge_process, free_port, mib, write_config
from bridge.sandbox.pages import demo_tree
from bridge.sandbox.suite import SandboxSuite

PAGE_ID = "7777"
NGINX_CONF = """\
worker_processes 1;
user root root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


class WorkerPeakRSS(PeakRSS):
    """The tree's peak RSS, and also the peak of the arbiter's children (the workers)."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(pid, every)
        self.worker_peak = 0

    def current(self) -> int:
        workers = 0
        for proc in self.process.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a child may exit while we look
                workers += int(proc.memory_info().rss)
        self.worker_peak = max(self.worker_peak, workers)
        with contextlib.suppress(psutil.Error):
            return workers + int(self.process.memory_info().rss)
        return workers


def tree_pss(pid: int) -> int:
    """Proportional set size of a process tree: pages shared after the fork count once."""
    total = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += int(proc.memory_full_info().pss)
    return total


@contextmanager
def nginx_process(root: Path, port: int, tmp: Path) -> Iterator[str]:
    """Run nginx in the foreground on loopback, serving *root*; yield its base URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=root))
    command = [nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.head(f"{url}/", timeout=1)
                break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                log = tmp / "error.log"
                raise RuntimeError(
                    "nginx did not start: " + (log.read_text() if log.exists() else "")
                )
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()  # SIGTERM: fast shutdown of master and worker
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def curl_download(url: str, size: int) -> float:
    """Download *url* with curl into /dev/null; return bytes per second."""
    # "--" before the URL: a link (it carries a token) can never be read as an option.
    command = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download} %{speed_download}",
        "--",
        url,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    status, received, speed = out.split()
    if status != "200" or int(received) != size:
        raise RuntimeError(f"bad download: HTTP {status}, {received} of {size} bytes")
    return float(speed)


def export_big_page(url: str) -> dict[str, object]:
    """Export the padded page through the bridge and wait for it to complete."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    body = {"backend": "scroll-rest", "format": "pdf", "source": {"pageId": PAGE_ID}}
    job: dict[str, object] = session.post(f"{url}/v1/exports", json=body, timeout=30).json()
    deadline = time.monotonic() + 600
    while job["state"] not in ("complete", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the export did not finish: {job}")
        time.sleep(0.2)
        job = session.get(f"{url}/v1/exports/{job['id']}", timeout=30).json()
    if job["state"] != "complete":
        raise RuntimeError(f"the export did not complete: {job}")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="downloads from each server")
    args = parser.parse_args()
    size = args.size_mib * 2**20
    for tool in ("curl", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"{tool} is not installed (apt-get install -y {tool})")

    pages = demo_tree()
    pages.add(PAGE_ID, "Big Page", pad_to=size)
    with ExitStack() as stack:
        suite = stack.enter_context(SandboxSuite(pages=pages, job_seconds=0.2))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(
            workdir / "bridge.toml",
            workdir,
            url,
            {"scroll-rest": suite.tenant_backends()["scroll-rest"]},
            poll_interval=0.2,
        )
        process = stack.enter_context(bridge_process(config, port, workers=1))
        began = time.monotonic()
        job = export_big_page(url)
        export_seconds = time.monotonic() - began
        stored = workdir / "artifacts" / "bench" / str(job["id"])
        if stored.stat().st_size != size:
            raise RuntimeError(f"unexpected artifact {stored}: {stored.stat().st_size} B")
        nginx_dir = workdir / "nginx"
        nginx_dir.mkdir()
        nginx_url = stack.enter_context(nginx_process(stored.parent.parent, free_port(), nginx_dir))
        download = job["download"]
        assert isinstance(download, dict)
        targets = {"bridge": str(download["url"]), "nginx": f"{nginx_url}/bench/{job['id']}"}

        rss = WorkerPeakRSS(process.pid)
        at_rest, worker_at_rest = rss.current(), rss.worker_peak
        pss_at_rest = tree_pss(process.pid)
        speeds: dict[str, list[float]] = {name: [] for name in targets}
        with rss:
            for _ in range(args.rounds):
                for name, target in targets.items():
                    speeds[name].append(curl_download(target, size))

    bridge = statistics.median(speeds["bridge"])
    nginx = statistics.median(speeds["nginx"])
    ratio = bridge / nginx
    print(f"artifact: {mib(size)} (export through the bridge took {export_seconds:.1f} s)")
    for name in targets:
        each = ", ".join(f"{s / 2**20:.0f}" for s in speeds[name])
        print(
            f"{name:>7}: median {statistics.median(speeds[name]) / 2**20:6.0f} MiB/s  "
            f"(runs: {each} MiB/s)"
        )
    print(
        f"throughput ratio bridge/nginx: {ratio:.2f}x (goal >= 0.7x: "
        f"{'met' if ratio >= 0.7 else 'NOT met'})"
    )
    print(
        f"bridge RSS, gunicorn worker alone: {mib(worker_at_rest)} at rest, "
        f"peak {mib(rss.worker_peak)} ({rss.worker_peak / 1e6:.1f} MB; goal < 100 MB: "
        f"{'met' if rss.worker_peak < 100e6 else 'NOT met'})"
    )
    print(
        f"bridge RSS, arbiter + worker:      {mib(at_rest)} at rest, peak {mib(rss.peak)} "
        f"({rss.peak / 1e6:.1f} MB)"
    )
    print(f"bridge PSS at rest, arbiter + worker (shared pages counted once): {mib(pss_at_rest)}")


if __name__ == "__main__":
    main()
