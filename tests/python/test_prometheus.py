"""A real Prometheus scrapes a running shardprep job (issue 21, "Prometheus").

    python -m pytest -q tests/python/test_prometheus.py

Starts `shardprep coordinator --metrics-listen 127.0.0.1:PORT` and two
`shardprep worker`s on generated shards, and Debian's `prometheus` with a 1 s
scrape of that endpoint. While the job runs it fetches /metrics and checks
the page with `promtool check metrics`. The first worker holds a shard for a
few seconds (the `stall` hook) and the second starts only once Prometheus has
seen a shard leased: the job is graphed while it runs. When the
coordinator has exited it asks Prometheus' HTTP API (/api/v1/query) for the
last scraped values and compares them with report.json: shards by state, JSON
files, rows, bytes read, the verdict, and each worker's shards done.

Skipped, with the reason, when the binary has no `--metrics-listen` yet, or
when `prometheus`/`promtool` are missing and cannot be installed (as root,
the test runs `apt-get install -y prometheus`; CI runs as root).

The binary is $SHARDPREP_BIN (default: target/release/shardprep of this repo).
Every process the test starts is stopped when it ends. Loopback only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOKEN = "prometheus-test-token-5d1c"
SHARDS, SAMPLES = 4, 40
# The shard one worker keeps leased (so a scrape sees the job mid-way).
STALLED = "data-000001.tar"
STALL = "5s"
# Bounds of the waits (the test fails, with the logs, after them).
JOB_TIMEOUT_S = 120
TARGET_UP_TIMEOUT_S = 60


# --------------------------------------------------------------------------
# Prerequisites


def shardprep_bin() -> Path:
    raw = os.environ.get("SHARDPREP_BIN") or "target/release/shardprep"
    p = Path(raw)
    if not p.is_absolute():
        p = (REPO / p) if (REPO / p).exists() else Path.cwd() / p
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(
            f"shardprep binary not found at {p}: run `cargo build --release` or set SHARDPREP_BIN",
            pytrace=False,
        )
    return p


def require_metrics_flag(bin_path: Path) -> None:
    for sub in ("run", "coordinator"):
        out = subprocess.run([str(bin_path), sub, "--help"], capture_output=True, text=True, timeout=30)
        if "--metrics-listen" not in out.stdout:
            skip_or_fail(
                f"`shardprep {sub} --help` shows no --metrics-listen: this build serves no /metrics "
                "yet (issue 21), nothing for Prometheus to scrape"
            )


def skip_or_fail(why: str) -> None:
    """Skips, unless SHARDPREP_REQUIRE_PROMETHEUS=1 (CI): then a missing piece fails the test."""
    if os.environ.get("SHARDPREP_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(why)
    pytest.skip(why)


def prometheus_tools() -> tuple[str, str]:
    """Paths of prometheus and promtool, installing Debian's package if needed and possible."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        skip_or_fail("prometheus/promtool not found: install Debian's `prometheus` (apt-get install -y prometheus)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert r.returncode == 0, f"apt-get install -y prometheus failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    found = shutil.which("prometheus"), shutil.which("promtool")
    assert all(found), f"the prometheus package installed no prometheus/promtool on PATH: {found}"
    return found  # type: ignore[return-value]


# --------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    """The processes of the test, each logging to a file; all stopped at the end."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = self.root / f"{len(self.procs)}-{name}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SHARDPREP_")}
        clean.update(env or {})
        p = subprocess.Popen(
            argv, env=clean, stdin=subprocess.DEVNULL,
            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        )
        self.procs.append((name, p, log))
        return p

    def logs(self, tail: int = 40) -> str:
        parts = []
        for name, p, log in self.procs:
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"===== {name} (exit {p.poll()}) =====\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop_all(self) -> None:
        for _, p, _ in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, p, _ in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_until(predicate, timeout: float, what: str, procs: Procs, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"no {what} within {timeout}s (last error: {last!r})\n{procs.logs()}")


# --------------------------------------------------------------------------
# Prometheus


def scrape_config(metrics: str) -> str:
    return (
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: shardprep\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 900ms\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{metrics}']\n"
    )


def query(api: str, expr: str) -> list[dict]:
    """The result vector of an instant query (`[]` when empty)."""
    url = f"http://{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    return body["data"]["result"]


def scalar(api: str, expr: str) -> float | None:
    """The value of a query that gives one series, None when it gives none."""
    result = query(api, expr)
    assert len(result) <= 1, f"{expr} gave several series: {result}"
    return float(result[0]["value"][1]) if result else None


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read().decode()


# --------------------------------------------------------------------------
# The test


