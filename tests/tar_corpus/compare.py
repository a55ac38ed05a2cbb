"""Three-way comparison of tar readers: GNU tar, bsdtar (libarchive) and shardprep.

Each archive is extracted by `tar xf`, by `bsdtar xf` and by `shardprep run`
(the archive as the only shard). The reference is GNU tar's tree when GNU tar
reads the archive, else bsdtar's when bsdtar does (issue 18: "where GNU tar
itself errs, bsdtar's result"). Against it shardprep must:

- not fail the shard (a tar that either reads is valid);
- write every regular file of the reference with the same bytes (holes and
  zeros are the same bytes), or refuse it with a reason: the member is named
  in the shard's `issues` of report.json;
- write no file the reference does not have (nothing silently different).

When neither reads the archive, every file shardprep wrote must equal that
file in GNU tar's or bsdtar's partial tree, and a failed shard must say so
with its name in the error.

Usage: python3 compare.py --bin target/release/shardprep DIR_OR_TAR...
(`--cuts` also checks each archive cut after every member header, which
GNU tar and bsdtar read as a shorter archive or refuse as truncated.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 64 << 10
TIMEOUT = 120

# Archives where the reference tool itself is wrong, by sha256 of the
# archive: the verdict is printed with the reason instead of failing.
KNOWN_REFERENCE_BUGS = {
    "e07965b7bb760e78cd48b1ae70c536a049ffc96f72e65cb2915dc9f07c47bd79": "libarchive's test_read_format_tar_V_negative_size.tar: a `V` header with a "
    "negative base-256 size. bsdtar 3.6.2 exits 0 having extracted nothing; libarchive's own "
    "test expects ARCHIVE_FATAL (fixed later), GNU tar fails. shardprep fails the shard "
    "('negative size').",
}


def content_digest(path: Path) -> str:
    """The file's logical bytes, read without touching its holes.

    Data regions (SEEK_DATA/SEEK_HOLE) are read in 64 KiB blocks aligned to the
    file; all-zero blocks are left out, so a hole and written zeros hash alike
    and a 60 GB sparse file costs only its data.
    """
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    zero = bytes(BLOCK)
    with open(path, "rb") as f:
        fd = f.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # only a hole is left
            end = os.lseek(fd, start, os.SEEK_HOLE)
            block = start - start % BLOCK
            while block < end:
                f.seek(block)
                data = f.read(BLOCK)
                if data and data != zero[: len(data)]:
                    h.update(block.to_bytes(8, "little"))
                    h.update(data)
                block += BLOCK
            pos = end
    return h.hexdigest()


def bytes_digest(data: bytes) -> str:
    """`content_digest` of a file holding `data`."""
    h = hashlib.sha256()
    h.update(len(data).to_bytes(8, "little"))
    zero = bytes(BLOCK)
    for block in range(0, len(data), BLOCK):
        chunk = data[block : block + BLOCK]
        if chunk != zero[: len(chunk)]:
            h.update(block.to_bytes(8, "little"))
            h.update(chunk)
    return h.hexdigest()


def regular_files(root: Path) -> dict[bytes, str]:
    """Every regular file under root (relative name as bytes) → content digest."""
    out: dict[bytes, str] = {}
    if not root.is_dir():
        return out
    for dirpath, _dirs, files in os.walk(os.fsencode(root)):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                rel = os.path.relpath(p, os.fsencode(root))
                out[rel] = content_digest(Path(os.fsdecode(p)))
    return out


@dataclass
class Extraction:
    ok: bool
    files: dict[bytes, str]
    stderr: str


def extract_with(tool: list[str], archive: Path, dest: Path) -> Extraction:
    dest.mkdir(parents=True)
    try:
        r = subprocess.run(
            [*tool, "-xf", str(archive), "-C", str(dest)],
            capture_output=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        err = r.stderr.decode(errors="replace")
        # bsdtar 3.6 exits 0 after skipping damage: count that as an error.
        ok = r.returncode == 0 and "Damaged tar archive" not in err
    except subprocess.TimeoutExpired:
        ok, err = False, "timed out"
    return Extraction(ok, regular_files(dest), err.strip())


@dataclass
class Ours:
    exit_code: int
    files: dict[bytes, str]
    report: dict
    shard: dict
    stderr: str
    mode: str = "extract"


def indexed_files(out: Path, archive: Path) -> dict[bytes, str]:
    """What `--mode index` serves: each entry's bytes, read from the tar at
    its offset and length, under its name."""
    index = out / "index" / "s.json"
    if not index.is_file():
        return {}
    data = archive.read_bytes()
    files = json.loads(index.read_text())["files"]
    return {
        os.fsencode(normal(name)): bytes_digest(data[e["offset"] : e["offset"] + e["length"]])
        for name, e in files.items()
    }


def run_shardprep(binary: Path, archive: Path, work: Path, mode: str = "extract") -> Ours:
    shards = work / "in"
    shards.mkdir()
    shutil.copyfile(archive, shards / "s.tar")
    out = work / "out"
    r = subprocess.run(
        [str(binary), "run", "--input", str(shards), "--output", str(out), "--workers", "1", "--mode", mode],
        capture_output=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    report = json.loads((out / "report.json").read_text())
    shard = next(
        (s for s in report.get("shards", []) + report.get("failures", []) if s.get("name") == "s.tar"),
        {},
    )
    files = regular_files(out / "data") if mode == "extract" else indexed_files(out, archive)
    return Ours(r.returncode, files, report, shard, r.stderr.decode(errors="replace"), mode)


def normal(name: str) -> str:
    """A member name as it lands under data/: no `./` segments, no repeated `/`."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def stripped(name: str) -> str:
    """A refused name as GNU tar and bsdtar would place it: leading `/`, `.`,
    `..` and a drive prefix (`c:`) removed, as they do for unsafe names."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if parts and len(parts[0]) >= 2 and parts[0][1] == ":":
        parts[0] = parts[0][2:]
    while parts and parts[0] in ("", ".", ".."):
        parts.pop(0)
    return "/".join(parts)


def refused(shard: dict) -> dict[str, str]:
    """Members the shard refused or warned about, under the names the tars
    would give them: name → kind."""
    out = {}
    for i in shard.get("issues", []):
        out[normal(i["member"])] = i["kind"]
        out.setdefault(stripped(i["member"]), i["kind"])
    return out


def lossy(name: bytes) -> str:
    return name.decode("utf-8", errors="replace")


@dataclass
class Verdict:
    archive: str
    gnu_ok: bool
    bsd_ok: bool
    reference: str
    shard_state: str
    matched: int = 0
    refused: int = 0
    problems: list[str] = field(default_factory=list)
    known: str = ""


def gnu_reads(gnu: Extraction, bsd: Extraction, partial_block: bool) -> bool:
    """Whether GNU tar's tree is the reference.

    GNU tar 1.34 exits 0 on an archive that ends inside a 512-byte block (a
    cut inside a header): it drops the partial header without a word, and
    with it the rest of the shard. bsdtar says "Truncated tar archive".
    That is GNU tar erring, so bsdtar's verdict stands.
    """
    return gnu.ok and not (partial_block and not bsd.ok)


def judge(name: str, gnu: Extraction, bsd: Extraction, ours: Ours, partial_block: bool = False) -> Verdict:
    if not gnu_reads(gnu, bsd, partial_block):
        gnu = Extraction(False, gnu.files, gnu.stderr)
    ref_name = "gnu" if gnu.ok else ("bsdtar" if bsd.ok else "none")
    state = ours.shard.get("state", "missing")
    v = Verdict(name, gnu.ok, bsd.ok, ref_name, state)
    if ref_name == "none":
        judge_unreadable(v, gnu, bsd, ours)
        return v
    ref = gnu if gnu.ok else bsd
    if state != "done":
        v.problems.append(
            f"{ref_name} reads it but shardprep's shard is {state}: {ours.shard.get('error')}"
        )
    issues = refused(ours.shard)
    missing = []
    for rel, digest in sorted(ref.files.items()):
        got = ours.files.get(rel)
        if got == digest:
            v.matched += 1
        elif normal(lossy(rel)) in issues and got is None:
            v.refused += 1
        elif got is None:
            missing.append(rel)
        else:
            v.problems.append(f"{lossy(rel)!r}: bytes differ from {ref_name}'s")
    # Where GNU tar erred (so bsdtar is the reference), a member GNU tar did
    # extract may keep GNU tar's name (a global PAX path, which bsdtar
    # ignores): it stands in for one missing bsdtar file.
    gnu_named = [] if gnu.ok else [r for r in ours.files if r not in ref.files and ours.files[r] == gnu.files.get(r)]
    for rel in missing[len(gnu_named) :]:
        v.problems.append(f"{lossy(rel)!r}: extracted by {ref_name}, missing from data/ and not in the report")
    v.matched += min(len(gnu_named), len(missing))
    for rel in sorted(set(ours.files) - set(ref.files) - set(gnu_named)):
        v.problems.append(f"{lossy(rel)!r}: in data/ but {ref_name} wrote no such file")
    v.problems.extend(count_problems(ours))
    return v


def count_problems(ours: Ours) -> list[str]:
    """The shard's counts agree with what it wrote and named."""
    c = ours.shard.get("counts") or {}
    if not c or ours.mode != "extract":
        return []
    out = []
    rejected = sum(c.get("rejected_members", {}).values())
    if c.get("files_extracted", 0) + rejected > c.get("members", 0):
        out.append(f"counts: {c.get('files_extracted')} extracted + {rejected} refused > {c.get('members')} members")
    listed = sum(1 for i in ours.shard.get("issues", []) if i["kind"] in c.get("rejected_members", {}))
    if listed + ours.shard.get("issues_not_listed", 0) < rejected:
        out.append(f"counts: {rejected} members refused, {listed} named in issues")
    if len(ours.files) > c.get("files_extracted", 0) + c.get("captions_written", 0):
        out.append(f"counts: {len(ours.files)} files in data/, {c.get('files_extracted')} counted as extracted")
    return out


