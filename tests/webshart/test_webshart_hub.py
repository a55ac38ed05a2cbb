"""Index mode on a Hub folder (`hf://datasets/acme/mini/data`), loaded
through the real webshart 0.6.0 from the Hub source the entry names
(`source: acme/mini`, `subfolder: data`): every sample with the tar
member's bytes, its caption and size.

shardprep reads the fake Hub of `fake_hub.py` by `HF_ENDPOINT`; webshart,
which only knows https://huggingface.co, reaches the same fake Hub through a
CONNECT proxy and a test CA (`HTTPS_PROXY`, `SSL_CERT_FILE`). Needs the
webshart venv (tests/webshart/setup.sh) and the `openssl` command.

A Hub source differs from a local one: webshart lists every tar under the
subfolder without looking for its index, so a tar without one (a failed
shard) stops the loading; the last test pins that behaviour down.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

webshart = pytest.importorskip("webshart", reason="needs the webshart venv: run tests/webshart/setup.sh")
pytest.importorskip("PIL", reason="needs the webshart venv: run tests/webshart/setup.sh")
if shutil.which("openssl") is None:
    pytest.skip("needs the openssl command (test CA for the fake huggingface.co)", allow_module_level=True)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fake_hub  # noqa: E402
from test_webshart import REPO, shardprep_bin  # noqa: E402

REPO_ID = "acme/mini"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    repo = root / "repo"
    subprocess.run([sys.executable, str(HERE / "make_shards.py"), str(repo / "data"), "--seed", "11"], check=True)
    cut = repo / "data" / "data-000003.tar"
    cut.rename(root / "cut.tar")
    server = fake_hub.Hub(repo, REPO_ID)
    plain = server.serve()
    ca, cert, key = fake_hub.make_certs(root / "certs")
    proxy = fake_hub.ConnectProxy(server.serve((cert, key)))
    yield {"root": root, "repo": repo, "server": server, "plain": plain, "proxy": proxy, "ca": ca,
           "cut": root / "cut.tar"}
    proxy.close()
    server.close()


def index_hub(hub, out):
    exe = str(shardprep_bin())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDPREP_") and k != "HF_TOKEN"}
    env.update({"HF_ENDPOINT": f"http://127.0.0.1:{hub['plain']}", "NO_PROXY": "127.0.0.1,localhost"})
    cmd = [exe, "run", "--input", f"hf://datasets/{REPO_ID}/data", "--output", str(out), "--mode", "index",
           "--workers", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env), shlex.join(cmd)


def check(hub, index, entry):
    cmd = [sys.executable, str(HERE / "check_index.py"), "--index", str(index), "--tars", str(hub["repo"]),
           "--hub", entry["source"], "--subfolder", entry["subfolder"]]
    p = subprocess.run(cmd, capture_output=True, text=True, env=fake_hub.webshart_env(hub["proxy"].port, hub["ca"]))
    return p


@pytest.fixture(scope="module")
def indexed(hub):
    out = hub["root"] / "out"
    p, cmd = index_hub(hub, out)
    assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
    return out


def test_the_entry_names_the_repository_and_the_index_lies_at_the_repo_paths(indexed):
    entry = json.loads((indexed / "multidatabackend.json").read_text())[0]
    assert entry["type"] == "webshart" and entry["source"] == REPO_ID and entry["subfolder"] == "data", entry
    assert entry["metadata"] == str(indexed / "index"), entry
    got = sorted(str(p.relative_to(indexed / "index")) for p in (indexed / "index").rglob("*.json"))
    assert got == ["data/data-000000.json", "data/data-000001.json", "data/sub/data-000002.json"], got


def test_webshart_loads_every_sample_from_the_hub_with_its_bytes_caption_and_size(hub, indexed):
    entry = json.loads((indexed / "multidatabackend.json").read_text())[0]
    p = check(hub, indexed / "index", entry)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["shards"] == 3 and summary["without_index"] == [], p.stdout
    assert summary["samples"] > 70 and summary["problems"] == 0, p.stdout
    assert set(hub["proxy"].hosts) == {"huggingface.co:443"}, hub["proxy"].hosts


def test_a_hub_shard_without_an_index_stops_webshart(hub, indexed, tmp_path):
    """Pins down webshart 0.6.0's Hub discovery (documented in the README):
    the cut shard is listed although it has no index, and loading fails."""
    target = hub["repo"] / "data" / "data-000003.tar"
    shutil.copy(hub["cut"], target)
    try:
        out = tmp_path / "out"
        p, cmd = index_hub(hub, out)
        assert p.returncode == 1, f"{cmd}\n{p.stdout}\n{p.stderr}"
        report = json.loads((out / "report.json").read_text())
        assert [f["name"] for f in report["failures"]] == ["data/data-000003.tar"], report["failures"]
        assert not (out / "index" / "data" / "data-000003.json").exists()
        entry = json.loads((out / "multidatabackend.json").read_text())[0]
        p = check(hub, out / "index", entry)
        assert p.returncode != 0, p.stdout + p.stderr
    finally:
        target.unlink()
