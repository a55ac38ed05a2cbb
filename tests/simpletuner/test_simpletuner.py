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
which is the JSON's field.
"""

import json
import os
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


def assert_trains(rc, s, want):
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


def test_default_textfile_output_trains(shards, tmp_path):
    out = tmp_path / "out"
    prepare(shards, out)
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out)
    assert_trains(rc, s, want)
    assert_parquet_captions(out, samples, want, "caption", "short_caption")


def test_parquet_captions_train(shards, tmp_path):
    out = tmp_path / "out"
    prepare(shards, out, "--captions", "parquet")
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out)
    assert_trains(rc, s, want)
    assert s["on_disk"]["txt"] == 0


def test_list_column_as_caption_column_trains(shards, tmp_path):
    # shardprep has no flag for the entry's caption column: the user edits the entry,
    # as check_output.py does in a copy.
    out = tmp_path / "out"
    prepare(shards, out, "--extra-columns", "short_caption2")
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out, "--caption-strategy", "parquet", "--caption-column", "short_caption2")
    assert_trains(rc, s, want)
    assert_parquet_captions(out, samples, want, "short_caption2", "short_caption2")


def test_hugging_face_layout_trains(shards, tmp_path):
    # The download puts the tars in dalle3/data/, where the files are extracted too.
    out = tmp_path / "dalle3"
    (out / "data").mkdir(parents=True)
    for t in shards:
        shutil.copy(t, out / "data")
    run([shardprep_bin(), "run", "--input", out / "data", "--output", out, "--workers", 2])
    samples = samples_in(shards)
    want = expected(samples, entry_of(out)["minimum_image_size"])
    rc, s = check(out)
    assert_trains(rc, s, want)


def test_relative_paths_train(shards, tmp_path):
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
    assert_trains(rc, s, expected(samples_in(shards), e["minimum_image_size"]))


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
