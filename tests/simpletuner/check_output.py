#!/usr/bin/env python3
"""Run the real SimpleTuner's data-backend setup on a shardprep output folder.

    check_output.py OUT [--entry FILE] [--caption-strategy S] [--caption-column C]
                        [--json FILE] [--keep-simpletuner-files] [--decode N|all]

Run it with the Python of the venv that `setup.sh` makes. It calls
`simpletuner.helpers.data_backend.factory.configure_multi_databackend` exactly as
`Trainer.init_data_backend` does, on CPU, with OUT/multidatabackend.json (or --entry; the
overrides are written to a copy), then asks SimpleTuner's own objects what they ended up with:
which images it discovered, which it put into aspect buckets, why it rejected the others (its
`_process_for_bucket` statistics, one image at a time), which caption it gives each accepted
image (the sampler's `PromptHandler.magic_prompt` and the text-embed step's records from
`get_all_captions`) compared with the parquet's caption column read by pyarrow, and whether
each accepted image decodes and prepares (`caching.vae.prepare_sample`).

Stubbed, because they need model weights or a GPU (everything else is SimpleTuner's code):
  * the model: SimpleTuner's real SDXL class, built from a folder holding only
    scheduler/scheduler_config.json; no weights are loaded, text_encoders/tokenizers are None;
  * model.get_vae / get_vae_for_dataset_type return None, and --vae_cache_ondemand is set, so
    no image is VAE-encoded;
  * the text-embed cache records the prompts it is given instead of encoding them.

A `type: webshart` entry (`shardprep run --mode index`) is read the same way through
SimpleTuner's WebshartDataBackend and WebshartMetadataBackend: discovered = the image samples
its data backend lists from the indexes, rejected = its bucketing statistics (it buckets from
the index's width/height), captions = the webshart caption strategy's, compared with the
parquet's; `per_sample` in the summary gives each accepted member's caption and the size
SimpleTuner bucketed it by, for checks against the tars.

It prints one JSON summary on stdout and exits 0 when the unpatched setup completes, 1 when it
raised (the summary then says where), 2 on a usage error. When the unpatched setup dies on a
missing caption `.txt`, a second run with one diagnostic patch (a missing `.txt` raises
SimpleTuner's own CaptionNotFoundError, which `get_all_captions` already skips) measures the
rest; the exit code stays 1. The files SimpleTuner writes into OUT are listed and removed
again unless --keep-simpletuner-files.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MISSING_TXT_PATCH = "a missing caption .txt raises CaptionNotFoundError (skipped by get_all_captions)"


# --------------------------------------------------------------------------- parent process
def load_entries(a):
    path = a.entry or os.path.join(a.out, "multidatabackend.json")
    with open(path) as f:
        entries = json.load(f)
    overrides = {}
    if a.caption_strategy:
        overrides["caption_strategy"] = a.caption_strategy
        entries[0]["caption_strategy"] = a.caption_strategy
    if a.caption_column:
        overrides["parquet.caption_column"] = a.caption_column
        entries[0].setdefault("parquet", {})["caption_column"] = a.caption_column
    return path, entries, overrides


def files_under(root):
    """Every file under root (path -> (size, mtime)), shardprep's own state folder aside."""
    seen = {}
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".shardprep"]
        for n in names:
            p = os.path.join(d, n)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            seen[p] = (st.st_size, st.st_mtime_ns)
    return seen


def new_files(root, before):
    return sorted(p for p, v in files_under(root).items() if before.get(p) != v)


