"""The index loads through the real webshart 0.6.0 with the right bytes,
captions and sizes; a cut shard gets no index; and the checker catches a
wrong offset or caption (so a pass means something).

Run: tests/webshart/setup.sh && .venv-webshart/bin/pytest tests/webshart

The indexer is `SHARDPREP_INDEX_CMD` (a command with `{input}` and
`{output}`; the index is read from `{output}/index`), by default the
`index_dir` example of the worker crate (built with cargo when missing).
Once the CLI has it: SHARDPREP_INDEX_CMD='target/release/shardprep run
--input {input} --output {output} --mode index'.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import webshart

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def indexer_cmd():
    cmd = os.environ.get("SHARDPREP_INDEX_CMD")
    if cmd:
        return cmd
    exe = REPO / "target" / "debug" / "examples" / "index_dir"
    if not exe.exists():
        subprocess.run(["cargo", "build", "-q", "-p", "shardprep-worker", "--example", "index_dir"],
                       cwd=REPO, check=True)
    return f"{exe} {{input}} {{output}}"


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
    cmd = indexer_cmd().format(input=shlex.quote(str(tars)), output=shlex.quote(str(out)))
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=REPO)
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