def test_prometheus_scrapes_a_running_job_and_ends_with_the_report(tmp_path):
    bin_path = shardprep_bin()
    require_metrics_flag(bin_path)
    prometheus, promtool = prometheus_tools()

    shards = tmp_path / "shards"
    out = tmp_path / "out"
    r = subprocess.run(
        [str(bin_path), "generate", "--output", str(shards), "--shards", str(SHARDS), "--samples", str(SAMPLES)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr

    grpc, metrics, api = (f"127.0.0.1:{free_port()}" for _ in range(3))
    procs = Procs(tmp_path)
    try:
        coord = procs.start(
            "coordinator",
            [str(bin_path), "coordinator", "--input", str(shards), "--output", str(out),
             "--listen", grpc, "--metrics-listen", metrics,
             "--heartbeat-interval", "200ms", "--lease-timeout", "10s"],
            {"SHARDPREP_TOKEN": TOKEN},
        )
        (tmp_path / "prometheus.yml").write_text(scrape_config(metrics))
        r = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool check config:\n{r.stdout}\n{r.stderr}"
        procs.start(
            "prometheus",
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={api}"],
        )
        # The coordinator waits for workers: the job does not move until
        # Prometheus scrapes it (a new target takes a few seconds to show up).
        wait_until(lambda: scalar(api, 'up{job="shardprep"}') == 1, TARGET_UP_TIMEOUT_S,
                   "scraped target (up == 1)", procs)
        total_before = scalar(api, 'sum(shardprep_shards{job="shardprep"})')
        assert total_before == SHARDS, f"shards before any worker: {total_before}\n{procs.logs()}"

        url = f"http://{grpc}"
        # One worker first, which holds a shard for seconds: Prometheus must
        # see the job mid-way (a shard leased) before the second one starts.
        workers = [procs.start(
            "w-stall", [str(bin_path), "worker", "--coordinator", url, "--worker-id", "w-stall",
                        "--fault", f"stall:{STALLED}:{STALL}"], {"SHARDPREP_TOKEN": TOKEN})]
        wait_until(lambda: (scalar(api, f'max(max_over_time(shardprep_shards{{job="shardprep",state="leased"}}[5m]))')
                            or 0) >= 1, JOB_TIMEOUT_S, "scrape that sees a shard leased", procs)
        workers.append(procs.start(
            "w-fast", [str(bin_path), "worker", "--coordinator", url, "--worker-id", "w-fast"],
            {"SHARDPREP_TOKEN": TOKEN}))
        # Until the coordinator exits: the last /metrics page, for promtool.
        pages = []

        def page_while_running():
            if coord.poll() is not None:
                return True
            try:
                pages[:] = [fetch(f"http://{metrics}/metrics")]
            except OSError:
                pass
            return False

        wait_until(page_while_running, JOB_TIMEOUT_S, "end of the coordinator", procs, interval=0.2)
        assert coord.returncode == 0, f"the job did not verify\n{procs.logs()}"
        for w in workers:
            w.wait(timeout=30)
            assert w.returncode == 0, procs.logs()
        assert pages, f"never fetched /metrics while the job ran\n{procs.logs()}"
        check = subprocess.run([promtool, "check", "metrics"], input=pages[-1],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, f"promtool check metrics:\n{check.stdout}{check.stderr}\n--- page ---\n{pages[-1]}"

        report = json.loads((out / "report.json").read_text())
        assert report["verdict"] == "ok", report
        check_scraped_values(api, report, procs)
    finally:
        procs.stop_all()


def check_scraped_values(api: str, report: dict, procs: Procs) -> None:
    """The last values Prometheus scraped equal report.json's; one scrape saw a shard leased."""
    sel = 'job="shardprep"'

    def last(metric: str, labels: str = "") -> float | None:
        inner = f"{metric}{{{sel}{',' + labels if labels else ''}}}"
        return scalar(api, f"sum(last_over_time({inner}[10m]))")

    totals = report["totals"]
    expected = {
        ('shardprep_shards', 'state="done"'): report["shards_done"],
        ('shardprep_shards', 'state="failed"'): report["shards_failed"],
        ('shardprep_shards', 'state="pending"'): 0,
        ('shardprep_shards', 'state="leased"'): 0,
        ('shardprep_json_files_total', ''): totals["json_files"],
        ('shardprep_rows_total', ''): report["rows"],
        ('shardprep_bytes_read_total', ''): totals["bytes_read"],
        ('shardprep_job_verdict', f'verdict="{report["verdict"]}"'): 1,
    }
    got = {k: last(*k) for k in expected}
    assert got == {k: float(v) for k, v in expected.items()}, (
        f"scraped (last values) != report.json:\n"
        + "\n".join(f"  {m}{{{lab}}}: scraped {got[(m, lab)]}, report {v}" for (m, lab), v in expected.items())
        + f"\n{procs.logs()}"
    )
    assert report["shards_done"] == SHARDS
    # Per worker: shards done as the report credits them.
    by_worker: dict[str, int] = {}
    for s in report["shards"]:
        by_worker[s["worker"]] = by_worker.get(s["worker"], 0) + 1
    for worker, n in by_worker.items():
        v = scalar(api, f'sum(last_over_time(shardprep_worker_shards_done_total{{{sel},worker="{worker}"}}[10m]))')
        assert v == n, f"worker {worker}: scraped {v} shards done, report {n}"
    # The silent-worker alert's input exists per worker.
    hb = query(api, f"last_over_time(shardprep_worker_last_heartbeat_seconds{{{sel}}}[10m])")
    assert {r["metric"].get("worker") for r in hb} >= set(by_worker), hb