def remove(paths, keep_dirs):
    """Removes the files SimpleTuner wrote, then the folders it made once they are empty."""
    dirs = set()
    for p in paths:
        if os.path.exists(p):
            os.remove(p)
        d = os.path.dirname(p)
        while d not in keep_dirs and d != os.path.dirname(d):
            dirs.add(d)
            d = os.path.dirname(d)
    for d in sorted(dirs, key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


def run_child(a, phase, entry_file, work):
    result_file = os.path.join(work, f"result-{phase}.json")
    log_file = os.path.join(work, f"simpletuner-{phase}.log")
    cmd = [sys.executable, os.path.abspath(__file__), a.out, "--_child", phase,
           "--_entry", entry_file, "--_work", work, "--_result", result_file,
           "--decode", str(a.decode), "--model-family", a.model_family]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               SIMPLETUNER_LOG_LEVEL=os.environ.get("SIMPLETUNER_LOG_LEVEL", "WARNING"))
    t0 = time.time()
    with open(log_file, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with open(result_file) as f:
            r = json.load(f)
    except (OSError, ValueError) as e:
        r = {"crashed": f"the SimpleTuner process left no result (exit {rc}, {e}); see {log_file}"}
    r["log"] = log_file
    r["seconds"] = round(time.time() - t0, 1)
    return r


def missing_txt(r):
    e = r.get("error") or {}
    return e.get("type") == "FileNotFoundError" and ".txt" in e.get("message", "")


def parent(a):
    a.out = os.path.abspath(a.out)
    entry_file, entries, overrides = load_entries(a)
    work = a.work or tempfile.mkdtemp(prefix="st-check-")
    os.makedirs(work, exist_ok=True)
    if overrides:
        entry_file = os.path.join(work, "multidatabackend.json")
        with open(entry_file, "w") as f:
            json.dump(entries, f, indent=2)
    entry = entries[0]
    # A bucket cache from an earlier SimpleTuner run would skip discovery: start from scratch.
    data_dir = str(entry.get("instance_data_dir", ""))
    stale = [os.path.join(data_dir, f"aspect_ratio_bucket_{k}_{entry['id']}.json")
             for k in ("indices", "metadata")]
    if is_webshart(entry):
        # SimpleTuner keeps a webshart backend's bucket and caption caches in its cache_dir,
        # and webshart its copies of the indexes in cache_dir/metadata_cache (never refreshed).
        data_dir = str((entry.get("webshart") or {}).get("cache_dir", ""))
        stale = [os.path.join(data_dir, f"aspect_ratio_bucket_{k}_{entry['id']}.json")
                 for k in ("indices", "metadata")] + [
            os.path.join(data_dir, f"aspect_ratio_bucket_indices_{entry['id']}.json_captions.json")] + [
            os.path.join(r, n) for r, _, ns in os.walk(os.path.join(data_dir, "metadata_cache")) for n in ns]
    stale_removed = [p for p in stale if os.path.isfile(p)]
    for p in stale_removed:
        os.remove(p)
    before = files_under(a.out)
    dirs_before = {d for d, _, _ in os.walk(a.out)}

    strict = run_child(a, "strict", entry_file, work)
    wrote = new_files(a.out, before)
    measured, tolerant = strict, None
    if missing_txt(strict):
        remove(wrote, dirs_before)  # its bucket cache would short-cut the second run's discovery
        tolerant = run_child(a, "tolerant", entry_file, work)
        measured = tolerant
        wrote = sorted(set(wrote) | set(new_files(a.out, before)))
    if not a.keep_simpletuner_files:
        remove(wrote, dirs_before)

    ok = not strict.get("error") and not strict.get("crashed")
    summary = {
        "out": a.out,
        "entry_file": entry_file,
        "entry_overrides": overrides,
        "type": entry.get("type"),
        "instance_data_dir": entry.get("instance_data_dir"),
        "caption_strategy": entry.get("caption_strategy"),
        "caption_column": entry.get("parquet", {}).get("caption_column"),
        "setup_ok": ok,
        "setup_error": strict.get("error") or strict.get("crashed"),
        "measured_by": "strict" if tolerant is None else "tolerant: " + MISSING_TXT_PATCH,
        "tolerant_setup_error": None if tolerant is None else (tolerant.get("error") or tolerant.get("crashed")),
        **{k: measured.get(k) for k in ("discovered", "accepted", "buckets", "rejected",
                                         "rejected_examples", "captions", "images", "stubs",
                                         "filtering_statistics", "config_warnings", "note",
                                         "webshart", "per_sample", "accepted_names")},
        "on_disk": on_disk_webshart(a.out, entry) if is_webshart(entry) else on_disk(entry),
        "stale_bucket_caches_removed": stale_removed,
        "simpletuner_wrote": [os.path.relpath(p, a.out) for p in wrote],
        "simpletuner_files_removed": not a.keep_simpletuner_files,
        "logs": [strict["log"]] + ([tolerant["log"]] if tolerant else []),
        "seconds": round(strict["seconds"] + (tolerant["seconds"] if tolerant else 0), 1),
    }
    text = json.dumps(summary, indent=2, ensure_ascii=False, default=str)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    return 0 if ok else 1


def is_webshart(entry):
    return entry.get("type") == "webshart"


def parquet_of(out, entry):
    """The parquet a webshart entry's output has beside it (the entry itself names none)."""
    return os.path.join(out, f"{entry['id']}.parquet")


def on_disk_webshart(out, entry):
    """The tars at `source` and the indexes at `metadata`, read with os and pyarrow."""
    import pyarrow.parquet as pq
    facts = {}
    for key, ext in (("source", ".tar"), ("metadata", ".json")):
        d = str(entry.get(key, ""))
        facts[key.replace("source", "tars").replace("metadata", "indexes")] = sorted(
            os.path.relpath(os.path.join(r, n), d) for r, _, ns in os.walk(d) for n in ns
            if n.endswith(ext)) if os.path.isdir(d) else None
    p = parquet_of(out, entry)
    facts["parquet_rows"] = pq.read_metadata(p).num_rows if os.path.isfile(p) else None
    return facts


def on_disk(entry):
    """What is in data/ and the parquet, read with os and pyarrow (not SimpleTuner)."""
    import pyarrow.parquet as pq
    d = str(entry.get("instance_data_dir", ""))
    names = os.listdir(d) if os.path.isdir(d) else []
    facts = {"images": sum(n.lower().endswith(IMAGE_EXTS) for n in names),
             "txt": sum(n.endswith(".txt") for n in names),
             "json": sum(n.endswith(".json") for n in names)}
    p = entry.get("parquet", {}).get("path")
    facts["parquet_rows"] = pq.read_metadata(p).num_rows if p and os.path.isfile(p) else None
    return facts


# --------------------------------------------------------------------------- child process
def child(a):
    result = {"phase": a._child}
    try:
        run_setup(a, result)
    except Exception as e:  # outside the trainer's call: the harness itself failed
        result["crashed"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2500:]}"
    with open(a._result, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False, default=str)


