"""Issue 18: shardprep reads what GNU tar and bsdtar read (see compare.py).

Three corpora, each archive also cut before every member header and inside it:

- archives GNU tar and bsdtar write here, in every format they offer, from a
  tree with long and non-UTF-8 names, sparse files, links, a FIFO and an
  empty directory;
- Go's archive/tar test files (Debian `golang-src`), written by other
  projects for their own readers;
- CPython's tarfile test archives (Debian `libpython3.X-testsuite`);
- any directories or files in $SHARDPREP_TAR_CORPUS (colon-separated).

Go's and CPython's files are also run through `--mode index`: the bytes
each index entry points at must be the reference's file.

The foreign corpora are skipped when not installed, unless
SHARDPREP_REQUIRE_TAR_CORPUS=1 (CI), which also requires bsdtar.
"""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import compare

REPO = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("SHARDPREP_REQUIRE_TAR_CORPUS") == "1"


def _bin() -> Path:
    raw = os.environ.get("SHARDPREP_BIN") or str(REPO / "target/release/shardprep")
    p = Path(raw)
    if not p.is_file():
        pytest.fail(f"shardprep binary not found at {p}: cargo build --release or set SHARDPREP_BIN", pytrace=False)
    return p


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = [t for t in ("tar", "bsdtar") if shutil.which(t) is None]
    if missing:
        msg = f"{' and '.join(missing)} not installed (apt-get install libarchive-tools)"
        if REQUIRED:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def foreign(patterns: list[str], what: str) -> list[Path]:
    found = sorted({Path(p) for pat in patterns for p in glob.glob(pat)})
    if not found:
        msg = f"{what} not installed ({', '.join(patterns)})"
        if REQUIRED:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return found


def check(archives: list[Path], tmp: Path, min_archives: int, mode: str = "extract", with_cuts: bool = True) -> None:
    verdicts = []
    for a in archives:
        verdicts.append(compare.compare(_bin(), a, mode=mode))
        if with_cuts:
            verdicts.extend(compare.compare(_bin(), p, label, mode) for label, p in compare.cuts(a, tmp))
    compare.print_table(verdicts)
    bad = [v for v in verdicts if v.problems]
    assert len(verdicts) >= min_archives, f"only {len(verdicts)} archives checked"
    # The comparison saw real work: files matched and at least one reference.
    assert sum(v.matched for v in verdicts) > 0
    assert not bad, "\n".join(f"{v.archive}: {'; '.join(v.problems)}" for v in bad)


SOURCE_TREE = r"""
mkdir -p src/dir/sub src/empty
printf 'hello\n' > src/a.txt
head -c 70000 /dev/urandom > src/dir/random.bin
printf 'deep\n' > "src/dir/sub/$(printf 'n%.0s' $(seq 1 120)).txt"
printf 'latin1\n' > "src/caf$(printf '\351').txt"
printf 'x' > src/dir/sub/one.byte
truncate -s 5M src/sparse.db
printf data | dd of=src/sparse.db bs=1 seek=1000000 conv=notrunc status=none
ln -s a.txt src/link-to-a
ln src/a.txt src/hard-a.txt
mkfifo src/fifo
"""

WRITERS = [
    ("gnu-gnu", "tar --format=gnu -cf {out} -C src ."),
    ("gnu-oldgnu-sparse", "tar --format=oldgnu --sparse -cf {out} -C src ."),
    ("gnu-pax", "tar --format=pax -cf {out} -C src ."),
    ("gnu-pax-sparse-0.0", "tar --format=pax --sparse --sparse-version=0.0 -cf {out} -C src ."),
    ("gnu-pax-sparse-0.1", "tar --format=pax --sparse --sparse-version=0.1 -cf {out} -C src ."),
    ("gnu-pax-sparse-1.0", "tar --format=pax --sparse --sparse-version=1.0 -cf {out} -C src ."),
    ("gnu-ustar", "tar --format=ustar -cf {out} -C src a.txt dir/random.bin dir/sub/one.byte empty link-to-a fifo"),
    ("gnu-v7", "tar --format=v7 -cf {out} -C src a.txt dir/random.bin empty link-to-a"),
    ("bsdtar-pax", "bsdtar --format=pax -cf {out} -C src ."),
    ("bsdtar-ustar", "bsdtar --format=ustar -cf {out} -C src a.txt dir/random.bin dir/sub/one.byte empty link-to-a fifo"),
    ("bsdtar-gnutar", "bsdtar --format=gnutar -cf {out} -C src ."),
    ("bsdtar-v7", "bsdtar --format=v7 -cf {out} -C src a.txt dir/random.bin empty"),
    ("bsdtar-restricted-pax", "bsdtar --format=paxr -cf {out} -C src ."),
]


def test_archives_gnu_tar_and_bsdtar_write(tmp_path):
    subprocess.run(["sh", "-ec", SOURCE_TREE], cwd=tmp_path, check=True)
    made = []
    for name, cmd in WRITERS:
        out = tmp_path / f"{name}.tar"
        subprocess.run(["sh", "-ec", cmd.format(out=out)], cwd=tmp_path, check=True, capture_output=True)
        made.append(out)
    cuts = tmp_path / "cuts"
    cuts.mkdir()
    check(made, cuts, min_archives=len(WRITERS))


def test_go_archive_tar_test_files(tmp_path):
    found = foreign(["/usr/share/go-*/src/archive/tar/testdata/*.tar", "/usr/lib/go-*/src/archive/tar/testdata/*.tar"], "Go's archive/tar test files (apt-get install golang-src)")
    check(found, tmp_path, min_archives=40)


def test_cpython_tarfile_test_files(tmp_path):
    found = foreign(
        ["/usr/lib/python3*/test/*.tar", "/usr/lib/python3*/test/archivetestdata/*.tar"],
        "CPython's tarfile test files (apt-get install libpython3.11-testsuite)",
    )
    check(found, tmp_path, min_archives=2)


def test_index_mode_serves_the_same_bytes(tmp_path):
    """`--mode index`: each entry's offset and length in the tar hold the
    bytes tar xf writes for that name (sparse members refused and named)."""
    found = foreign(
        ["/usr/share/go-*/src/archive/tar/testdata/*.tar", "/usr/lib/go-*/src/archive/tar/testdata/*.tar", "/usr/lib/python3*/test/*.tar"],
        "Go's and CPython's tar test files (apt-get install golang-src libpython3.11-testsuite)",
    )
    check(found, tmp_path, min_archives=40, mode="index", with_cuts=False)


def test_user_corpus(tmp_path):
    raw = os.environ.get("SHARDPREP_TAR_CORPUS")
    if not raw:
        pytest.skip("SHARDPREP_TAR_CORPUS not set")
    check(compare.archives(raw.split(":")), tmp_path, min_archives=1)
