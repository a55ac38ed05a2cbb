"""DALI's and wids' own readers load the indexes of `--index-format` with
every sample's bytes and caption as the tar has them; the cut shard is in
no format; `shardprep verify` catches a damaged index (so a pass means
something). Run: bash tests/formats/setup.sh && .venv-formats/bin/python -m pytest -q tests/formats
"""

import json
import shutil
import subprocess

import pytest
import yaml

from conftest import IMAGE_EXTS, PLAIN, shardprep_bin

dali = pytest.importorskip("nvidia.dali", reason="needs the formats venv: run tests/formats/setup.sh")


def test_dali_reads_every_kept_sample_with_its_bytes(indexed):
    from nvidia.dali import fn, pipeline_def

    lists = json.loads((indexed.out / "dali" / "dali.json").read_text())
    assert len(lists["paths"]) == len(indexed.done)
    exts = ";".join(sorted(IMAGE_EXTS))

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        img, meta = fn.readers.webdataset(paths=lists["paths"], index_paths=lists["index_paths"],
                                          ext=[exts, "json"], missing_component_behavior="error",
                                          name="r")
        return img, meta

    p = pipe()
    p.build()
    n = p.epoch_size("r")
    assert n == len(indexed.kept)
    seen = {}
    for _ in range(n):
        img, meta = p.run()
        meta = bytes(meta.at(0))
        img = bytes(img.at(0))
        src = json.loads(meta)["image_name"]
        key = src.rsplit(".", 1)[0]
        shard, parts = indexed.kept[key]
        ext, want = indexed.image_of(parts)
        assert img == want, key
        assert meta == parts["json"], key
        assert json.loads(meta).get("short_caption") == json.loads(parts["json"]).get("short_caption")
        seen[key] = indexed.rows[f"{key}.{ext}"]["caption"]
    assert set(seen) == set(indexed.kept)


def test_wids_reads_every_sample_of_the_listed_shards(indexed, tmp_path):
    import wids

    desc = json.loads((indexed.out / "wids" / "wids.json").read_text())
    assert desc["__kind__"] == "wids-shard-index-v1"
    # The shards with PAX long names cut to one ustar name would read wrong in wids: left out, named.
    unreadable = indexed.report["index_formats"]["summary"]["wids_unreadable"]
    assert sorted(u.split(":")[0] for u in unreadable) == sorted(s for s in indexed.done if s != PLAIN)
    assert [s["url"] for s in desc["shardlist"]] == [str((indexed.tars / PLAIN).resolve())]
    ds = wids.ShardListDataset(str(indexed.out / "wids" / "wids.json"), cache_dir=str(tmp_path / "cache"),
                               transformations=[])
    # nsamples is wids' own count of each tar: every sample it finds is reachable, none past the end.
    for s in desc["shardlist"]:
        assert s["nsamples"] == wids.wids.compute_num_samples(s["url"]), s
    got = {}
    for i in range(len(ds)):
        sample = ds[i]
        got[sample["__key__"]] = {k[1:]: v.getvalue() for k, v in sample.items()
                                  if k.startswith(".") and hasattr(v, "getvalue")}
    # wids has no per-sample index: it yields every sample of the tar, with or without a row.
    everything = {k: v[0][1] for k, v in indexed.all.items() if v[0][0] == PLAIN}
    assert got == everything
    kept = {k for k, (s, _) in indexed.kept.items() if s == PLAIN}
    assert kept and kept < set(got)


def test_energon_layout_stays_inside_out(indexed):
    out = indexed.out
    meta = out / "energon" / ".nv-meta"
    info = json.loads((meta / ".info.json").read_text())
    assert list(info["shard_counts"]) == indexed.done
    for s in indexed.done:
        link = out / "energon" / s
        assert link.is_symlink() and link.resolve() == (indexed.tars / s).resolve()
        assert (out / "energon" / (s[:-4] + ".tar.idx")).is_file()
    # Nothing was written beside the input tars (the cut shard was removed for the second run).
    assert sorted(str(p.relative_to(indexed.tars)) for p in indexed.tars.rglob("*")) == sorted(
        ["data-000000.tar", "data-000001.tar", PLAIN, "sub", "sub/data-000002.tar"])


