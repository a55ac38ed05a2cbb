"""report.html in a real browser (issue 29): Debian's headless Chromium, driven over the
DevTools protocol (`websocket-client`), opens the page from disk and the live page over HTTP.

    SHARDPREP_BIN=target/release/shardprep python -m pytest -q tests/page

For each page it checks: no console message of level error, no uncaught exception, no
network request other than the page itself (data: URIs aside), and every number the page
marks with `data-k` (its path in report.json) equals report.json. The live page (`/` of
`--metrics-listen`) is opened while the job waits for its worker (running, shards pending;
its numbers equal the job's `shardprep status --json`), then, once the job has ended, fetched
again and compared with the report.json it wrote.

SHARDPREP_SCREENSHOT=FILE writes a PNG of the page from disk (docs/report-page.png).
Chromium: $SHARDPREP_CHROMIUM, else `chromium` on PATH. Without it the test skips, unless
SHARDPREP_REQUIRE_CHROMIUM=1 (CI installs it): then it fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOKEN = "page-test-token-29"
LOAD_TIMEOUT_S = 60

# The marked numbers, as the page shows them (run inside the page).
COLLECT_JS = """JSON.stringify(Array.from(document.querySelectorAll('[data-k]')).map(e => ({
  k: e.dataset.k, agg: e.dataset.agg || null, scale: e.dataset.scale || null,
  digits: e.dataset.digits || null, text: e.textContent})))"""


def shardprep_bin() -> Path:
    raw = os.environ.get("SHARDPREP_BIN") or "target/release/shardprep"
    p = Path(raw) if Path(raw).is_absolute() else REPO / raw
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"shardprep binary not found at {p}: cargo build --release, or set SHARDPREP_BIN")
    return p


def chromium() -> str:
    exe = os.environ.get("SHARDPREP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        why = "no chromium (apt-get install chromium): the page cannot be checked in a browser"
        if os.environ.get("SHARDPREP_REQUIRE_CHROMIUM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def at_path(v, path: str):
    for part in path.split("."):
        v = v[int(part)] if isinstance(v, list) else v[part]
    return v


def assert_numbers_match(marked: list, report: dict, where: str) -> None:
    assert len(marked) > 20, f"{where}: too few marked numbers: {marked}"
    for m in marked:
        v = at_path(report, m["k"])
        if m["k"] == "verdict":
            assert m["text"] == str(v).upper(), f"{where}: verdict {m['text']} vs {v}"
            continue
        want = sum(v.values()) if m["agg"] == "sum" else v
        digits = int(m["digits"] or 0)
        expected = round(float(want) * float(m["scale"] or 1), digits)
        shown = float(m["text"].replace(",", ""))
        assert abs(shown - expected) <= 10 ** -digits / 2 + 1e-9, (
            f"{where}: {m['k']} shows {m['text']}, report.json has {want}")


class Browser:
    """One headless Chromium and a DevTools connection to its page."""

    def __init__(self, exe: str, work: Path):
        import websocket  # websocket-client

        port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--remote-debugging-port={port}", f"--user-data-dir={work / 'chromium-profile'}",
             "--window-size=1100,1400", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(work / "chromium.log", "wb"),
            # Its own process group: close() ends its helper processes too.
            start_new_session=True)
        deadline = time.time() + LOAD_TIMEOUT_S
        while True:
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration, ValueError):
                if time.time() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"chromium did not start: {(work / 'chromium.log').read_text()[-2000:]}")
                time.sleep(0.2)
        self.ws = websocket.create_connection(url, timeout=LOAD_TIMEOUT_S, suppress_origin=True)
        self.next_id = 0
        self.events: list = []
        for m in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
            self.call(m)

    def call(self, method: str, **params):
        self.next_id += 1
        me = self.next_id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == me:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def open(self, url: str) -> dict:
        """Loads `url`; returns the console errors, other requests and the marked numbers."""
        self.events = []
        self.call("Page.navigate", url=url)
        deadline = time.time() + LOAD_TIMEOUT_S
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            assert time.time() < deadline, f"{url} did not load"
            self.events.append(json.loads(self.ws.recv()))
        self.call("Runtime.evaluate", expression="1")  # drain what came with the load
        errors = [e for e in self.events
                  if e.get("method") == "Runtime.exceptionThrown"
                  or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        requests = [e["params"]["request"]["url"] for e in self.events
                    if e.get("method") == "Network.requestWillBeSent"]
        others = [u for u in requests if u != url and not u.startswith("data:")]
        marked = json.loads(self.call("Runtime.evaluate", expression=COLLECT_JS, returnByValue=True)["result"]["value"])
        return {"errors": errors, "others": others, "requests": requests, "marked": marked}

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self):
        """Ends Chromium and every helper process it started, and waits until they are gone:
        a helper still writing its profile made the temporary folder's removal fail."""
        try:
            try:
                self.call("Browser.close")
            except Exception:
                pass
            self.ws.close()
        finally:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.time() + 10
            while group_alive(self.proc.pid) and time.time() < deadline:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.wait(timeout=10)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group `pgid` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.fixture
