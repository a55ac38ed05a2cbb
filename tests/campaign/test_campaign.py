"""One judge and one walk, tested at random (seeded, so every run is the same).

- Damage: a clean job's output gets 1-3 random damages to any of its files
  (deleted, truncated, grown, a byte flipped, renamed, swapped with a
  neighbour, replaced by a directory, a symlink retargeted); then
  `verify --deep` must see every change, a re-run with `--deep` must exit 0,
  and the output must be the clean run's again, byte for byte (files
  renamed away stay as foreign files; energon's `index.sqlite` is compared
  by `verify`, its page order depends on commit order).
- Modes: the same hostile shards in extract mode and in index mode must give
  the trainer the same samples: each image's bytes and caption, by name.

Left out by design: a directory put where a file of `data/` was (the re-run
refuses it as `tar xf` does, `directory_in_the_way`, and names it in the
report), and edits of energon's `dataset.yaml` / `sample_loader.py` (the
user's to edit, energon's convention).

SHARDPREP_CAMPAIGN_TRIALS sets the damage trials per case (default 12),
SHARDPREP_CAMPAIGN_SEEDS the shard sets of the modes test (default 20),
SHARDPREP_CAMPAIGN_SEED the first seed (default 1000: what CI runs).
"""

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hostile_shards import make_input

REPO = Path(__file__).resolve().parents[2]
TRIALS = int(os.environ.get("SHARDPREP_CAMPAIGN_TRIALS", "12"))
SEEDS = int(os.environ.get("SHARDPREP_CAMPAIGN_SEEDS", "20"))
FIRST_SEED = int(os.environ.get("SHARDPREP_CAMPAIGN_SEED", "1000"))
USER_EDITABLE = ("dataset.yaml", "sample_loader.py")


@pytest.fixture(scope="module")
def shardprep():
    p = Path(os.environ.get("SHARDPREP_BIN") or REPO / "target/release/shardprep")
    if not p.is_file():
        pytest.fail(f"shardprep binary not found at {p}: cargo build --release or set SHARDPREP_BIN", pytrace=False)
    return str(p)


def run(binary, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True)


def snapshot(out: Path):
    """Every file of `out` a clean run must reproduce, by relative path."""
    snap = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        volatile = rel in ("report.json", "report.html", ".shardprep/lock") or rel.startswith(".shardprep/tmp/")
        if volatile or rel.endswith((".manifest.json", "index.sqlite")) or rel.endswith(".moved"):
            continue
        if p.is_symlink():
            snap[rel] = b"link:" + os.readlink(p).encode()
        elif p.is_file():
            snap[rel] = p.read_bytes()
    return snap


def damage_link(p: Path, rng):
    kind = rng.choice(["link_delete", "link_retarget", "link_to_file"])
    target = os.readlink(p)
    p.unlink()
    if kind == "link_retarget":
        p.symlink_to(target.replace("000000", "000001") if "000000" in target else target.replace("000001", "000000"))
    elif kind == "link_to_file":
        p.write_bytes(b"not a tar")
    return kind


