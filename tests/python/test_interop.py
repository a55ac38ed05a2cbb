"""Interop of shardprep's output with the Python tools a trainer uses.

Builds shards with `shardprep generate`, prepares them with `shardprep run`,
then reads the result with pandas and pyarrow, compares it with the seed's
own `compile.py` / `extract-captions.py` logic run over a `tar xf`-style
extraction of the same shards, and looks samples up the way SimpleTuner's
parquet metadata backend does.

The binary is $SHARDPREP_BIN (default: target/release/shardprep of this repo).
"""

import glob
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SHARDS, SAMPLES, SEED = 3, 15, 20240607


def _bin() -> Path:
    raw = os.environ.get("SHARDPREP_BIN") or "target/release/shardprep"
    p = Path(raw)
    if not p.is_absolute():
        p = (REPO / p) if (REPO / p).exists() else Path.cwd() / p
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(
            f"shardprep binary not found at {p}: run `cargo build --release` "
            "or set SHARDPREP_BIN to the binary's path",
            pytrace=False,
        )
    return p


def shardprep(*args, ok=True):
    cmd = [str(_bin()), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if ok and r.returncode != 0:
        pytest.fail(
            f"command failed ({r.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}",
            pytrace=False,
        )
    return r


def prepare(base: Path, *flags):
    """Generates the shards (once per base) and runs shardprep into base/out-<flags>."""
    shards = base / "shards"
    if not shards.exists():
        shardprep("generate", "--output", shards, "--shards", SHARDS, "--samples", SAMPLES, "--seed", SEED)
    out = base / ("out" + "".join(f.replace("-", "_") for f in flags))
    shardprep("run", "--input", shards, "--output", out, "--workers", 2, *flags)
    return shards, out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    base = tmp_path_factory.mktemp("interop")
    shards, out = prepare(base)
    return {"base": base, "shards": shards, "out": out, "report": json.loads((out / "report.json").read_text())}


def extract_like_tar_xf(shards: Path, dalle3: Path):
    """The seed's `for t in *.tar; do tar xf "$t" -C data/; done`, with Python's tarfile."""
    data = dalle3 / "data"
    data.mkdir(parents=True)
    for t in sorted(shards.glob("*.tar")):
        with tarfile.open(t) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(data, filter="data")
            else:  # pragma: no cover - old Pythons
                tf.extractall(data)


def seed_compile(dalle3: Path, monkeypatch):
    """The seed's compile.py, verbatim except tqdm, run in the dalle3/ folder."""
    monkeypatch.chdir(dalle3)
    # Glob for all JSON files in the folder
    json_files = glob.glob('data/*.json')

    data = []

    # Process each JSON file
    for file_path in json_files:
        with open(file_path, 'r') as file:
            content = json.load(file)
            if "width" not in content:
                continue
            # Extract the necessary information
            text_path = os.path.splitext(content['image_name'])[0] + ".txt"  # noqa: F841 (as in the seed)
            width = int(content['width'])
            height = int(content['height'])
            caption = content['short_caption']
            filename = content['image_name']

            # Append to data list
            data.append({'width': width, 'height': height, 'caption': caption, 'filename': filename})

    # Create a DataFrame
    df = pd.DataFrame(data, columns=['width', 'height', 'caption', 'filename'])

    # Save the DataFrame to a Parquet file
    df.to_parquet('dalle3.parquet', index=False)
    return df


def seed_extract_captions(dalle3: Path, monkeypatch):
    """The seed's extract-captions.py, verbatim except tqdm."""
    monkeypatch.chdir(dalle3)
    json_files = glob.glob('data/*.json')
    caption_field = 'short_caption'
    for file_path in json_files:
        with open(file_path, 'r') as file:
            content = json.load(file)
            if "width" not in content:
                continue
            text_path = "data/" + os.path.splitext(content['image_name'])[0] + ".txt"
            # write content to text path
            with open(text_path, 'w') as text_file:
                text_file.write(content[caption_field])


def seed_output(shards: Path, tmp_path: Path, monkeypatch):
    """The seed's whole pipeline over `shards` in `tmp_path/dalle3`: `tar xf`, `compile.py`,
    `extract-captions.py`. Returns the folder and compile.py's table."""
    dalle3 = tmp_path / "dalle3"
    extract_like_tar_xf(shards, dalle3)
    seed_df = seed_compile(dalle3, monkeypatch)
    seed_extract_captions(dalle3, monkeypatch)
    return dalle3, seed_df


def files_under(root: Path):
    """Every file under `root`: relative path -> bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def rows_of(df):
    return [(int(w), int(h), c, f) for w, h, c, f in zip(df["width"], df["height"], df["caption"], df["filename"])]


# ------------------------------------------------------------------ reading the table


def test_pandas_reads_the_table(job):
    df = pd.read_parquet(job["out"] / "dalle3.parquet")
    assert list(df.columns) == ["width", "height", "caption", "filename"]
    assert str(df["width"].dtype) == "int64"
    assert str(df["height"].dtype) == "int64"
    assert all(isinstance(c, str) for c in df["caption"])
    assert all(isinstance(f, str) for f in df["filename"])
    assert len(df) == job["report"]["rows"] > 0
    assert job["report"]["verdict"] == "ok"


def test_pyarrow_sees_the_seed_schema(job):
    path = job["out"] / "dalle3.parquet"
    schema = pq.read_schema(path)
    assert [(f.name, f.type) for f in schema] == [
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("caption", pa.string()),
        ("filename", pa.string()),
    ]
    assert pq.ParquetFile(path).metadata.num_rows == job["report"]["rows"]
    table = pq.read_table(path)
    assert table.num_rows == job["report"]["rows"]
    assert table.column("width").null_count == 0
    assert table.column("filename").null_count == 0


def test_values_equal_the_seed_compile_py(job, tmp_path, monkeypatch):
    dalle3 = tmp_path / "dalle3"
    extract_like_tar_xf(job["shards"], dalle3)
    seed_df = seed_compile(dalle3, monkeypatch)
    ours = pd.read_parquet(job["out"] / "dalle3.parquet")
    # glob order is arbitrary: compare as sorted lists of rows.
    assert sorted(rows_of(ours)) == sorted(rows_of(seed_df))
    assert len(ours) == len(seed_df) == job["report"]["rows"]
    # The seed's own parquet (written by pandas) has the same columns and kinds
    # (pandas >= 3 writes large_string where shardprep writes string: both text).
    def kinds(schema):
        return [(f.name, "text" if pa.types.is_string(f.type) or pa.types.is_large_string(f.type) else str(f.type)) for f in schema]

    assert kinds(pq.read_schema(job["out"] / "dalle3.parquet")) == kinds(pq.read_schema(dalle3 / "dalle3.parquet"))
    # The seed's JSON count check: find data -name '*.json' | wc -l
    found = sum(1 for _ in (dalle3 / "data").rglob("*.json"))
    assert job["report"]["found_json"] == found == SHARDS * SAMPLES


def test_data_folder_equals_tar_xf_plus_extract_captions(job, tmp_path, monkeypatch):
    dalle3 = tmp_path / "dalle3"
    extract_like_tar_xf(job["shards"], dalle3)
    seed_extract_captions(dalle3, monkeypatch)
    want, got = files_under(dalle3 / "data"), files_under(job["out"] / "data")
    # Beyond the seed, shardprep writes a caption file for every image that
    # has no row (its JSON lacks width), so that SimpleTuner finds one beside
    # every image: the JSON's caption (issue 16), counted in the report.
    extra = sorted(set(got) - set(want))
    assert sorted(set(want) - set(got)) == []
    assert len(extra) == job["report"]["totals"]["captions_for_unlisted_images"] > 0
    captions = {}
    for name, data in want.items():
        if name.endswith(".json"):
            content = json.loads(data)
            captions[Path(content["image_name"]).stem] = content.get("short_caption")
    for name in extra:
        stem = name[: -len(".txt")]
        assert name.endswith(".txt") and any(n.startswith(stem + ".") for n in want), name
        caption = captions.get(stem)
        expected = caption[0] if isinstance(caption, list) else (caption or "")
        assert got[name].decode() == expected, name
    for name in want:
        assert got[name] == want[name], f"data/{name} differs from the seed's"


def test_row_order_is_shard_order_then_member_order(job):
    expected = []
    for t in sorted(job["shards"].glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:  # member order
                if m.isfile() and m.name.endswith(".json"):
                    content = json.load(tf.extractfile(m))
                    if "width" in content:
                        expected.append(content["image_name"])
    ours = pd.read_parquet(job["out"] / "dalle3.parquet")
    assert list(ours["filename"]) == expected


# ------------------------------------------------------------------ SimpleTuner-style lookup


def simpletuner_lookup(out: Path):
    """Mimics SimpleTuner's parquet metadata backend over shardprep's entry."""
    backends = json.loads((out / "multidatabackend.json").read_text())
    assert isinstance(backends, list) and len(backends) == 1
    entry = backends[0]
    assert entry["type"] == "local"
    assert entry["metadata_backend"] == "parquet"
    cfg = entry["parquet"]
    df = pd.read_parquet(cfg["path"])
    for col in ("filename_column", "caption_column", "width_column", "height_column"):
        assert cfg[col] in df.columns, f"{col}={cfg[col]} is not a column"
    db = df.set_index(cfg["filename_column"])
    assert db.index.is_unique
    data_dir = Path(entry["instance_data_dir"])
    images = sorted(p for p in data_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    assert images, f"no images found in {data_dir}"
    found, unlisted = [], []
    for image in images:
        if cfg["identifier_includes_extension"]:
            identifier = image.name
        else:
            identifier = image.stem
        if identifier not in db.index:
            # SimpleTuner skips images the metadata backend has no row for.
            unlisted.append(identifier)
            continue
        row = db.loc[identifier]
        width, height = int(row[cfg["width_column"]]), int(row[cfg["height_column"]])
        assert width > 0 and height > 0
        caption = row[cfg["caption_column"]]
        assert isinstance(caption, str) and caption.strip()
        if entry["caption_strategy"] == "textfile":
            txt = image.with_suffix(".txt")
            assert txt.read_text(encoding="utf-8") == caption, f"{txt} differs from the caption column"
        else:
            assert entry["caption_strategy"] == "parquet"
            assert not image.with_suffix(".txt").exists()
        found.append(identifier)
    return entry, db, found, unlisted


def no_width_images(shards: Path):
    """Image names of the samples whose JSON has no width: the seed gives them no row."""
    names = []
    for t in sorted(shards.glob("*.tar")):
        with tarfile.open(t) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".json"):
                    c = json.load(tf.extractfile(m))
                    if "width" not in c:
                        names.append(c["image_name"])
    return sorted(names)


def test_simpletuner_parquet_backend_finds_every_image(job):
    entry, db, found, unlisted = simpletuner_lookup(job["out"])
    assert entry["caption_strategy"] == "textfile"
    assert entry["parquet"]["identifier_includes_extension"] is True
    assert all("." in name for name in db.index), "filenames include the extension"
    assert Path(entry["instance_data_dir"]) == (job["out"] / "data").resolve()
    assert Path(entry["parquet"]["path"]) == (job["out"] / "dalle3.parquet").resolve()
    # Every row has its image; the only images without a row are the
    # samples whose JSON lacks width, exactly as with the seed's table.
    assert sorted(found) == sorted(db.index)
    assert sorted(unlisted) == no_width_images(job["shards"])
    assert unlisted, "the fixture should have samples without width"


def test_simpletuner_lookup_with_parquet_captions(job):
    _, out = prepare(job["base"], "--captions", "parquet")
    entry, db, found, unlisted = simpletuner_lookup(out)
    assert entry["caption_strategy"] == "parquet"
    assert sorted(found) == sorted(db.index)
    assert sorted(unlisted) == no_width_images(job["shards"])
    assert not list((out / "data").glob("*.txt"))
    assert sorted(rows_of(pd.read_parquet(out / "dalle3.parquet"))) == sorted(
        rows_of(pd.read_parquet(job["out"] / "dalle3.parquet"))
    )


# ------------------------------------------------------------------ extra columns


def test_extra_list_column_is_list_of_strings(job):
    _, out = prepare(job["base"], "--extra-columns", "short_caption2,long_caption")
    path = out / "dalle3.parquet"
    schema = pq.read_schema(path)
    t = schema.field("short_caption2").type
    assert pa.types.is_list(t) and t.value_type == pa.string(), f"short_caption2 is {t}"
    assert schema.field("long_caption").type == pa.string()
    assert schema.names[:4] == ["width", "height", "caption", "filename"]

    expected = {}
    for tfile in sorted(job["shards"].glob("*.tar")):
        with tarfile.open(tfile) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".json"):
                    c = json.load(tf.extractfile(m))
                    if "width" in c:
                        expected[c["image_name"]] = (c["short_caption2"], c["long_caption"])
    table = pq.read_table(path).to_pylist()
    assert len(table) == len(expected)
    for row in table:
        assert (row["short_caption2"], row["long_caption"]) == expected[row["filename"]]
    # pandas gives each cell as a sequence of str.
    df = pd.read_parquet(path)
    assert [list(v) for v in df["short_caption2"]] == [r["short_caption2"] for r in table]


# ------------------------------------------------------------------ names that repeat


def _png(w: int, h: int, shade: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + bytes([shade]) * (w * 3) for _ in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _add(tf: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, __import__("io").BytesIO(data))


def _sample(tf, key, w, h, caption, shade, width=True):
    _add(tf, f"{key}.png", _png(w, h, shade))
    meta = {"image_name": f"{key}.png", "short_caption": caption, "height": h}
    if width:
        meta["width"] = w
    _add(tf, f"{key}.json", json.dumps(meta).encode())


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """Shards where names repeat: twice in one shard, and across two shards
    (the later one must win everywhere, as `tar xf` in shard order leaves it)."""
    base = tmp_path_factory.mktemp("repeated")
    shards = base / "shards"
    shards.mkdir()
    with tarfile.open(shards / "a-000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        _sample(tf, "x", 4, 4, "x from a", 1)
        _sample(tf, "y", 5, 5, "y first copy", 2)
        _sample(tf, "y", 6, 6, "y second copy", 3)
        _sample(tf, "z", 7, 7, "z with width", 4)
        _sample(tf, "z", 7, 7, "z without width", 4, width=False)
        _sample(tf, "p", 3, 3, "p", 5)
    with tarfile.open(shards / "b-001.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        _sample(tf, "x", 8, 8, "x from b", 6)
        _sample(tf, "q", 3, 2, "q", 7)
    outs = {}
    for mode in ("extract", "index"):
        out = base / f"out-{mode}"
        shardprep("run", "--input", shards, "--output", out, "--workers", 2, "--mode", mode)
        outs[mode] = out
    return {"shards": shards, "out": outs["extract"], "index": outs["index"]}


def test_repeated_names_give_the_seed_compile_py_table_and_data(repeated, tmp_path, monkeypatch):
    dalle3, seed_df = seed_output(repeated["shards"], tmp_path, monkeypatch)
    ours = pd.read_parquet(repeated["out"] / "dalle3.parquet")
    assert sorted(rows_of(ours)) == sorted(rows_of(seed_df))
    assert sorted(rows_of(ours)) == [(3, 2, "q", "q.png"), (3, 3, "p", "p.png"), (6, 6, "y second copy", "y.png"), (8, 8, "x from b", "x.png")]
    report = json.loads((repeated["out"] / "report.json").read_text())
    assert report["verdict"] == "ok" and report["rows"] == 4
    assert report["json_replaced_listed"] == [{"json": "x.json", "shard": "a-000.tar", "by": "b-001.tar"}]
    want, got = files_under(dalle3 / "data"), files_under(repeated["out"] / "data")
    for name, data in want.items():
        assert got.get(name) == data, f"data/{name} differs from the seed's"
    # Beyond the seed only caption files beside images (z's JSON has no width).
    assert all(n.endswith(".txt") and n[:-4] + ".png" in want for n in set(got) - set(want))


def test_repeated_names_give_simpletuner_one_row_per_image_with_its_own_size(repeated):
    entry, db, found, unlisted = simpletuner_lookup(repeated["out"])
    assert sorted(found) == ["p.png", "q.png", "x.png", "y.png"] and unlisted == ["z.png"]
    for name in found:
        png = (repeated["out"] / "data" / name).read_bytes()
        w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert (int(db.loc[name, "width"]), int(db.loc[name, "height"])) == (w, h), name


def test_repeated_names_in_index_mode_keep_each_shards_sample_and_the_later_copy_in_a_shard(repeated):
    a = json.loads((repeated["index"] / "index" / "a-000.json").read_text())["files"]
    b = json.loads((repeated["index"] / "index" / "b-001.json").read_text())["files"]
    assert (a["y.png"]["captions"], a["y.png"]["width"]) == ("y second copy", 6)
    assert "z.png" not in a, "z's later JSON has no width: no sample"
    assert (a["x.png"]["captions"], b["x.png"]["captions"]) == ("x from a", "x from b")
    rows = sorted(rows_of(pd.read_parquet(repeated["index"] / "dalle3.parquet")))
    assert rows == [(3, 2, "q", "q.png"), (3, 3, "p", "p.png"), (4, 4, "x from a", "x.png"), (6, 6, "y second copy", "y.png"), (8, 8, "x from b", "x.png")]


def test_a_replaced_jsons_row_put_back_is_found_and_the_rerun_merges_the_seeds_table_again(repeated, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(repeated["out"], out, symlinks=True)
    table = out / "dalle3.parquet"
    clean = table.read_bytes()
    t = pq.read_table(table)
    back = pa.table({"width": [4], "height": [4], "caption": ["x from a"], "filename": ["x.png"]}, schema=t.schema)
    pq.write_table(pa.concat_tables([back, t]), table)
    r = shardprep("verify", out, ok=False)
    assert r.returncode != 0 and "holds 5 rows where there should be 4" in r.stdout + r.stderr, r.stdout
    # The copied report names the original output folder: run it where it is now.
    shardprep("run", "--input", repeated["shards"], "--output", out, "--workers", 2, "--mode", "extract")
    assert shardprep("verify", out, "--deep").returncode == 0
    assert table.read_bytes() == clean


# ------------------------------------------------------------------ a sample split across shards


def _png_of(tf, name, w, h, shade):
    _add(tf, name, _png(w, h, shade))


def _json_of(tf, key, caption, w, h, image=None):
    meta = {"image_name": image or f"{key}.png", "short_caption": caption, "width": w, "height": h}
    _add(tf, f"{key}.json", json.dumps(meta).encode())


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Samples whose members two shards hold: `tar xf` pairs a later shard's image with an
    earlier shard's JSON (x), an earlier shard's JSON with an image only a later shard has (w),
    and the reverse (y); the later shard writes, for its image without a row there, the caption
    file of the earlier shard's row."""
    base = tmp_path_factory.mktemp("split")
    shards = base / "shards"
    shards.mkdir()
    with tarfile.open(shards / "a-000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        _png_of(tf, "x.png", 3, 3, 1)
        _json_of(tf, "x", "x from a", 3, 3)
        _json_of(tf, "w", "w from a", 9, 9)
        _png_of(tf, "y.png", 4, 4, 2)
        _sample(tf, "a0", 7, 7, "a0", 3)
    with tarfile.open(shards / "b-001.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        _png_of(tf, "x.png", 6, 6, 4)
        _png_of(tf, "w.png", 5, 5, 5)
        _json_of(tf, "y", "y from b", 9, 9)
        _sample(tf, "b0", 8, 8, "b0", 6)
    out = base / "out"
    shardprep("run", "--input", shards, "--output", out, "--workers", 2)
    return {"shards": shards, "out": out}


def test_a_split_sample_gives_the_seeds_table_and_caption_files(split, tmp_path, monkeypatch):
    dalle3, seed_df = seed_output(split["shards"], tmp_path, monkeypatch)
    ours = pd.read_parquet(split["out"] / "dalle3.parquet")
    assert sorted(rows_of(ours)) == sorted(rows_of(seed_df))
    want, got = files_under(dalle3 / "data"), files_under(split["out"] / "data")
    assert got == want, sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert (got["x.txt"], got["w.txt"], got["y.txt"]) == (b"x from a", b"w from a", b"y from b")
    report = json.loads((split["out"] / "report.json").read_text())
    assert report["verdict"] == "ok" and report["rows_paired_listed"] == ["x.png", "w.png", "y.png"]
    # Each paired image is checked against its row: three sizes unlike the JSON's, known to
    # the report, so that `verify --deep` (which re-checks data/) passes.
    assert report["totals"]["image_problems"] == {"dims_mismatch": 3}
    r = shardprep("verify", split["out"], "--deep", ok=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_split_samples_caption_file_changed_is_found_and_put_back(split, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(split["out"], out, symlinks=True)
    clean = (out / "data" / "w.txt").read_bytes()
    (out / "data" / "w.txt").write_bytes(b"w from b")
    r = shardprep("verify", out, ok=False)
    assert r.returncode != 0 and "data/w.txt" in r.stdout, r.stdout
    shardprep("run", "--input", split["shards"], "--output", out, "--workers", 2)
    assert (out / "data" / "w.txt").read_bytes() == clean
    assert shardprep("verify", out, "--deep").returncode == 0
    # With --dims image the rows take the images' own sizes.
    dims = tmp_path / "dims"
    shardprep("run", "--input", split["shards"], "--output", dims, "--workers", 2, "--dims", "image")
    sizes = {f: (w, h) for w, h, _, f in rows_of(pd.read_parquet(dims / "dalle3.parquet"))}
    assert sizes == {"x.png": (6, 6), "w.png": (5, 5), "y.png": (4, 4), "a0.png": (7, 7), "b0.png": (8, 8)}