def judge_unreadable(v: Verdict, gnu: Extraction, bsd: Extraction, ours: Ours) -> None:
    """Neither tar reads it: what we wrote must be what one of them wrote."""
    for rel, digest in sorted(ours.files.items()):
        if digest in (gnu.files.get(rel), bsd.files.get(rel)):
            v.matched += 1
        else:
            v.problems.append(f"{lossy(rel)!r}: neither GNU tar nor bsdtar wrote these bytes")
    if v.shard_state == "failed" and "s.tar" not in str(ours.shard.get("error", "")):
        v.problems.append(f"the shard's error does not name it: {ours.shard.get('error')}")
    named = len(ours.shard.get("issues", []))
    if v.shard_state == "done" and len(ours.files) + named < max(len(gnu.files), len(bsd.files)):
        v.problems.append("both tars refuse it, shardprep finished it with fewer files than they wrote")


def compare(binary: Path, archive: Path, label: str | None = None, mode: str = "extract") -> Verdict:
    """One archive three ways; `mode="index"` holds `--mode index`'s entries
    (bytes at offset and length in the tar) to the same reference."""
    with tempfile.TemporaryDirectory(prefix="tarcorpus-") as tmp:
        t = Path(tmp)
        gnu = extract_with(["tar"], archive, t / "gnu")
        bsd = extract_with(["bsdtar"], archive, t / "bsd")
        (t / "sp").mkdir()
        ours = run_shardprep(binary, archive, t / "sp", mode)
        partial = archive.stat().st_size % 512 != 0
        v = judge(label or archive.name, gnu, bsd, ours, partial)
        known = KNOWN_REFERENCE_BUGS.get(hashlib.sha256(archive.read_bytes()).hexdigest())
        if known and v.problems:
            v.known, v.problems = f"{known} (was: {'; '.join(v.problems)})", []
        return v


