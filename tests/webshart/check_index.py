"""Loads a folder of webshart index files through the real webshart and
checks every sample against the tars: the bytes webshart reads are the tar
member's, the caption is the JSON's caption field, the width and height are
the image's. The index holds every regular member except the images that have
no parquet row (the one sample rule of both modes, read here from the tar
itself: a top-level JSON with `width` and `height` names the image by
`image_name`). Exits non-zero on any mismatch.

    python check_index.py --index OUT/index --tars INPUT [--caption-field short_caption]
    python check_index.py --index OUT/index --tars REPO_COPY --hub OWNER/NAME [--subfolder S]

With --hub, webshart reads the Hub repository (tars and samples by HTTP) and
REPO_COPY is a local copy of the repository to compare with.
"""

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import webshart
from PIL import Image

IMAGE_EXTS = {"png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"}


def key_of(name):
    """webshart's sample key: the name up to its last dot."""
    return name.rsplit(".", 1)[0] if "." in name else name


def caption_of(meta, field):
    """The caption as shardprep's rows read it: the string, or the first non-blank string of a list."""
    if not isinstance(meta, dict):
        return None
    v = meta.get(field)
    if isinstance(v, list):
        v = next((s for s in v if isinstance(s, str) and s.strip()), None)
    return v if isinstance(v, str) and v.strip() else None


def rowed_images(members):
    """Images a parquet row names: top-level JSONs with width and height, by their image_name."""
    out = set()
    for name, data in members.items():
        if not name.endswith(".json") or "/" in name:
            continue
        try:
            meta = json.loads(data)
        except ValueError:
            continue
        if isinstance(meta, dict) and "width" in meta and "height" in meta:
            if isinstance(meta.get("image_name"), str):
                out.add(meta["image_name"])
    return out


def expected_names(members):
    """The members the index lists: all but the images without a row."""
    rowed = rowed_images(members)
    def is_image(n):
        return ("." in n and n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS)
    return sorted(n for n in members if not is_image(n) or n in rowed)


def tar_members(path):
    """Regular members of a tar: name -> bytes (the later copy wins)."""
    out = {}
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if m.isreg():
                out[m.name] = tar.extractfile(m).read()
    return out


class Checker:
    def __init__(self, caption_field, repo_copy=None):
        self.field = caption_field
        self.repo_copy = repo_copy
        self.problems = []
        self.samples = 0
        self.files = 0

    def bad(self, shard, name, what):
        self.problems.append(f"{shard}: {name}: {what}")

    def local_tar(self, tar_path):
        """The local tar of a shard webshart names by path or by Hub URL."""
        if self.repo_copy is None:
            return Path(tar_path)
        return self.repo_copy / tar_path.split("/resolve/main/", 1)[1]

    def shard(self, ds, loader, idx):
        info = ds.get_shard_info(idx)
        shard = info["name"]
        local = self.local_tar(info["tar_path"])
        members = tar_members(local)
        if info["size"] != local.stat().st_size:
            self.bad(shard, "-", f"filesize {info['size']} != tar size")
        names = ds.list_files_in_shard(idx)
        want = expected_names(members)
        if sorted(names) != want:
            extra = sorted(set(names) - set(want))[:5]
            missing = sorted(set(want) - set(names))[:5]
            self.bad(shard, "-", f"index names differ from the tar: extra {extra}, missing {missing}")
        reader = ds.open_shard(idx)
        for i, name in enumerate(reader.filenames()):
            self.files += 1
            if reader.read_file(i) != members.get(name):
                self.bad(shard, name, "file bytes differ from the tar member")
        jsons = {}
        for name, data in members.items():
            if name.endswith(".json"):
                try:
                    jsons[key_of(name)] = json.loads(data)
                except ValueError:
                    jsons[key_of(name)] = None
        for i, name in enumerate(ds.list_samples_in_shard(idx)):
            self.samples += 1
            self.sample(shard, loader.load_sample(idx, i), name, members, jsons)

    def sample(self, shard, entry, name, members, jsons):
        if entry is None:
            self.bad(shard, name, "webshart returned no entry")
            return
        if entry.path != name:
            self.bad(shard, name, f"entry path {entry.path!r}")
        if bytes(entry.data) != members.get(name):
            self.bad(shard, name, "sample bytes differ from the tar member")
            return
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if ext not in IMAGE_EXTS:
            return
        key = key_of(name)
        want = caption_of(jsons.get(key), self.field) if key in jsons else None
        if entry.caption != want:
            self.bad(shard, name, f"caption {entry.caption!r}, JSON says {want!r}")
        size = Image.open(io.BytesIO(members[name])).size
        if (entry.width, entry.height) != size:
            self.bad(shard, name, f"size {entry.width}x{entry.height}, image is {size[0]}x{size[1]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="folder of <shard>.json index files")
    ap.add_argument("--tars", required=True, help="folder of the tars")
    ap.add_argument("--caption-field", default="short_caption")
    ap.add_argument("--hub", help="read the tars from this Hub dataset repository (OWNER/NAME)")
    ap.add_argument("--subfolder", help="with --hub: the folder of the repository")
    args = ap.parse_args()
    index = str(Path(args.index).resolve())
    if args.hub:
        ds = webshart.discover_dataset(args.hub, subfolder=args.subfolder, metadata=index)
        check = Checker(args.caption_field, Path(args.tars))
    else:
        ds = webshart.discover_dataset(str(Path(args.tars).resolve()), metadata=index)
        check = Checker(args.caption_field)
    loader = webshart.TarDataLoader(ds)
    found = set()
    for idx in range(ds.num_shards):
        info = ds.get_shard_info(idx)
        # A Hub shard is named by its file name; its index is at its path in the repository.
        found.add(str(check.local_tar(info["tar_path"]).relative_to(args.tars))[: -len(".tar")]
                  if args.hub else info["name"])
        check.shard(ds, loader, idx)
    indexed = {str(p.relative_to(args.index))[: -len(".json")] for p in Path(args.index).rglob("*.json")}
    if found != indexed:
        check.problems.append(f"webshart found shards {sorted(found)}, index files {sorted(indexed)}")
    tars = {str(p.relative_to(args.tars))[: -len(".tar")] for p in Path(args.tars).rglob("*.tar")}
    summary = {"shards": len(found), "without_index": sorted(tars - found), "files": check.files,
               "samples": check.samples, "problems": len(check.problems)}
    for p in check.problems[:50]:
        print("MISMATCH", p)
    print(json.dumps(summary))
    return 1 if check.problems or not found else 0


if __name__ == "__main__":
    sys.exit(main())