def simpletuner_frames(tb):
    frames = [f for f in traceback.extract_tb(tb) if "simpletuner" in f.filename]
    return " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames[-6:]))


def fake_model_dir(work):
    """A folder that holds only a scheduler config: enough to build the SDXL class."""
    from diffusers import DDPMScheduler
    d = os.path.join(work, "fake-sdxl")
    DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  num_train_timesteps=1000, steps_offset=1).save_pretrained(os.path.join(d, "scheduler"))
    return d


def build_trainer_state(a):
    """The parsed args, accelerator and model, registered as Trainer's setup does."""
    import torch
    from accelerate import Accelerator
    from simpletuner.helpers.configuration.cmd_args import parse_cmdline_args
    from simpletuner.helpers.distillation.requirements import EMPTY_PROFILE
    from simpletuner.helpers.models.registry import ModelRegistry
    from simpletuner.helpers.training.state_tracker import StateTracker

    args = parse_cmdline_args([
        f"--model_family={a.model_family}", "--model_type=lora",
        f"--pretrained_model_name_or_path={fake_model_dir(a._work)}",
        f"--output_dir={os.path.join(a._work, 'output-' + a._child)}",
        f"--data_backend_config={a._entry}", "--train_batch_size=1",
        "--optimizer=adamw_bf16", "--vae_cache_ondemand",
    ], exit_on_error=True)
    accelerator = Accelerator(cpu=True)
    model = ModelRegistry.model_families()[a.model_family](args, accelerator)
    model.get_vae = lambda *x, **k: None
    model.get_vae_for_dataset_type = lambda *x, **k: None
    StateTracker.set_args(args)
    StateTracker.set_accelerator(accelerator)
    StateTracker.set_model_family(a.model_family)
    StateTracker.set_model(model)
    StateTracker.set_weight_dtype(torch.float32)
    StateTracker.set_distiller_profile(None, EMPTY_PROFILE)
    return args, accelerator, model, EMPTY_PROFILE


