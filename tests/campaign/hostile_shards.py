"""Random hostile webdataset shards for the campaign (test_campaign.py).

Each sample is one of ~30 kinds, drawn from a seeded `random.Random`: good
ones, JSONs without width or caption or not JSON at all, images that are
not images, names in two shards (whole samples, or only the image or the JSON
of an earlier shard's sample: a sample split across shards), in a sub-folder, with `./`, 120+ bytes
long or in Unicode, `.txt` members at a caption's path, links, folders,
duplicates within a shard. Shards are written in GNU, PAX or ustar format.
"""
import io, json, os, struct, tarfile, zlib

def png(w, h, seed):
    raw = b"".join(b"\x00" + bytes([(seed + x + y) % 256 for x in range(w) for _ in range(3)]) for y in range(h))
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

KINDS = ["ok"] * 8 + ["nowidth", "nojson", "noimage", "badimg", "upper", "jpgext", "unicode", "dup",
         "xdup", "subdir", "mismatch", "strwidth", "listcap", "nocap", "emptycap", "notobj", "badjson",
         "bom", "txtmember", "symlink", "hardlink", "dotslash", "longname", "jsonfirst", "zeroimg", "liedims",
         "dirmember", "nullcap", "floatwidth", "negwidth", "hugecap", "ximg", "xjson"]

def make_input(d, rng, shards=3, per=14):
    os.makedirs(d, exist_ok=True)
    for s in range(shards):
        members = []
        def add(name, data, **kw):
            members.append((name, data, kw))
        for i in range(per):
            kind = rng.choice(KINDS)
            key = f"s{s}_{i:03d}"
            if kind == "unicode":
                key = f"ü_{s}_{i} x"
            if kind in ("xdup", "ximg", "xjson"):
                key = f"s0_{i:03d}"
            if kind == "longname":
                key = "L" * 120 + f"{s}_{i}"
            w, h = rng.randint(1, 9), rng.randint(1, 9)
            img = png(w, h, i + s)
            ext = {"upper": "PNG", "jpgext": "jpg"}.get(kind, "png")
            prefix = {"subdir": "sub/", "dotslash": "./"}.get(kind, "")
            if kind == "badimg":
                img = b"\x89PNG garbage" + bytes(rng.randrange(256) for _ in range(20))
            if kind == "zeroimg":
                img = b""
            meta = {"image_name": f"{key}.{ext}", "short_caption": f"caption {key} {rng.random():.6f}", "width": w, "height": h}
            if kind == "nowidth": del meta["width"]
            if kind == "mismatch": meta["image_name"] = f"other_{key}.{ext}"
            if kind == "strwidth": meta["width"] = str(w)
            if kind == "floatwidth": meta["width"] = w + 0.5
            if kind == "negwidth": meta["width"] = -w
            if kind == "listcap": meta["short_caption"] = ["", f"list {key}"]
            if kind == "nocap": del meta["short_caption"]
            if kind == "emptycap": meta["short_caption"] = ""
            if kind == "nullcap": meta["short_caption"] = None
            if kind == "hugecap": meta["short_caption"] = "x" * 70000
            if kind == "liedims": meta["width"] = w + 3
            jb = json.dumps(meta, ensure_ascii=rng.random() < 0.5).encode()
            if kind == "notobj": jb = b"[1,2]"
            if kind == "badjson": jb = b"{\"image_name\": "
            if kind == "bom": jb = b"\xef\xbb\xbf" + jb
            img_m = (f"{prefix}{key}.{ext}", img)
            js_m = (f"{prefix}{key}.json", jb)
            order = [img_m, js_m]
            if kind == "noimage": order = [js_m]
            if kind in ("nojson", "ximg"): order = [img_m]
            if kind == "xjson": order = [js_m]
            if kind == "jsonfirst": order = [js_m, img_m]
            if kind == "dup": order = [img_m, js_m, js_m]
            for n, b in order:
                add(n, b)
            if kind == "txtmember": add(f"{key}.txt", b"member caption")
            if kind == "symlink": add(f"{key}_l.png", b"", type=tarfile.SYMTYPE, linkname=f"{key}.png")
            if kind == "hardlink": add(f"{key}_h.png", b"", type=tarfile.LNKTYPE, linkname=f"{key}.png")
            if kind == "dirmember": add(f"{key}_d", b"", type=tarfile.DIRTYPE)
        fmt = rng.choice([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
        path = os.path.join(d, f"data-{s:06d}.tar")
        try:
            with tarfile.open(path, "w", format=fmt) as t:
                for name, data, kw in members:
                    ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1700000000
                    for k, v in kw.items(): setattr(ti, k, v)
                    if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE): ti.size = 0
                    t.addfile(ti, io.BytesIO(data) if ti.size else None)
        except ValueError:
            with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
                for name, data, kw in members:
                    ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1700000000
                    for k, v in kw.items(): setattr(ti, k, v)
                    if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE): ti.size = 0
                    t.addfile(ti, io.BytesIO(data) if ti.size else None)
