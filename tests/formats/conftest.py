"""Shared fixture of the format tests: shards the other tests never saw
(tests/webshart/make_shards.py with another seed and size: PNG/JPG/JPEG,
PAX long and non-ASCII names, JSONs without width, a GNU-format shard, a
shard cut off mid-member), indexed by the real CLI with every format, and
the expectation computed from the tars by Python's tarfile and the parquet.

wids imports `torch.distributed` at import time and uses it only for its
distributed samplers; without torch installed a stub module stands in, so
the CI venv stays small (the opt-in energon venv has the real torch).
"""

import io
import json
import os
import random
import shlex
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FORMATS = "webshart,energon,dali,wids"
IMAGE_EXTS = {"png", "jpg", "jpeg", "JPG"}
PLAIN = "data-000004.tar"

try:
    import torch.distributed  # noqa: F401
except ImportError:
    import typing

    T = typing.TypeVar("T")
    torch = types.ModuleType("torch")
    torch.distributed = types.ModuleType("torch.distributed")
    torch.distributed.is_initialized = lambda: False
    torch.utils = types.ModuleType("torch.utils")
    torch.utils.data = types.ModuleType("torch.utils.data")
    torch.utils.data.Dataset = types.new_class("Dataset", (typing.Generic[T],))
    torch.utils.data.Sampler = types.new_class("Sampler", (typing.Generic[T],))
    for name, mod in [("torch", torch), ("torch.distributed", torch.distributed),
                      ("torch.utils", torch.utils), ("torch.utils.data", torch.utils.data)]:
        sys.modules[name] = mod


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


def split_key(name):
    """Energon's split_name_re for the names these shards have."""
    last = name.rfind("/") + 1
    dot = name.find(".", last)
    return name[:dot], name[dot + 1:]


def tar_samples(path):
    """The tar's samples in order: key -> {ext: bytes}, as the readers group them."""
    out = []
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isreg() or "." not in m.name.rsplit("/", 1)[-1]:
                continue
            key, ext = split_key(m.name)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = tar.extractfile(m).read()
    return out


def caption_of(meta):
    c = meta.get("short_caption")
    return c if isinstance(c, str) else None


class Indexed:
    def __init__(self, tars, out, report):
        self.tars, self.out, self.report = tars, out, report
        self.done = [s["name"] for s in report["shards"] if s["state"] == "done"]
        table = pq.read_table(out / f"{report['dataset_id']}.parquet").to_pylist()
        self.rows = {r["filename"]: r for r in table}
        # key -> (shard, {ext: bytes}) of every sample with a parquet row.
        self.kept = {}
        self.all = {}
        for shard in self.done:
            for key, parts in tar_samples(tars / shard):
                self.all.setdefault(key, []).append((shard, parts))
                if any(f"{key}.{e}" in self.rows for e in parts if e in IMAGE_EXTS):
                    self.kept[key] = (shard, parts)

    def image_of(self, parts):
        return next((e, parts[e]) for e in parts if e in IMAGE_EXTS)


def assert_not_named(out, shard):
    """No file of the formats is named after `shard`, and none mentions it."""
    for f in out.rglob("*"):
        if ".shardprep" in f.parts or f.name in ("report.json",) or f.is_dir():
            continue
        assert shard not in f.name, f
        if f.suffix in (".json", ".yaml", ".idx") and "index" not in f.parts:
            assert shard not in f.read_text(errors="replace"), f


def write_plain_shard(path, rng, n):
    """A ustar shard with short names (wids reads only such tars right): PNG/JPG/JPEG,
    JSONs without width, images without a JSON."""
    sys.path.insert(0, str(REPO / "tests/webshart"))
    from make_shards import add, sample

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(n):
            key, ext = f"e{i:05d}", ["png", "jpg", "jpeg"][i % 3]
            img, meta = sample(rng, key, ext, with_width=(i % 4 != 1))
            add(tar, f"{key}.{ext}", img)
            if i % 9 != 4:
                add(tar, f"{key}.json", meta)


@pytest.fixture(scope="session")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    tars, out = root / "tars", root / "out"
    subprocess.run([sys.executable, str(REPO / "tests/webshart/make_shards.py"), str(tars),
                    "--seed", "11", "--samples", "33"], check=True)
    write_plain_shard(tars / PLAIN, random.Random(5), 29)
    cmd = [str(shardprep_bin()), "run", "--input", str(tars), "--output", str(out), "--mode", "index",
           "--index-format", FORMATS, "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDPREP_")}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    # The cut shard fails the job: every other shard is indexed, and the report names it.
    assert p.returncode == 1, f"{shlex.join(cmd)}\n{p.stdout}\n{p.stderr}"
    report = json.loads((out / "report.json").read_text())
    failed = [f["name"] for f in report["failures"]]
    assert failed == ["data-000003.tar"], report["failures"]
    assert report["index_formats"]["not_indexed"] == failed, report["index_formats"]
    bad = [p for p in report["problems"] if "index-format" in p]
    assert not bad, bad
    assert_not_named(out, "data-000003")
    # The parquet waits for every shard: drop the cut shard and run again (the committed
    # shards are kept; the dataset-wide files are rebuilt from their pieces).
    (tars / "data-000003.tar").unlink()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, f"{shlex.join(cmd)}\n{p.stdout}\n{p.stderr}"
    report = json.loads((out / "report.json").read_text())
    assert report["shards_recovered"] == len(report["shards"]), report["shards_recovered"]
    assert report["index_formats"]["not_indexed"] == [], report["index_formats"]
    ix = Indexed(tars, out, report)
    assert len(ix.kept) > 20 and len(ix.kept) < sum(len(v) for v in ix.all.values()), "the shards must have samples left out"
    return ix