def install_stubs(a, result):
    """Records prompts instead of encoding them; optionally the missing-.txt patch."""
    from simpletuner.helpers.caching.text_embeds import TextEmbeddingCache
    from simpletuner.helpers.data_backend import factory
    from simpletuner.helpers.prompts import CaptionNotFoundError, PromptHandler

    records = []

    class RecordingTextEmbeddingCache(TextEmbeddingCache):
        def encode_dropout_caption(self, *x, **k):
            return None

        def compute_embeddings_for_prompts(self, prompt_records, *x, **k):
            records.extend(prompt_records)
            return []

    factory.TextEmbeddingCache = RecordingTextEmbeddingCache
    result["stubs"] = [
        f"model: SimpleTuner's {a.model_family} class without weights (scheduler config only)",
        "model.get_vae / get_vae_for_dataset_type -> None, --vae_cache_ondemand",
        "TextEmbeddingCache.compute_embeddings_for_prompts records prompts, encode_dropout_caption no-op",
    ]
    if a._child == "tolerant":
        unpatched = PromptHandler.prepare_instance_prompt_from_textfile

        def tolerant(image_path, *x, **k):
            backend = k.get("data_backend")
            txt = os.path.splitext(image_path)[0] + ".txt"
            if backend is not None and not backend.exists(txt):
                raise CaptionNotFoundError(f"Caption file {txt} not found.")
            return unpatched(image_path, *x, **k)

        PromptHandler.prepare_instance_prompt_from_textfile = staticmethod(tolerant)
        result["stubs"].append("diagnostic patch: " + MISSING_TXT_PATCH)
    return records


def run_setup(a, result):
    with open(a._entry) as f:
        entry = json.load(f)[0]
    args, accelerator, model, profile = build_trainer_state(a)
    records = install_stubs(a, result)
    from simpletuner.helpers.data_backend import factory

    warnings = []
    unpatched_warning = factory.warning_log
    factory.warning_log = lambda m: (warnings.append(str(m)), unpatched_warning(m))
    try:
        factory.configure_multi_databackend(args, accelerator=accelerator, text_encoders=None,
                                            tokenizers=None, model=model, distiller_profile=profile,
                                            distillation_method=None)
    except Exception as e:
        result["error"] = {"type": type(e).__name__, "message": str(e)[:2000],
                           "where": simpletuner_frames(e.__traceback__)}
    finally:
        factory.warning_log = unpatched_warning
    result["config_warnings"] = warnings
    inspect_backend(a, entry, records, result)


def inspect_backend(a, entry, records, result):
    """What SimpleTuner ended up with, asked of its own objects."""
    from simpletuner.helpers.training.state_tracker import StateTracker

    bid = entry["id"]
    found = StateTracker.get_image_files(data_backend_id=bid) or {}
    found = sorted(found.keys() if isinstance(found, dict) else found)
    result["discovered"] = len(found)
    backend = StateTracker.get_data_backends().get(bid)
    if not backend or backend.get("metadata_backend") is None:
        result["note"] = "SimpleTuner never registered the backend (or without a metadata backend)"
        return
    meta, data = backend["metadata_backend"], backend["data_backend"]
    buckets = {k: list(v) for k, v in meta.aspect_ratio_bucket_indices.items()}
    accepted = sorted(p for v in buckets.values() for p in v)
    result["accepted"] = len(accepted)
    result["accepted_names"] = sorted(os.path.basename(
        data.parse_sample_id(p).filename if is_webshart(entry) else p) for p in accepted)
    result["buckets"] = {k: len(v) for k, v in buckets.items()}
    result["filtering_statistics"] = getattr(meta, "filtering_statistics", None)
    if is_webshart(entry):
        inspect_webshart(a, entry, records, result, meta, data, accepted)
        return
    rejected = rejections(meta, found, set(accepted))
    result["rejected"] = {k: len(v) for k, v in sorted(rejected.items())}
    result["rejected_examples"] = {k: v[:5] for k, v in sorted(rejected.items())}
    result["captions"], result["per_sample"] = compare_captions(entry, data, records, accepted,
                                                                meta.instance_data_dir)
    base = os.path.abspath(str(meta.instance_data_dir))
    record_sizes(result["per_sample"], meta, buckets, lambda p: os.path.relpath(p, base))
    result["images"] = prepare_images(a, bid, model_of(), data, accepted)


