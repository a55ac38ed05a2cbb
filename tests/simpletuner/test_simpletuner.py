"""The real SimpleTuner accepts what shardprep writes, in every mode.

Opt-in (the venv is several GB): run `tests/simpletuner/setup.sh`, then

    SHARDPREP_SIMPLETUNER=1 SHARDPREP_BIN=target/release/shardprep \\
        .venv-simpletuner/bin/python -m pytest -q tests/simpletuner

Each test generates fresh shards with `shardprep generate` (real PNG/JPEG images, some JSONs
without `width`, some images under SimpleTuner's `minimum_image_size`), prepares them with
`shardprep run` in one mode, and runs `check_output.py` (SimpleTuner's own
`configure_multi_databackend`, see there for the few stubs: model weights, VAE, text
encoders). The expected numbers come from reading the tars here, not from shardprep: every
image is discovered; an image whose JSON lacks width or height has no parquet row
(`metadata_missing`); one whose JSON area is under the entry's `minimum_image_size`
megapixels is `too_small`; the others are accepted, each with the caption of its parquet row,
which is the JSON's field. The `--mode index` tests run SimpleTuner's webshart backend on the
`type: webshart` entry instead (see `index_expected`: the same images, bucketed by their real
size), and one test runs both modes on the same shards and compares what the trainer took.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHARDS, SAMPLES = 3, 40
SEED = int(os.environ.get("SHARDPREP_SIMPLETUNER_SEED", "20261201"))
IMAGE_EXTS = (".png", ".jpg", ".jpeg")

pytestmark = pytest.mark.skipif(
    os.environ.get("SHARDPREP_SIMPLETUNER") != "1",
    reason="real-SimpleTuner tests are opt-in: run tests/simpletuner/setup.sh, set SHARDPREP_SIMPLETUNER=1",
)


def shardprep_bin() -> Path:
    p = Path(os.environ.get("SHARDPREP_BIN") or REPO / "target/release/shardprep")
    if not p.is_absolute():
        p = REPO / p
    if not os.access(p, os.X_OK):
        pytest.fail(f"shardprep binary not found at {p}: run `cargo build --release` or set SHARDPREP_BIN",
                    pytrace=False)
    return p


def run(cmd, cwd=None, ok=True):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if ok and r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} (in {cwd or os.getcwd()}) exited {r.returncode}\n"
                    f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}", pytrace=False)
    return r


def samples_in(tars):
    """image name -> its JSON, read straight from the tars."""
    images, jsons = {}, {}
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                stem, ext = os.path.splitext(m.name)
                if ext.lower() in IMAGE_EXTS:
                    images[stem] = m.name
                elif ext == ".json":
                    jsons[stem] = json.load(tf.extractfile(m))
    return {name: jsons[stem] for stem, name in images.items()}


def expected(samples, min_megapixels):
    """What SimpleTuner must discover, accept and reject, from the JSONs alone."""
    rejected = {}
    accepted = []
    for name, j in samples.items():
        if "width" not in j or "height" not in j:
            rejected.setdefault("metadata_missing", []).append(name)
        elif j["width"] * j["height"] < min_megapixels * 1_000_000:
            rejected.setdefault("too_small", []).append(name)
        else:
            accepted.append(name)
    return {"discovered": len(samples), "accepted": sorted(accepted),
            "rejected": {k: len(v) for k, v in sorted(rejected.items())}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    run([shardprep_bin(), "generate", "--output", d, "--shards", SHARDS, "--samples", SAMPLES,
         "--seed", SEED])
    tars = sorted(d.glob("*.tar"))
    assert len(tars) == SHARDS
    return tars


def check(out, *extra, cwd=None, keep=False):
    """check_output.py's summary and exit code on OUT."""
    work = Path(out).parent / f"st-work-{Path(out).name}"
    cmd = [sys.executable, HERE / "check_output.py", out, "--work", work, *extra]
    if keep:
        cmd.append("--keep-simpletuner-files")
    r = run(cmd, cwd=cwd, ok=False)
    try:
        summary = json.loads(r.stdout)
    except ValueError:
        pytest.fail(f"check_output.py printed no summary (exit {r.returncode}):\n{r.stdout[-2000:]}\n"
                    f"{r.stderr[-3000:]}", pytrace=False)
    return r.returncode, summary


def entry_of(out):
    with open(Path(out) / "multidatabackend.json") as f:
        return json.load(f)[0]


