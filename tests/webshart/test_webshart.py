"""The index loads through the real webshart 0.6.0 with the right bytes,
captions and sizes; a cut shard gets no index; and the checker catches a
wrong offset or caption (so a pass means something).

Run: tests/webshart/setup.sh && SHARDPREP_BIN=$PWD/target/release/shardprep \
     .venv-webshart/bin/python -m pytest -q tests/webshart

The indexer is the real CLI: `$SHARDPREP_BIN run --input {input} --output
{output} --mode index` (default binary: target/release/shardprep, else
target/debug/shardprep, built with cargo when neither exists).
`SHARDPREP_INDEX_CMD` (a command with `{input}` and `{output}`; the index is
read from `{output}/index`) replaces it, e.g. to check another indexer.
Without webshart (no Python 3.12 venv) the module is skipped.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

webshart = pytest.importorskip("webshart", reason="needs the webshart venv: run tests/webshart/setup.sh")
pytest.importorskip("PIL", reason="needs the webshart venv: run tests/webshart/setup.sh")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def shardprep_bin():
    given = os.environ.get("SHARDPREP_BIN")
    if given:
        return Path(given)
    for profile in ("release", "debug"):
        exe = REPO / "target" / profile / "shardprep"
        if exe.exists():
            return exe
    subprocess.run(["cargo", "build", "-q", "--bin", "shardprep"], cwd=REPO, check=True)
    return REPO / "target" / "debug" / "shardprep"


def indexer_cmd():
    """The indexing command and whether it is shardprep's CLI (which writes a report)."""
    cmd = os.environ.get("SHARDPREP_INDEX_CMD")
    if cmd:
        return cmd, False
    exe = shlex.quote(str(shardprep_bin()))
    return f"{exe} run --input {{input}} --output {{output}} --mode index --workers 2", True


def run_checker(index, tars):
    p = subprocess.run([sys.executable, str(HERE / "check_index.py"), "--index", str(index), "--tars", str(tars)],
                       capture_output=True, text=True)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    return p.returncode, summary, p.stdout + p.stderr


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    tars, out = root / "tars", root / "out"
    subprocess.run([sys.executable, str(HERE / "make_shards.py"), str(tars), "--seed", "7"], check=True)
    template, is_cli = indexer_cmd()
    cmd = template.format(input=shlex.quote(str(tars)), output=shlex.quote(str(out)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDPREP_")}
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=REPO, env=env)
    if is_cli:
        # The cut shard fails the job (exit 1): everything else is indexed, and the report says which.
        assert p.returncode == 1, f"{cmd}\n{p.stdout}\n{p.stderr}"
        report = json.loads((out / "report.json").read_text())
        assert report["mode"] == "index" and report["verdict"] == "failed", report["problems"]
        assert [f["name"] for f in report["failures"]] == ["data-000003.tar"], report["failures"]
        assert "truncated" in report["failures"][0]["error"], report["failures"]
        entry = json.loads((out / "multidatabackend.json").read_text())[0]
        assert entry["type"] == "webshart" and entry["metadata"] == str(out / "index"), entry
        assert entry["source"] == str(tars), entry
    else:
        assert p.returncode == 0, f"{cmd}\n{p.stdout}\n{p.stderr}"
    return tars, out / "index"


def test_the_pinned_webshart_is_the_one_loaded():
    assert webshart.__version__ == "0.6.0"


def test_every_sample_loads_with_its_bytes_caption_and_size(indexed):
    tars, index = indexed
    rc, summary, output = run_checker(index, tars)
    assert rc == 0, output
    assert summary["shards"] == 3, output
    assert summary["samples"] > 90 and summary["files"] > 180, output


def test_a_cut_shard_gets_no_index_and_webshart_skips_it(indexed):
    tars, index = indexed
    assert (tars / "data-000003.tar").exists()
    assert not (index / "data-000003.json").exists()
    _, summary, output = run_checker(index, tars)
    assert summary["without_index"] == ["data-000003"], output


def test_indexes_are_written_for_shards_in_subfolders(indexed):
    _, index = indexed
    doc = json.loads((index / "sub" / "data-000002.json").read_text())
    assert doc["filesize"] > 0 and doc["files"]


def tampered_copy(index, tmp_path, change):
    copy = tmp_path / "index"
    for p in index.rglob("*.json"):
        dest = copy / p.relative_to(index)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    doc_path = copy / "data-000000.json"
    doc = json.loads(doc_path.read_text())
    name = next(n for n, e in sorted(doc["files"].items()) if "width" in e)
    change(doc["files"][name])
    doc_path.write_text(json.dumps(doc))
    return copy


def test_the_checker_catches_a_wrong_offset(indexed, tmp_path):
    tars, index = indexed
    bad = tampered_copy(index, tmp_path, lambda e: e.update(offset=e["offset"] + 1))
    rc, summary, output = run_checker(bad, tars)
    assert rc == 1 and summary["problems"] >= 1, output


def test_the_checker_catches_a_wrong_caption(indexed, tmp_path):
    tars, index = indexed
    bad = tampered_copy(index, tmp_path, lambda e: e.update(captions="something else"))
    rc, _, output = run_checker(bad, tars)
    assert rc == 1 and "caption" in output, output