def record_sizes(per_sample, meta, buckets, name_of):
    """Each accepted image's size as SimpleTuner's metadata holds it, and its bucket."""
    for k, paths in buckets.items():
        for p in paths:
            facts = per_sample.setdefault(name_of(p), {})
            facts["original_size"] = (meta.get_metadata_by_filepath(p) or {}).get("original_size")
            facts["bucket"] = k


def inspect_webshart(a, entry, records, result, meta, data, accepted):
    """A webshart backend: what its data backend lists, its bucketing statistics, captions."""
    listed = [p for _, _, files in data.list_files(file_extensions=[e.strip(".") for e in IMAGE_EXTS])
              for p in files]
    result["discovered"] = len(listed)
    shards = []
    for i in range(data.num_shards()):
        info = data.dataset.get_shard_info(i)
        info = info if isinstance(info, dict) else {}
        shards.append({"tar": os.path.basename(str(info.get("tar_path") or info.get("name") or i)),
                       "samples": len(data.dataset.list_samples_in_shard(i))})
    result["webshart"] = {"backend": type(data).__name__, "metadata_backend": type(meta).__name__,
                          "cache_dir": data.cache_dir, "metadata_cache_dir": data.metadata_cache_dir,
                          "shard_cache_dir": data.shard_cache_dir, "shards": shards}
    stats = (result["filtering_statistics"] or {}).get("skipped", {})
    result["rejected"] = {k: v for k, v in sorted(stats.items()) if v and k != "already_exists"}
    result["rejected_examples"] = {"not in a bucket": [data.parse_sample_id(p).filename
                                                       for p in sorted(set(listed) - set(accepted))[:5]]}
    result["captions"], result["per_sample"] = compare_webshart_captions(a, entry, data, records, accepted)
    record_sizes(result["per_sample"], meta, meta.aspect_ratio_bucket_indices,
                 lambda sid: data.parse_sample_id(sid).filename)
    result["images"] = prepare_images(a, entry["id"], model_of(), data, accepted)


def compare_webshart_captions(a, entry, data, records, accepted):
    """Each accepted sample's webshart caption against its parquet row's (by member name)."""
    import pyarrow.parquet as pq
    from simpletuner.helpers.prompts import PromptHandler

    p = parquet_of(a.out, entry)
    want = {}
    if os.path.isfile(p):
        table = pq.read_table(p, columns=["filename", "caption"])
        want = {os.path.basename(f): c for f, c in zip(table.column(0).to_pylist(), table.column(1).to_pylist())}
    recorded = {}
    for r in records:
        ip = (r.get("metadata") or {}).get("image_path")
        if ip:
            recorded.setdefault(data.normalize_sample_id(ip), []).append(r["prompt"])
    c = caption_counts(records, recorded, accepted)
    per_sample = {}
    for sid in accepted:
        c["checked"] += 1
        name = data.parse_sample_id(sid).filename
        ok, sampler = sampler_caption(PromptHandler, entry, data, sid, entry.get("caption_strategy"), c, name)
        if not ok:
            continue
        embed = recorded.get(sid)
        per_sample[name] = {"sampler": sampler, "text_embed": embed}
        ref = as_list(want.get(name))
        if ref is None:
            c["no_parquet_row"] += 1
        else:
            judge_caption(c, name, ref, sampler, embed)
    return c, per_sample


def caption_counts(records, recorded, accepted):
    """The counters of a caption comparison, before any image is checked."""
    return {"checked": 0, "equal": 0, "equal_after_strip": 0, "mismatch": 0, "no_parquet_row": 0,
            "error": 0, "text_embed_records": len(records),
            "text_embed_images_outside_buckets": len(set(recorded) - set(accepted)), "examples": []}


def sampler_caption(prompt_handler, entry, data, image_path, strategy, c, name):
    """(True, caption list) as the trainer's sampler asks it of one image, or
    (False, None) with the error counted and kept as an example."""
    try:
        return True, as_list(prompt_handler.magic_prompt(
            image_path=image_path, use_captions=True, caption_strategy=strategy,
            prepend_instance_prompt=False, data_backend=data, instance_prompt=None,
            sampler_backend_id=entry["id"]))
    except Exception as e:
        c["error"] += 1
        if len(c["examples"]) < 5:
            c["examples"].append({"image": name, "error": f"{type(e).__name__}: {e}"[:200]})
        return False, None


