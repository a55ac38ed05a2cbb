"""Opt-in (SHARDPREP_ENERGON=1; megatron-energon 7.4.1 needs torch: its venv
is ~5.7 GB, see tests/formats/README.md): energon's own loader reads the
dataset root shardprep writes (OUT/energon) with the sample loader it
writes, and yields exactly the samples with a parquet row, each with its
caption and image. Run: SHARDPREP_ENERGON=1 bash tests/formats/setup_energon.sh &&
SHARDPREP_ENERGON=1 .venv-energon/bin/python -m pytest -q tests/formats/test_energon.py
"""

import io
import json
import os

import pytest

if os.environ.get("SHARDPREP_ENERGON") != "1":
    pytest.skip("opt-in: SHARDPREP_ENERGON=1 with the venv of tests/formats/setup_energon.sh",
                allow_module_level=True)

energon = pytest.importorskip("megatron.energon")


def test_energon_loader_yields_the_kept_samples(indexed):
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset
    from PIL import Image
    import numpy as np

    ds = get_train_dataset(str(indexed.out / "energon"), batch_size=1, shuffle_buffer_size=None,
                           max_samples_per_sequence=None, worker_config=WorkerConfig.default_worker_config(0),
                           repeat=False)
    got = {}
    for batch in get_loader(ds):
        key = batch.__key__[0]
        assert key not in got, key
        got[key] = (batch.caption[0], batch.image[0])
    assert set(got) == set(indexed.kept)
    for key, (caption, image) in got.items():
        _, parts = indexed.kept[key]
        meta = json.loads(parts["json"])
        want = meta["short_caption"]
        if isinstance(want, list):
            want = next((c for c in want if c), "")
        assert caption == want, key
        _, raw = indexed.image_of(parts)
        pil = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        assert tuple(image.shape[1:]) == pil.shape[:2], key