def member_offsets(archive: Path) -> list[int]:
    """Offsets of header blocks, found by walking ustar sizes (good enough to cut at)."""
    data = archive.read_bytes()
    offsets, pos = [], 0
    while pos + 512 <= len(data):
        block = data[pos : pos + 512]
        if block == bytes(512):
            break
        offsets.append(pos)
        raw = block[124:136]
        try:
            size = 0 if raw[0] & 0x80 else int(raw.split(b"\0")[0].strip() or b"0", 8)
        except ValueError:
            break
        typeflag = block[156:157]
        if typeflag in b"12346" and typeflag != b"":
            size = 0
        pos += 512 + (size + 511) // 512 * 512
    return offsets


def cuts(archive: Path, work: Path) -> list[tuple[str, Path]]:
    """The archive cut before each member header after the first, and inside the last header."""
    data = archive.read_bytes()
    out = []
    for n, off in enumerate(member_offsets(archive)[1:], start=1):
        for label, at in ((f"cut@{n}", off), (f"cut@{n}+100", off + 100)):
            p = work / f"{archive.stem}-{label}.tar"
            p.write_bytes(data[:at])
            out.append((f"{archive.name} {label}", p))
    return out


def archives(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found.extend(sorted(p.glob("*.tar")) if p.is_dir() else [p])
    return found


def print_table(verdicts: list[Verdict]) -> None:
    for v in verdicts:
        mark = "ok " if not v.problems else "BAD"
        print(
            f"{mark} {v.archive:<44} gnu={'ok' if v.gnu_ok else 'err'} "
            f"bsdtar={'ok' if v.bsd_ok else 'err'} ref={v.reference:<6} shard={v.shard_state:<6} "
            f"same={v.matched} refused={v.refused}"
        )
        for p in v.problems:
            print(f"      {p}")
        if v.known:
            print(f"      known difference of the reference: {v.known}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, type=Path)
    ap.add_argument("--cuts", action="store_true")
    ap.add_argument("--mode", choices=["extract", "index"], default="extract")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="tarcuts-") as tmp:
        for a in archives(args.paths):
            verdicts.append(compare(args.bin, a, mode=args.mode))
            if args.cuts:
                verdicts.extend(compare(args.bin, p, label, args.mode) for label, p in cuts(a, Path(tmp)))
    print_table(verdicts)
    bad = sum(1 for v in verdicts if v.problems)
    print(f"{len(verdicts)} archives, {bad} with problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
