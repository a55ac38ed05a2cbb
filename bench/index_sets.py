"""Builds the two shard sets of bench/index.sh with real JPEGs.

    python index_sets.py OUT small|big SHARDS SAMPLES

small: ~30 KB JPEGs (DALLE-3's shape, small); big: ~4 MB JPEGs (noise
at 1600x1600, quality 95, so the bytes are real image data).
"""

import io
import json
import random
import sys
import tarfile
from pathlib import Path

from PIL import Image


def jpeg(rng, w, h, quality):
    img = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main():
    out, kind, shards, samples = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    w, h, q = (128, 128, 90) if kind == "small" else (1600, 1600, 95)
    rng = random.Random(5)
    out.mkdir(parents=True, exist_ok=True)
    pool = [jpeg(rng, w, h, q) for _ in range(8)]
    for s in range(shards):
        with tarfile.open(out / f"data-{s:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(samples):
                key = f"{s:04d}{i:06d}"
                img = pool[i % len(pool)]
                meta = json.dumps({"image_name": f"{key}.jpg", "width": w, "height": h,
                                   "short_caption": f"caption {key}", "long_caption": "x" * 400}).encode()
                for name, data in ((f"{key}.jpg", img), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