def assert_loads(rc, s, want):
    """The unpatched setup passed and SimpleTuner's numbers are the oracle's."""
    why = json.dumps({k: s.get(k) for k in ("setup_error", "measured_by", "discovered", "accepted",
                                            "rejected", "rejected_examples", "captions", "images",
                                            "instance_data_dir", "logs")}, indent=1, ensure_ascii=False)
    assert rc == 0 and s["setup_ok"], f"SimpleTuner's setup failed unpatched:\n{why}"
    assert s["discovered"] == want["discovered"], why
    assert s["rejected"] == want["rejected"], why
    assert s["accepted"] == len(want["accepted"]), why
    c = s["captions"]
    assert c["checked"] == c["equal"] == len(want["accepted"]), f"captions differ from the parquet's:\n{why}"
    assert s["images"]["prepared"] == s["images"]["checked"] == len(want["accepted"]), why


def assert_parquet_captions(out, samples, want, column, field):
    """The parquet's caption column holds each accepted image's JSON field."""
    import pyarrow.parquet as pq
    e = entry_of(out)
    t = pq.read_table(e["parquet"]["path"])
    rows = dict(zip(t.column(e["parquet"]["filename_column"]).to_pylist(), t.column(column).to_pylist()))
    for name in want["accepted"]:
        assert rows.get(name) == samples[name][field], name


def prepare(shards, out, *flags, cwd=None):
    run([shardprep_bin(), "run", "--input", Path(shards[0]).parent, "--output", out, "--workers", 2, *flags],
        cwd=cwd)


def test_default_textfile_output_loads_in_simpletuner(shards, tmp_path):
    out = tmp_path / "out"
    prepare(shards, out)
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out)
    assert_loads(rc, s, want)
    assert_parquet_captions(out, samples, want, "caption", "short_caption")


def test_parquet_captions_load_in_simpletuner(shards, tmp_path):
    out = tmp_path / "out"
    prepare(shards, out, "--captions", "parquet")
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out)
    assert_loads(rc, s, want)
    assert s["on_disk"]["txt"] == 0


def test_list_column_as_caption_column_loads_in_simpletuner(shards, tmp_path):
    # shardprep has no flag for the entry's caption column: the user edits the entry,
    # as check_output.py does in a copy.
    out = tmp_path / "out"
    prepare(shards, out, "--extra-columns", "short_caption2")
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out, "--caption-strategy", "parquet", "--caption-column", "short_caption2")
    assert_loads(rc, s, want)
    assert_parquet_captions(out, samples, want, "short_caption2", "short_caption2")


def test_hugging_face_layout_loads_in_simpletuner(shards, tmp_path):
    # The download puts the tars in dalle3/data/, where the files are extracted too.
    out = tmp_path / "dalle3"
    (out / "data").mkdir(parents=True)
    for t in shards:
        shutil.copy(t, out / "data")
    run([shardprep_bin(), "run", "--input", out / "data", "--output", out, "--workers", 2])
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out)
    assert_loads(rc, s, want)


def test_relative_paths_load_in_simpletuner(shards, tmp_path):
    # A new user's command line: relative paths, the trainer started from the same folder.
    shutil.copytree(Path(shards[0]).parent, tmp_path / "shards")
    run([shardprep_bin(), "run", "--input", "shards", "--output", "out", "--workers", 2,
         "--instance-data-dir", "out/data", "--captions", "parquet"], cwd=tmp_path)
    out = tmp_path / "out"
    e = entry_of(out)
    rc, s = check(out, cwd=tmp_path)
    relative = [f"{key} {path!r}" for key, path in (
        ("instance_data_dir", e["instance_data_dir"]), ("parquet.path", e["parquet"]["path"]),
        ("cache_dir_vae", e.get("cache_dir_vae", "/"))) if not os.path.isabs(path)]
    assert not relative, (f"relative paths in multidatabackend.json: {relative}; SimpleTuner then: "
                          f"setup_ok={s['setup_ok']} discovered={s['discovered']} accepted={s['accepted']} "
                          f"rejected={s['rejected']} error={s['setup_error']}")
    assert_loads(rc, s, expected(samples_in(shards), e["minimum_image_size"]))