def test_verify_catches_a_moved_offset(indexed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(indexed.out, out, symlinks=True)
    # A moved output's DALI list names the old folder's .idx files: verify says so, a run repairs.
    moved = subprocess.run([str(shardprep_bin()), "verify", str(out)], capture_output=True, text=True)
    assert moved.returncode != 0 and "dali.json" in moved.stdout + moved.stderr, moved.stdout
    subprocess.run([str(shardprep_bin()), "run", "--input", str(indexed.tars), "--output", str(out),
                    "--mode", "index", "--index-format", "webshart,energon,dali,wids"],
                   check=True, capture_output=True)
    ok = subprocess.run([str(shardprep_bin()), "verify", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0 and "index-format" not in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    idx = next((out / "dali").glob("*.idx"))
    lines = idx.read_text().splitlines()
    parts = lines[1].split()
    parts[1] = str(int(parts[1]) + 512)
    lines[1] = " ".join(parts)
    idx.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([str(shardprep_bin()), "verify", str(out)], capture_output=True, text=True)
    assert bad.returncode != 0 and "index-format" in bad.stdout + bad.stderr, bad.stdout + bad.stderr


def tree(out, named=None):
    """Every file of the formats under OUT (symlinks by target), as bytes, with the
    folder the files name (`named`, OUT itself by default) written as OUT."""
    named = str(named or out).encode()
    files = {}
    for d in ("energon", "dali", "wids", "index"):
        for f in sorted((out / d).rglob("*")):
            rel = str(f.relative_to(out))
            if f.is_symlink():
                files[rel] = ("link", str(f.resolve()))
            elif f.name == "index.sqlite":
                files[rel] = ("rows", sqlite_rows(f))
            elif f.is_file() and f.name != "index.uuid":
                files[rel] = f.read_bytes().replace(named, b"OUT")
    return files


def sqlite_rows(path):
    """energon's tables, sorted (the file's bytes depend on the order shards committed)."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return tuple(
            tuple(sorted(db.execute(f"SELECT * FROM {table}").fetchall()))
            for table in ("samples", "sample_parts")
        )
    finally:
        db.close()


def test_a_rerun_repairs_what_verify_finds_in_any_format(indexed, tmp_path):
    """Damage each format's files (a shard's piece, the dataset-wide lists, energon's
    meta): verify fails, a re-run repairs, and the formats are byte for byte a clean run's."""
    out = tmp_path / "out"
    shutil.copytree(indexed.out, out, symlinks=True)
    clean = tree(out, named=indexed.out)
    shard = indexed.done[0][:-4]
    damage = [
        lambda: (out / "energon" / f"{shard}.tar.idx").write_bytes(b"\0" * 8),
        lambda: (out / "energon" / f"{shard}.tar").unlink(),
        lambda: (out / "dali" / f"{shard}.idx").unlink(),
        lambda: (out / "dali" / "dali.json").write_text('{"paths": []}'),
        lambda: (out / "wids" / "wids.json").unlink(),
        lambda: (out / "energon" / ".nv-meta" / ".info.json").write_text("{}"),
    ]
    bin_ = str(shardprep_bin())
    cmd = [bin_, "run", "--input", str(indexed.tars), "--output", str(out), "--mode", "index",
           "--index-format", "webshart,energon,dali,wids", "--workers", "2"]
    for i, hurt in enumerate(damage):
        hurt()
        bad = subprocess.run([bin_, "verify", str(out)], capture_output=True, text=True)
        assert bad.returncode != 0, f"damage {i} went unseen:\n{bad.stdout}{bad.stderr}"
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, f"damage {i}:\n{run.stdout}\n{run.stderr}"
        good = subprocess.run([bin_, "verify", str(out)], capture_output=True, text=True)
        assert good.returncode == 0, f"damage {i} not repaired:\n{good.stdout}{good.stderr}"
        assert tree(out) == clean, f"damage {i}: the repaired formats differ from a clean run's"


def test_every_format_keeps_the_samples_of_the_parquet_and_the_webshart_index(indexed):
    """The same samples in the parquet, webshart's index (entries with a caption), DALI's
    index and energon's (the sqlite `samples` table less split.yaml's exclusions)."""
    import sqlite3

    rows = {f.rsplit(".", 1)[0] for f in indexed.rows}
    webshart = set()
    for s in indexed.done:
        doc = json.loads((indexed.out / "index" / (s[:-4] + ".json")).read_text())
        webshart |= {k.rsplit(".", 1)[0] for k, e in doc["files"].items() if e.get("captions")}
    dali, dali_parts = set(), 0
    for idx in (indexed.out / "dali").rglob("*.idx"):
        for line in idx.read_text().splitlines()[1:]:
            f = line.split()
            dali |= {f[i + 3].rsplit(".", 1)[0] for i in range(0, len(f), 4)}
            dali_parts += len(f) // 4
    meta = indexed.out / "energon" / ".nv-meta"
    # shardprep writes index.sqlite without SQLite's engine: this SQLite reads it whole.
    db = sqlite3.connect(f"file:{meta / 'index.sqlite'}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    (parts,) = db.execute("SELECT COUNT(*) FROM sample_parts").fetchone()
    assert parts == dali_parts, (parts, dali_parts)
    energon = {(tar, key) for tar, key in db.execute(
        "SELECT tar_file_id, sample_key FROM samples")}
    names = json.loads((meta / ".info.json").read_text())["shard_counts"]
    split = yaml.safe_load((meta / "split.yaml").read_text())
    excluded = {tuple(e.rsplit("/", 1)) for e in split["exclude"]}
    tars = list(names)
    energon = {(tars[t], k) for t, k in energon} - excluded
    assert rows == set(indexed.kept) == webshart == dali, (len(rows), len(webshart), len(dali))
    assert {k for _, k in energon} == rows
    assert len(energon) == len(rows), "a key kept twice"