def work():
    with tempfile.TemporaryDirectory(prefix="shardprep-page-") as d:
        yield Path(d)


def generate(bin_path: Path, shards: Path) -> None:
    subprocess.run([str(bin_path), "generate", "--output", str(shards), "--shards", "3", "--samples", "40",
                    "--lying-dims-every", "5", "--truncated-every", "9", "--no-width-every", "7"],
                   check=True, capture_output=True)


def test_the_page_from_disk_loads_nothing_and_says_what_report_json_says(work):
    exe, bin_path = chromium(), shardprep_bin()
    generate(bin_path, work / "in")
    out = work / "out"
    subprocess.run([str(bin_path), "run", "--input", str(work / "in"), "--output", str(out), "--workers", "2",
                    "--check-images", "decode", "--progress", "never"], check=True, capture_output=True)
    report = json.loads((out / "report.json").read_text())
    browser = Browser(exe, work)
    try:
        url = (out / "report.html").as_uri()
        seen = browser.open(url)
        assert seen["errors"] == [], seen["errors"]
        assert seen["others"] == [], f"the page fetched {seen['others']}"
        assert [u for u in seen["requests"] if not u.startswith("data:")] == [url]
        assert_numbers_match(seen["marked"], report, "report.html")
        if os.environ.get("SHARDPREP_SCREENSHOT"):
            browser.screenshot(Path(os.environ["SHARDPREP_SCREENSHOT"]))
    finally:
        browser.close()


def test_the_live_page_of_a_running_job_then_of_the_finished_one(work):
    exe, bin_path = chromium(), shardprep_bin()
    generate(bin_path, work / "in")
    out, token = work / "out", work / "token"
    token.write_text(TOKEN)
    grpc, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDPREP_")}
    coord = subprocess.Popen(
        [str(bin_path), "coordinator", "--input", str(work / "in"), "--output", str(out),
         "--listen", f"127.0.0.1:{grpc}", "--metrics-listen", f"127.0.0.1:{http}", "--token-file", str(token)],
        stdout=subprocess.DEVNULL, stderr=open(work / "coordinator.log", "wb"), env=env)
    worker = None
    browser = Browser(exe, work)
    try:
        url = f"http://127.0.0.1:{http}/"
        deadline = time.time() + LOAD_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                assert time.time() < deadline and coord.poll() is None, (work / "coordinator.log").read_text()
                time.sleep(0.2)
        # Running, no worker yet: every shard pending.
        seen = browser.open(url)
        assert seen["errors"] == [], seen["errors"]
        assert seen["others"] == [], f"the live page fetched {seen['others']}"
        marked = {m["k"]: m["text"] for m in seen["marked"]}
        assert marked["verdict"] == "RUNNING"
        status = json.loads(subprocess.run(
            [str(bin_path), "status", "--coordinator", f"http://127.0.0.1:{grpc}", "--token-file", str(token), "--json"],
            check=True, capture_output=True, env=env).stdout)
        assert int(marked["shards_total"]) == status["shards_total"] == 3
        assert int(marked["shards_done"]) == status["shards_done"] == 0
        html = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'http-equiv="refresh"' in html, "the live page reloads itself"
        # A worker does the job; the coordinator serves the finished page while it lingers.
        worker = subprocess.Popen(
            [str(bin_path), "worker", "--coordinator", f"http://127.0.0.1:{grpc}", "--token-file", str(token)],
            stdout=subprocess.DEVNULL, stderr=open(work / "worker.log", "wb"), env=env)
        while 'http-equiv="refresh"' in urllib.request.urlopen(url, timeout=10).read().decode():
            assert time.time() < deadline + 60 and coord.poll() is None, (work / "coordinator.log").read_text()
            time.sleep(0.1)
        report = json.loads((out / "report.json").read_text())
        seen = browser.open(url)
        assert seen["errors"] == [] and seen["others"] == [], seen
        assert_numbers_match(seen["marked"], report, "live page of the finished job")
        assert coord.wait(timeout=60) == 0, (work / "coordinator.log").read_text()
    finally:
        browser.close()
        for p in (worker, coord):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