def test_verify_passes_after_simpletuner_wrote_its_caches(shards, tmp_path):
    out = tmp_path / "out"
    prepare(shards, out, "--captions", "parquet")
    n_json = len(samples_in(shards))
    rc, s = check(out, keep=True)
    assert rc == 0, s.get("setup_error")
    assert s["simpletuner_wrote"], "SimpleTuner wrote nothing into OUT: this test checks nothing"
    verify = run([shardprep_bin(), "verify", out, "--expect-json", n_json], ok=False)
    rerun = run([shardprep_bin(), "run", "--input", Path(shards[0]).parent, "--output", out,
                 "--captions", "parquet", "--expect-json", n_json], ok=False)
    assert (verify.returncode, rerun.returncode) == (0, 0), (
        f"after SimpleTuner wrote {s['simpletuner_wrote']}: verify exited {verify.returncode}\n"
        f"{verify.stdout[-1500:]}{verify.stderr[-1500:]}\nre-run exited {rerun.returncode}\n"
        f"{rerun.stdout[-1500:]}{rerun.stderr[-1500:]}")



@pytest.fixture(scope="module")
def index_shards(tmp_path_factory):
    """Fresh shards for index mode: `good/` holds three, some JSONs lying about the image's
    size (the index has the image header's); `with-broken/` holds them plus a fourth cut in
    the middle of a member (it must get no index, and webshart must skip its tar)."""
    root = tmp_path_factory.mktemp("index-shards")
    gen = root / "gen"
    run([shardprep_bin(), "generate", "--output", gen, "--shards", SHARDS + 1, "--samples", SAMPLES,
         "--seed", SEED + 1, "--lying-dims-every", 7])
    tars = sorted(gen.glob("*.tar"))
    assert len(tars) == SHARDS + 1
    good, with_broken = root / "good", root / "with-broken"
    for d in (good, with_broken):
        d.mkdir()
        for t in tars[:-1]:
            shutil.copy(t, d)
    broken = with_broken / tars[-1].name
    shutil.copy(tars[-1], broken)
    with open(broken, "r+b") as f:
        f.truncate(broken.stat().st_size * 3 // 5 + 100)  # not on a 512-byte block boundary
    return {"good": good, "with_broken": with_broken, "broken": broken.name,
            "good_tars": sorted(good.glob("*.tar"))}


def index_expected(tars, min_megapixels, field="short_caption"):
    """From the tars alone (PIL reads each image's real size, the index's source of width and
    height): an image is in the index, so discovered, exactly when the parquet has a row for it
    (its JSON has width and height, as in extract mode; the others are `left_out`); it is
    bucketed by its real size, one whose real area is under `minimum_image_size` is
    `too_small`, each accepted one has its JSON's caption."""
    from PIL import Image
    images = {}
    for t in tars:
        with tarfile.open(t) as tf:
            members = {m.name: m for m in tf.getmembers()}
            for name, m in members.items():
                stem, ext = os.path.splitext(name)
                if ext.lower() not in IMAGE_EXTS:
                    continue
                with Image.open(tf.extractfile(m)) as im:
                    size = list(im.size)
                j = json.load(tf.extractfile(members[stem + ".json"]))
                images[name] = {"size": size, "json": j}
    json_dims = {n: [v["json"].get("width"), v["json"].get("height")] for n, v in images.items()}
    rowed = [n for n in images if None not in json_dims[n]]
    small = [n for n in rowed if images[n]["size"][0] * images[n]["size"][1] < min_megapixels * 1_000_000]
    accepted = sorted(set(rowed) - set(small))
    return {"discovered": len(rowed), "accepted": accepted,
            "rejected": {"too_small": len(small)} if small else {},
            "size": {n: images[n]["size"] for n in accepted},
            "caption": {n: images[n]["json"][field] for n in accepted},
            "lying": [n for n in accepted if json_dims[n] != images[n]["size"]],
            "left_out": len(images) - len(rowed),
            "parquet_rows": len(rowed)}


def index_run(tars_dir, out, want_rc):
    r = run([shardprep_bin(), "run", "--input", tars_dir, "--output", out, "--mode", "index",
             "--workers", 2], ok=False)
    assert r.returncode == want_rc, (f"shardprep run --mode index exited {r.returncode}, not {want_rc}:\n"
                                     f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "index", report
    return report


def assert_webshart_entry(e, tars_dir, out):
    """The webshart entry has what SimpleTuner 4.10.1's webshart builder reads. Without
    `webshart.cache_dir` it falls back to ./cache/webshart/<id> in the trainer's folder, without
    `shard_cache_gb` it copies whole tars (25 GB) there, without `metadata` it looks for the
    indexes beside the tars."""
    missing = [k for k in ("id", "type", "source", "metadata", "caption_strategy", "metadata_backend",
                           "dataset_type", "resolution", "resolution_type", "minimum_image_size",
                           "maximum_image_size", "target_downsample_size", "cache_dir_vae")
               if k not in e] + [f"webshart.{k}" for k in ("cache_dir", "shard_cache_gb")
                                 if k not in e.get("webshart", {})]
    assert not missing, f"multidatabackend.json's webshart entry lacks {missing}: {e}"
    assert (e["type"], e["caption_strategy"], e["metadata_backend"]) == ("webshart",) * 3, e
    assert (e["source"], e["metadata"]) == (str(tars_dir), str(out / "index")), e
    relative = [p for p in (e["source"], e["metadata"], e["webshart"]["cache_dir"], e["cache_dir_vae"])
                if not os.path.isabs(p)]
    assert not relative, f"relative paths in the webshart entry: {relative}"


def check_webshart(out, tmp_path, e, good_tars, want, keep=False):
    """check_output.py on a webshart entry, from a trainer folder SimpleTuner must not write
    into; asserts what holds with or without a broken shard beside the good ones."""
    trainer_dir = tmp_path / "trainer"
    trainer_dir.mkdir()
    rc, s = check(out, cwd=trainer_dir, keep=keep)
    why = json.dumps({k: s.get(k) for k in ("setup_error", "discovered", "accepted", "rejected",
                                            "rejected_examples", "captions", "images", "webshart",
                                            "filtering_statistics", "on_disk", "logs")},
                     indent=1, ensure_ascii=False)
    assert rc == 0 and s["setup_ok"], f"SimpleTuner's setup failed on the webshart entry:\n{why}"
    w = s["webshart"]
    assert w and w["backend"] == "WebshartDataBackend", why
    assert [x["tar"] for x in w["shards"]] == [t.name for t in good_tars], f"webshart's shards:\n{why}"
    assert w["cache_dir"] == e["webshart"]["cache_dir"] and w["shard_cache_dir"] is None, why
    wrote = sorted(str(p.relative_to(trainer_dir)) for p in trainer_dir.rglob("*"))
    assert not wrote, f"SimpleTuner wrote into the trainer's folder, not the entry's cache_dir: {wrote}"
    assert s["discovered"] == want["discovered"], why
    assert s["rejected"] == want["rejected"], why
    assert s["accepted"] == len(want["accepted"]), why
    assert sum(s["buckets"].values()) == len(want["accepted"]), why
    per = s["per_sample"]
    assert sorted(per) == want["accepted"], why
    wrong_size = {n: (per[n]["original_size"], want["size"][n]) for n in want["accepted"]
                  if list(per[n]["original_size"] or []) != want["size"][n]}
    assert not wrong_size, f"SimpleTuner bucketed these by another size than the image's (got, real): {wrong_size}"
    wrong_caption = {n: (per[n], want["caption"][n]) for n in want["accepted"]
                     if not per[n]["sampler"] == per[n]["text_embed"] == [want["caption"][n]]}
    assert not wrong_caption, f"captions differ from the JSON's (SimpleTuner, JSON): {wrong_caption}"
    assert s["images"]["prepared"] == s["images"]["checked"] == len(want["accepted"]), why
    return s, why


def test_index_mode_webshart_entry_loads_in_simpletuner(index_shards, tmp_path):
    # `--mode index`: nothing extracted; SimpleTuner's webshart backend reads the tars in place
    # through OUT/index, buckets by the index's width/height, captions from the index.
    tars_dir, good = index_shards["good"], index_shards["good_tars"]
    out = tmp_path / "out"
    index_run(tars_dir, out, 0)
    e = entry_of(out)
    assert_webshart_entry(e, tars_dir, out)
    want = index_expected(good, e["minimum_image_size"])
    assert want["lying"] and want["left_out"], "no accepted image lies about its size, no JSON lacks width"
    s, why = check_webshart(out, tmp_path, e, good, want, keep=True)
    # The parquet (rows for JSONs with width and height, as in extract mode) agrees too.
    assert s["on_disk"]["parquet_rows"] == want["parquet_rows"], why
    c = s["captions"]
    assert c["error"] == c["mismatch"] == 0, why
    assert c["no_parquet_row"] == 0, why
    assert c["equal"] == len(want["accepted"]), why
    # SimpleTuner's caches (OUT/cache/webshart, kept) leave the output valid and a re-run a no-op.
    assert any(p.startswith("cache/webshart/metadata_cache/") for p in s["simpletuner_wrote"]), s["simpletuner_wrote"]
    n_json = len(samples_in(good))
    verify = run([shardprep_bin(), "verify", out, "--expect-json", n_json], ok=False)
    rerun = run([shardprep_bin(), "run", "--input", tars_dir, "--output", out, "--mode", "index",
                 "--expect-json", n_json], ok=False)
    assert (verify.returncode, rerun.returncode) == (0, 0), (
        f"after SimpleTuner wrote {s['simpletuner_wrote']}: verify exited {verify.returncode}\n"
        f"{verify.stdout[-1500:]}{verify.stderr[-1500:]}\nre-run exited {rerun.returncode}\n"
        f"{rerun.stdout[-1500:]}{rerun.stderr[-1500:]}")


def test_index_mode_broken_shard_is_skipped_by_simpletuner(index_shards, tmp_path):
    # The cut shard fails the job (exit 1, no parquet) and gets no index; its tar stays in
    # `source`, and SimpleTuner (through webshart) trains on the other shards only.
    tars_dir, good = index_shards["with_broken"], index_shards["good_tars"]
    out = tmp_path / "out"
    report = index_run(tars_dir, out, 1)
    assert [f["name"] for f in report["failures"]] == [index_shards["broken"]], report["failures"]
    assert sorted(p.name for p in (out / "index").glob("*.json")) == [t.stem + ".json" for t in good]
    assert (tars_dir / index_shards["broken"]).exists()
    e = entry_of(out)
    assert_webshart_entry(e, tars_dir, out)
    check_webshart(out, tmp_path, e, good, index_expected(good, e["minimum_image_size"]))


def both_modes(tars_dir, tmp_path):
    """`tars_dir` prepared in index mode and in extract mode (`--dims image`, so that its parquet
    has the images' real sizes as the index does), each read by SimpleTuner: (index OUT, extract
    OUT, index summary, extract summary), both setups passed."""
    ix_out, ext_out = tmp_path / "ix", tmp_path / "ext"
    index_run(tars_dir, ix_out, 0)
    run([shardprep_bin(), "run", "--input", tars_dir, "--output", ext_out, "--workers", 2, "--dims", "image"])
    trainer_dir = tmp_path / "trainer"
    trainer_dir.mkdir()
    rc_ix, s_ix = check(ix_out, cwd=trainer_dir)
    rc_ext, s_ext = check(ext_out)
    assert (rc_ix, rc_ext) == (0, 0), (s_ix.get("setup_error"), s_ext.get("setup_error"))
    return ix_out, ext_out, s_ix, s_ext


def test_both_modes_give_simpletuner_the_same_samples(index_shards, tmp_path):
    # The same shards (JSONs without width, lying sizes) in both modes: SimpleTuner takes the same
    # images with the same captions. Extract mode runs with `--dims image`, so that its parquet has
    # the images' real sizes as the index does: the size filter (`too_small`) then judges alike.
    ix_out, ext_out, s_ix, s_ext = both_modes(index_shards["good"], tmp_path)
    want = index_expected(index_shards["good_tars"], entry_of(ext_out)["minimum_image_size"])
    assert s_ix["accepted_names"] == s_ext["accepted_names"] == want["accepted"], (
        f"index mode took {s_ix['accepted']}, extract mode {s_ext['accepted']}: "
        f"only in index {sorted(set(s_ix['accepted_names']) - set(s_ext['accepted_names']))}, "
        f"only in extract {sorted(set(s_ext['accepted_names']) - set(s_ix['accepted_names']))}")
    assert s_ext["captions"]["equal"] == s_ix["captions"]["equal"] == len(want["accepted"])
    reports = [json.loads((o / "report.json").read_text()) for o in (ix_out, ext_out)]
    for key in ("skipped", "rejected_members", "image_problems", "images_left_out", "rows"):
        assert reports[0]["totals"][key] == reports[1]["totals"][key], key
    assert reports[0]["totals"]["images_left_out"] == {"no_width": want["left_out"]}


# --------------------------------------------------------------------------- report.html (issue 29)
def page_buckets(out):
    """The bucket table of OUT/report.html: {bucket: samples}, and the `too_small` count."""
    html = (Path(out) / "report.html").read_text()
    cell = r'<td>[^<]*</td><td class="r" data-count="(\d+)"'
    buckets = {m.group(1): int(m.group(2)) for m in re.finditer(r'<tr data-bucket="([^"]+)">' + cell, html)}
    small = re.search(r'<tr class="drop" data-dropped="too_small">' + cell, html)
    assert buckets and small, "report.html has no bucket table"
    return buckets, int(small.group(1))


@pytest.fixture(scope="module")
def lying_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("lying-shards")
    run([shardprep_bin(), "generate", "--output", d, "--shards", SHARDS, "--samples", SAMPLES,
         "--seed", SEED + 2, "--lying-dims-every", 5])
    return sorted(d.glob("*.tar"))


def test_the_pages_buckets_are_simpletuners(lying_shards, tmp_path):
    # Extract mode: SimpleTuner buckets by the parquet's width/height (the JSON's, lies
    # included); the page predicts every bucket's count and the too_small drops.
    out = tmp_path / "out"
    prepare(lying_shards, out)
    rc, s = check(out)
    assert rc == 0 and s["setup_ok"], s.get("setup_error")
    buckets, too_small = page_buckets(out)
    assert buckets == s["buckets"], f"page {buckets} != SimpleTuner {s['buckets']}"
    assert too_small == s["rejected"].get("too_small", 0), (too_small, s["rejected"])
    assert len(buckets) >= 5, buckets


def test_the_pages_buckets_are_simpletuners_in_index_mode(index_shards, tmp_path):
    # Index mode: SimpleTuner's webshart backend buckets by the index's (real) sizes.
    tars_dir, good = index_shards["good"], index_shards["good_tars"]
    out = tmp_path / "out"
    index_run(tars_dir, out, 0)
    e = entry_of(out)
    s, why = check_webshart(out, tmp_path, e, good, index_expected(good, e["minimum_image_size"]))
    buckets, too_small = page_buckets(out)
    assert buckets == s["buckets"], f"page {buckets} != SimpleTuner {s['buckets']}\n{why}"
    assert too_small == s["rejected"].get("too_small", 0), (too_small, why)


# --------------------------------------------------------------------------- hostile shards, both modes
def hostile_tar(path, image, sparse_dir):
    """A shard built to be awkward (no `shardprep generate`): duplicates, a `.txt` member
    where a row's caption file goes, a JSON and an image in a subfolder, a symlink, `../` and
    absolute names, PAX long names, a bad JSON, a JSON without width, an image without a JSON,
    a row naming another key's image, a 2 MiB JSON and a 3 MiB image; beside it, `sparse.tar`
    with a GNU sparse member. Returns the top-level images that must be samples in both modes."""
    import io
    import random

    def add(t, name, data, kind=tarfile.REGTYPE, link=""):
        ti = tarfile.TarInfo(name)
        ti.size, ti.type, ti.linkname, ti.mtime = len(data), kind, link, 1700000000
        t.addfile(ti, io.BytesIO(data))

    def sample(t, key, caption, image_name=None, **extra):
        j = {"width": 1024, "height": 1024, "short_caption": caption,
             "image_name": image_name or f"{key}.png", **extra}
        add(t, f"{key}.json", json.dumps(j).encode())

    long_key = "L" * 150
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        add(t, "a.png", image)
        sample(t, "a", "the first a")
        add(t, "a.txt", b"a member where the caption file goes")
        add(t, "a.png", image)  # a duplicate: the later copy wins
        big = image + bytes(random.Random(5).getrandbits(8) for _ in range(3 << 20))
        add(t, "big.png", big)  # streamed, not pooled; a PNG with trailing bytes still decodes
        sample(t, "big", "a big file")
        add(t, "lj.png", image)
        sample(t, "lj", "a large json", pad="x" * (2 << 20))
        add(t, "orphan.png", image)  # no JSON: no sample
        add(t, "nw.png", image)
        add(t, "nw.json", json.dumps({"short_caption": "no width", "image_name": "nw.png"}).encode())
        add(t, "sub/n.png", image)  # not at the top: no sample, as in the seed
        sample(t, "sub/n", "nested", image_name="sub/n.png")
        ti = tarfile.TarInfo("dir1")
        ti.type = tarfile.DIRTYPE
        t.addfile(ti)
        add(t, "dir1/x.bin", b"xyz")
        add(t, "link.png", b"", tarfile.SYMTYPE, "a.png")
        add(t, "../evil.png", image)
        add(t, "/abs.png", image)
        add(t, f"{long_key}.png", image)
        sample(t, long_key, "a long name")
        add(t, "o1.png", image)
        sample(t, "o2", "names the image of another key", image_name="o1.png")
        add(t, "bad.png", image)
        add(t, "bad.json", b"{not json")
    sparse = sparse_dir / "sparse.png"
    with open(sparse, "wb") as f:
        f.seek(4_000_000)
        f.write(b"data")
        f.truncate(8 << 20)
    # A shard of its own: GNU tar writes a sparse member only in its own format, not into the
    # PAX archive above.
    run(["tar", "--sparse", "--format=gnu", "-cf", path.with_name("sparse.tar"), "-C", sparse_dir,
         "sparse.png"])
    return sorted(["a.png", "big.png", "lj.png", f"{long_key}.png", "o1.png"])


def test_both_modes_agree_on_hostile_shards(tmp_path):
    # Issue 25's "done when": on shards of awkward members, the real SimpleTuner takes the same
    # samples by name from the extract output and from the index output, and the reports agree
    # on every skip, image problem and image left out. Member refusals agree too, except the two
    # that depend on the mode by design (README): a sparse member is refused in index mode only,
    # a `.txt` member under a row's caption file in extract mode only.
    tars = tmp_path / "tars"
    run([shardprep_bin(), "generate", "--output", tars, "--shards", 2, "--samples", SAMPLES,
         "--seed", SEED + 3, "--lying-dims-every", 7, "--truncated-every", 13, "--no-width-every", 5])
    from PIL import Image
    import io
    with tarfile.open(sorted(tars.glob("*.tar"))[0]) as tf:
        pngs = [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".png")]
    image = max(pngs, key=lambda b: (lambda im: im.size[0] * im.size[1])(Image.open(io.BytesIO(b))))
    sparse_dir = tmp_path / "sparse"
    sparse_dir.mkdir()
    must = hostile_tar(tars / "hostile.tar", image, sparse_dir)
    ix_out, ext_out, s_ix, s_ext = both_modes(tars, tmp_path)
    ix_names, ext_names = s_ix["accepted_names"], s_ext["accepted_names"]
    assert ix_names == ext_names, (
        f"only in index {sorted(set(ix_names) - set(ext_names))}, "
        f"only in extract {sorted(set(ext_names) - set(ix_names))}")
    assert set(must) <= set(ix_names), f"missing samples of the hostile shard: {sorted(set(must) - set(ix_names))}"
    for never in ("orphan.png", "nw.png", "bad.png", "sub/n.png", "link.png", "sparse.png", "evil.png", "abs.png"):
        assert never not in ix_names, never
    assert s_ix["captions"]["equal"] == s_ext["captions"]["equal"] == len(ix_names), (s_ix["captions"], s_ext["captions"])
    reports = [json.loads((o / "report.json").read_text())["totals"] for o in (ix_out, ext_out)]
    for key in ("skipped", "image_problems", "rows"):
        assert reports[0][key] == reports[1][key], (key, reports[0][key], reports[1][key])
    # The sparse image (no JSON) is refused in index mode; extract mode expands it (it then has
    # a caption file, or SimpleTuner's textfile setup stops) and counts it as an image without a row.
    ix_left, ext_left = dict(reports[0]["images_left_out"]), dict(reports[1]["images_left_out"])
    ext_left["no_row"] -= 1
    assert ix_left == ext_left, (reports[0]["images_left_out"], reports[1]["images_left_out"])
    ix_refused, ext_refused = dict(reports[0]["rejected_members"]), dict(reports[1]["rejected_members"])
    assert ix_refused.pop("sparse_file") == 1 and ext_refused.pop("shadowed_by_caption") == 1
    assert ix_refused == ext_refused, (ix_refused, ext_refused)
    assert (ext_out / "data" / "sparse.txt").exists()


# --------------------------------------------------------------------------- repeated names
def tar_xf(tars):
    """What `tar xf` of each tar in order leaves: member path -> bytes, the last member wins."""
    files = {}
    for t in tars:
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.isfile():
                    files[m.name] = tf.extractfile(m).read()
    return files


def repeated_tars(gen, dest):
    """The generated shards again, with names that repeat: in the first shard one image's JSON
    comes twice (first claiming another size and caption), another's later JSON has no width;
    the second shard ends with an image and JSON under a name of the first shard, and with only
    the image of another (whose row stays the first shard's: a sample split across shards).
    Returns the four names."""
    import io
    dest.mkdir()
    src = sorted(gen.glob("*.tar"))
    shards = []
    for t in src:
        with tarfile.open(t) as tf:
            shards.append([(m, tf.extractfile(m).read()) for m in tf.getmembers()])
    def sized(members):
        return [m.name[:-5] for m, b in members if m.name.endswith(".json") and "width" in json.loads(b)]
    a_keys, b_keys = sized(shards[0]), sized(shards[1])
    k0, k1, k2, k3 = a_keys[:4]
    jsons = {m.name: json.loads(b) for s in shards for m, b in s if m.name.endswith(".json")}
    image_of = {os.path.splitext(m.name)[0]: (m.name, b) for s in shards for m, b in s
                if m.name.lower().endswith(IMAGE_EXTS)}
    ext2 = os.path.splitext(image_of[k2][0])[1]
    donor = next(k for k in b_keys if image_of[k][0].endswith(ext2)
                 and (jsons[k + ".json"]["width"], jsons[k + ".json"]["height"])
                 != (jsons[k2 + ".json"]["width"], jsons[k2 + ".json"]["height"]))
    ext3 = os.path.splitext(image_of[k3][0])[1]
    split = next(k for k in b_keys if k != donor and image_of[k][0].endswith(ext3))

    def blob(d):
        return json.dumps(d).encode()
    earlier = dict(jsons[k0 + ".json"], short_caption=f"earlier {k0}",
                   width=jsons[k0 + ".json"]["width"] * 3)
    no_width = {k: v for k, v in jsons[k1 + ".json"].items() if k != "width"}
    replaced = dict(jsons[donor + ".json"], image_name=image_of[k2][0], short_caption=f"replaced {k2}")
    extra = {
        0: {k0 + ".json": [blob(earlier), None], k1 + ".json": [None, blob(no_width)]},
    }
    for i, members in enumerate(shards):
        with tarfile.open(dest / src[i].name, "w") as out:
            def add(name, data):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mtime = len(data), 1700000000
                out.addfile(ti, io.BytesIO(data))
            for m, b in members:
                before, after = extra.get(i, {}).get(m.name, [None, None])
                for data in (before, b, after):
                    if data is not None:
                        add(m.name, data)
            if i == 1:
                add(image_of[k2][0], image_of[donor][1])
                add(k2 + ".json", blob(replaced))
                add(image_of[k3][0], image_of[split][1])
    return [image_of[k][0] for k in (k0, k1, k2, k3)]


def test_repeated_names_give_simpletuner_the_seeds_samples(tmp_path):
    # Names that repeat, in one shard and across shards: `tar xf` leaves only the later file, the
    # seed's compile.py makes one row per JSON data/ holds, so SimpleTuner must bucket and caption
    # each image by the JSON that survived, and never see a row of a JSON that was replaced.
    gen = tmp_path / "gen"
    run([shardprep_bin(), "generate", "--output", gen, "--shards", 2, "--samples", SAMPLES, "--seed", SEED + 4])
    tars_dir = tmp_path / "repeated"
    names = repeated_tars(gen, tars_dir)
    tars = sorted(tars_dir.glob("*.tar"))
    out = tmp_path / "out"
    prepare(tars, out)
    files = tar_xf(tars)
    samples = {n: json.loads(files[os.path.splitext(n)[0] + ".json"]) for n in files
               if n.lower().endswith(IMAGE_EXTS) and os.path.splitext(n)[0] + ".json" in files}
    want = expected(samples, entry_of(out)["minimum_image_size"])
    assert names[0] in want["accepted"] and names[1] not in want["accepted"], "the fixture lost its cases"
    rc, s = check(out)
    assert_loads(rc, s, want)
    per = s["per_sample"]
    assert sorted(per) == want["accepted"], sorted(set(per) ^ set(want["accepted"]))
    wrong = {n: (per[n], samples[n]) for n in want["accepted"]
             if list(per[n]["original_size"] or []) != [samples[n]["width"], samples[n]["height"]]
             or not per[n]["sampler"] == per[n]["text_embed"] == [samples[n]["short_caption"]]}
    assert not wrong, f"SimpleTuner took another JSON's size or caption (got, surviving JSON): {wrong}"
    assert per[names[2]]["sampler"] == [f"replaced {os.path.splitext(names[2])[0]}"], per[names[2]]
    assert (out / "data" / names[2]).read_bytes() == files[names[2]]
    assert "metadata_missing" in s["rejected"], s["rejected"]
    # The split sample: the first shard's row and caption, the second shard's image.
    k3 = os.path.splitext(names[3])[0]
    assert per[names[3]]["sampler"] == [samples[names[3]]["short_caption"]], per[names[3]]
    assert (out / "data" / names[3]).read_bytes() == files[names[3]] != tar_xf(tars[:1])[names[3]]
    assert (out / "data" / f"{k3}.txt").read_text() == samples[names[3]]["short_caption"]