def judge_caption(c, name, ref, sampler, embed):
    """Counts one image's sampler and text-embed captions against the parquet's `ref`."""
    if sampler == ref and embed == ref:
        c["equal"] += 1
    elif sampler == [x.strip() for x in ref] == embed:
        c["equal_after_strip"] += 1
    else:
        c["mismatch"] += 1
        if len(c["examples"]) < 5:
            c["examples"].append({"image": name, "parquet": ref, "sampler": sampler, "text_embed": embed})


def model_of():
    from simpletuner.helpers.training.state_tracker import StateTracker
    return StateTracker.get_model()


def rejections(meta, found, accepted):
    """reason -> image names, from SimpleTuner's own per-image bucketing statistics."""
    out = {}
    for p in found:
        if p in accepted:
            continue
        stats = {"skipped": {}}
        bucketed = meta._process_for_bucket(p, {}, metadata_updates={}, statistics=stats)
        reasons = [k for k, v in stats["skipped"].items() if v] or [
            "bucketed alone, dropped afterwards" if bucketed else "error in _process_for_bucket"]
        for r in reasons:
            out.setdefault(r, []).append(os.path.basename(p))
    return out


def as_list(v):
    if hasattr(v, "tolist"):
        v = v.tolist()
    if v is None:
        return None
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def compare_captions(entry, data, records, accepted, instance_dir):
    """Each accepted image's caption in SimpleTuner against the parquet's caption column."""
    import pyarrow.parquet as pq
    from simpletuner.helpers.prompts import PromptHandler

    pcfg = entry["parquet"]
    table = pq.read_table(pcfg["path"], columns=[pcfg["filename_column"], pcfg["caption_column"]])
    want = dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))
    recorded = {}
    for r in records:
        p = (r.get("metadata") or {}).get("image_path")
        if p:
            recorded.setdefault(p, []).append(r["prompt"])
    strategy = entry.get("caption_strategy")
    c = caption_counts(records, recorded, accepted)
    base = os.path.abspath(str(instance_dir))
    per_sample = {}
    for p in accepted:
        c["checked"] += 1
        name = os.path.relpath(p, base)
        ref = as_list(want.get(name))
        if ref is None:
            c["no_parquet_row"] += 1
            continue
        ok, sampler = sampler_caption(PromptHandler, entry, data, p, strategy, c, name)
        if ok:
            per_sample[name] = {"sampler": sampler, "text_embed": recorded.get(p)}
            judge_caption(c, name, ref, sampler, recorded.get(p))
    return c, per_sample


def prepare_images(a, bid, model, data, accepted):
    """Decode, crop and resize accepted images as VAE caching would (its CPU half)."""
    from simpletuner.helpers.caching.vae import prepare_sample

    sample = accepted if a.decode == "all" else accepted[: int(a.decode)]
    r = {"checked": 0, "prepared": 0, "errors": []}
    for p in sample:
        r["checked"] += 1
        try:
            prepare_sample(data_backend_id=bid, filepath=p, model=model)
            r["prepared"] += 1
        except Exception as e:
            if len(r["errors"]) < 5:
                r["errors"].append(f"{os.path.basename(p)}: {type(e).__name__}: {e}"[:200])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="shardprep's output folder")
    ap.add_argument("--entry", help="dataloader config (default OUT/multidatabackend.json)")
    ap.add_argument("--caption-strategy", help="override the entry's caption_strategy (in a copy)")
    ap.add_argument("--caption-column", help="override the entry's parquet.caption_column (in a copy)")
    ap.add_argument("--json", help="also write the summary to this file")
    ap.add_argument("--work", help="scratch folder for logs and results (default: a new temp dir)")
    ap.add_argument("--decode", default="all", help="how many accepted images to prepare: N or all")
    ap.add_argument("--model-family", default="sdxl")
    ap.add_argument("--keep-simpletuner-files", action="store_true",
                    help="leave the bucket caches SimpleTuner writes into OUT in place")
    for hidden in ("--_child", "--_entry", "--_work", "--_result"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.decode != "all" and not a.decode.isdigit():
        ap.error("--decode takes a number or 'all'")
    if a._child:
        child(a)
        return 0
    if not os.path.isdir(a.out):
        ap.error(f"{a.out} is not a folder")
    return parent(a)


if __name__ == "__main__":
    sys.exit(main())
