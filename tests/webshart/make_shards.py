"""Builds small webdataset shards with real images for the webshart tests.

Shards: PNG/JPG/JPEG images with JSONs (DALLE-3 fields), PAX long and
non-ASCII names, JSONs without width, a caption list, a `.txt` member, a
shard in a subfolder, and one shard cut off mid-member (it must get no index).

    python make_shards.py OUT_DIR [--seed N]
"""

import argparse
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image

FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "JPG": "JPEG"}


def image_bytes(rng, ext, w, h):
    img = Image.new("RGB", (w, h))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(w * h)])
    buf = io.BytesIO()
    kwargs = {"quality": 80} if FORMATS[ext] == "JPEG" else {}
    if FORMATS[ext] == "JPEG" and rng.random() < 0.5:
        kwargs["exif"] = b"Exif\x00\x00" + bytes(rng.randrange(256) for _ in range(rng.randrange(100, 30000)))
    img.save(buf, FORMATS[ext], **kwargs)
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def sample(rng, key, ext, with_width=True, caption=None):
    w, h = rng.randrange(8, 90), rng.randrange(8, 90)
    img = image_bytes(rng, ext, w, h)
    meta = {"image_name": f"{key}.{ext}", "short_caption": caption or f"caption of {key} {rng.random():.6f}",
            "long_caption": "long " * rng.randrange(1, 20)}
    if with_width:
        meta["width"], meta["height"] = w, h
    return img, json.dumps(meta).encode()


def write_shard(path, rng, n, prefix, fmt=tarfile.PAX_FORMAT):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tar:
        exts = ["png", "jpg", "jpeg", "JPG"]
        for i in range(n):
            key = f"{prefix}{i:05d}"
            if i % 7 == 3:
                key = f"{prefix}{i:05d}-" + "long-name-" * 15  # > 100 bytes: PAX path
            if i % 11 == 5:
                key = f"{prefix}{i:05d}-ünïcödé"
            ext = exts[i % len(exts)]
            caption = ["", "first of a list", "second"] if i % 13 == 6 else None
            img, meta = sample(rng, key, ext, with_width=(i % 5 != 2), caption=caption)
            if i % 2:
                add(tar, f"{key}.json", meta)
                add(tar, f"{key}.{ext}", img)
            else:
                add(tar, f"{key}.{ext}", img)
                add(tar, f"{key}.json", meta)
        add(tar, f"{prefix}notes.txt", b"not a caption")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--samples", type=int, default=40)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    write_shard(out / "data-000000.tar", rng, args.samples, "a")
    write_shard(out / "data-000001.tar", rng, args.samples, "b", fmt=tarfile.GNU_FORMAT)
    write_shard(out / "sub" / "data-000002.tar", rng, args.samples // 2, "c")
    cut = out / "data-000003.tar"
    write_shard(cut, rng, args.samples // 2, "d")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])


if __name__ == "__main__":
    main()