def damage_file(out: Path, p: Path, rng):
    kinds = ["delete", "trunc_half", "trunc0", "flip", "append", "rename", "swap", "dir"]
    if p.relative_to(out).parts[0] == "data":
        kinds.remove("dir")  # refused by design, see the module's doc
    kind = rng.choice(kinds)
    size = p.stat().st_size
    if kind == "flip" and size == 0:
        kind = "append"
    if kind == "delete":
        p.unlink()
    elif kind in ("trunc_half", "trunc0"):
        os.truncate(p, size // 2 if kind == "trunc_half" else 0)
    elif kind == "flip":
        b = bytearray(p.read_bytes())
        b[rng.randrange(size)] ^= 0x20
        p.write_bytes(bytes(b))
    elif kind == "append":
        with open(p, "ab") as f:
            f.write(b"\nxx")
    elif kind == "rename":
        p.rename(p.with_name(p.name + ".moved"))
    elif kind == "dir":
        p.unlink()
        (p / "junk").mkdir(parents=True)
    elif kind == "swap":
        others = [q for q in p.parent.iterdir() if q != p and q.is_file() and not q.is_symlink() and q.name not in USER_EDITABLE]
        if not others:
            p.unlink()
            return "delete"
        q = rng.choice(sorted(others))
        tmp = p.with_name(p.name + ".swap")
        p.rename(tmp)
        q.rename(p)
        tmp.rename(q)
    return kind


def damage(out: Path, rng):
    files = []
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if rel in (".shardprep/lock", "report.html") or rel.startswith(".shardprep/tmp/") or p.name in USER_EDITABLE:
            continue
        if p.is_symlink() or p.is_file():
            files.append(p)
    p = rng.choice(files)
    kind = damage_link(p, rng) if p.is_symlink() else damage_file(out, p, rng)
    return f"{kind} {p.relative_to(out)}"


CASES = {
    "extract": [],
    "extract, 3 damages at once": [],
    "extract --captions parquet": ["--captions", "parquet"],
    "extract --no-extract": ["--no-extract"],
    "index": ["--mode", "index"],
    "index, all four formats": ["--mode", "index", "--index-format", "webshart,energon,dali,wids"],
    "index, all four formats, 3 damages at once": ["--mode", "index", "--index-format", "webshart,energon,dali,wids"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_random_damage_is_seen_by_verify_and_repaired_by_a_rerun(case, shardprep, tmp_path):
    seed = list(CASES).index(case) + FIRST_SEED
    rng = random.Random(seed)
    inp, clean, out = tmp_path / "in", tmp_path / "clean", tmp_path / "out"
    make_input(str(inp), rng)
    job = ["run", "--input", str(inp), "--output", str(out), "--workers", "2", "--deep", *CASES[case]]
    first = run(shardprep, *job)
    assert first.returncode == 0, first.stderr[-3000:]
    assert run(shardprep, "verify", "--deep", str(out)).returncode == 0
    ref = snapshot(out)
    shutil.copytree(out, clean, symlinks=True)
    failures = []
    for trial in range(TRIALS):
        shutil.rmtree(out)
        shutil.copytree(clean, out, symlinks=True)
        what = "; ".join(damage(out, rng) for _ in range(3 if "3 damages" in case else 1))
        changed = snapshot(out) != ref
        seen = run(shardprep, "verify", "--deep", str(out)).returncode != 0
        again = run(shardprep, *job)
        after = run(shardprep, "verify", "--deep", str(out))
        got = snapshot(out)
        wrong = [
            changed and not seen and "verify --deep passed the damage",
            again.returncode != 0 and f"the re-run exited {again.returncode}: {again.stderr[-800:]}",
            after.returncode != 0 and f"verify --deep after the re-run: {after.stdout[-800:]}",
            got != ref and f"differs from the clean run: {sorted(k for k in set(got) | set(ref) if got.get(k) != ref.get(k))[:5]}",
        ]
        wrong = [w for w in wrong if w]
        if wrong:
            failures.append(f"trial {trial} ({what}): " + " | ".join(wrong))
    assert not failures, f"seed {seed}:\n" + "\n".join(failures)


def extract_samples(out: Path):
    samples = {}
    for r in pq.read_table(out / "dalle3.parquet").to_pylist():
        image = out / "data" / r["filename"]
        if image.is_file():
            samples[r["filename"]] = (r["caption"], image.read_bytes())
    return samples


def index_samples(out: Path, inp: Path):
    samples = {}
    for index in sorted((out / "index").iterdir()):
        doc = json.loads(index.read_text())
        tar = (inp / doc["path"]).read_bytes()
        for name, e in doc["files"].items():
            if "captions" in e:
                # A member's "./" is kept in the index (the tar's name); data/ has no "./".
                key = name[2:] if name.startswith("./") else name
                samples[key] = (e["captions"], tar[e["offset"]:e["offset"] + e["length"]])
    return samples


def test_both_modes_give_the_same_samples_from_hostile_shards(shardprep, tmp_path):
    failures = []
    for seed in range(FIRST_SEED + 1000, FIRST_SEED + 1000 + SEEDS):
        inp = tmp_path / str(seed) / "in"
        make_input(str(inp), random.Random(seed))
        outs = {}
        for mode in ("extract", "index"):
            outs[mode] = tmp_path / str(seed) / mode
            r = run(shardprep, "run", "--input", str(inp), "--output", str(outs[mode]), "--workers", "2", "--mode", mode)
            assert r.returncode == 0, f"seed {seed}, {mode}: {r.stderr[-2000:]}"
        e, i = extract_samples(outs["extract"]), index_samples(outs["index"], inp)
        # A name in two shards: data/ holds the later one, whose index entry comes last.
        # A JSON a later shard's file replaced makes no row in extract mode (the seed's
        # compile.py never sees it) while the earlier tar still holds its sample in index
        # mode: the one difference the layouts make, allowed only for those JSONs.
        # A sample split across shards (an earlier shard's JSON, a later shard's image, or the
        # reverse) is one sample of data/ in extract mode, while each tar holds its own part in
        # index mode: allowed only for the rows the extract report lists as paired.
        report = json.loads((outs["extract"] / "report.json").read_text())
        replaced = {r["json"] for r in report["json_replaced_listed"]}
        assert len(report["json_replaced_listed"]) == report["json_replaced"] or report["json_replaced"] > 20
        paired = set(report["rows_paired_listed"])
        assert len(paired) == report["rows_paired_across_shards"] or report["rows_paired_across_shards"] > 20

        def allowed(k):
            return k in paired or (k in i and k not in e and os.path.splitext(k)[0] + ".json" in replaced)

        differ = sorted(k for k in set(e) | set(i) if e.get(k) != i.get(k) and not allowed(k))
        if differ:
            failures.append(f"seed {seed}: {[(k, k in e, k in i) for k in differ[:6]]}")
        shutil.rmtree(tmp_path / str(seed))
    assert not failures, "\n".join(failures)


# Known gap (2026-12-08, left open): with --on-bad-image skip, a row its worker left out for a
# bad image stays out when a later shard's good image of that name replaces the bad one in
# data/ (`tar xf` would pair that JSON with the good image); `verify --deep`, which checks every
# JSON of data/ against its image, then reports their size mismatch as unknown to the report.
SKIP_GAP = pytest.mark.xfail(strict=True, reason="a row skipped for a bad image stays out when a later shard replaces the image")


@pytest.mark.parametrize("flags", [
    ["--dims", "image"],
    pytest.param(["--on-bad-image", "skip"], marks=SKIP_GAP),
    ["--check-images", "decode"],
    pytest.param(["--check-images", "decode", "--on-bad-image", "skip", "--dims", "image"], marks=SKIP_GAP),
    ["--captions", "parquet", "--dims", "image"],
], ids=" ".join)
def test_a_clean_run_passes_verify_deep_under_every_image_check_setting(shardprep, tmp_path, flags):
    # "Verified" is never said over what `verify --deep` finds, whatever the image checks ask,
    # and a second run over a clean output is a no-op that exits 0.
    failures = []
    for seed in range(FIRST_SEED + 2000, FIRST_SEED + 2000 + max(1, SEEDS // 3)):
        inp, out = tmp_path / str(seed) / "in", tmp_path / str(seed) / "out"
        make_input(str(inp), random.Random(seed))
        job = ("run", "--input", str(inp), "--output", str(out), "--workers", "2", *flags)
        first = run(shardprep, *job)
        deep = run(shardprep, "verify", "--deep", str(out))
        again = run(shardprep, *job)
        if first.returncode or deep.returncode or again.returncode:
            said = [l for l in deep.stdout.splitlines() if not l.startswith("ok")][:4]
            failures.append(f"seed {seed}: run {first.returncode}, verify --deep {deep.returncode} {said}, "
                            f"re-run {again.returncode} {first.stderr[-300:]}")
        shutil.rmtree(tmp_path / str(seed))
    assert not failures, "\n".join(failures)
