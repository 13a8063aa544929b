import os
import sys

import numpy as np
import pytest

import capgen.features.extract as extract_mod
from capgen.data import prepare_dataset
from capgen.data.synthetic import make_synthetic_dataset
from capgen.errors import FeatureCacheError, ImageLoadError
from capgen.features import FeatureCache, extract_features
from conftest import run_torchrun


def test_extract_and_load(prepared, tiny_encoder, tmp_path):
    res = extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, batch_size=4, progress=False)
    assert res.images == res.extracted == 30 and not res.failed
    cache = FeatureCache.open(tmp_path / "f")
    cache.check(prepared, "test", encoder="tiny-test")
    ids = [r.image for r in prepared.split("val")]
    pooled, grid = cache.pooled(ids), cache.grid(ids)
    assert pooled.shape == (len(ids), 8) and grid.shape == (len(ids), 16, 8) and grid.dtype == np.float32
    np.testing.assert_allclose(pooled, grid.mean(1), atol=2e-2)  # stored as float16
    assert cache.meta["encoder"]["preprocess"]["size"] == 32
    # same rows whatever order they are asked in
    np.testing.assert_array_equal(cache.grid(ids[::-1]), grid[::-1])
    # a second run finds the cache complete and does nothing
    assert extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, progress=False).extracted == 0


def test_checks_say_what_differs(prepared, tiny_encoder, tmp_path):
    extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, split="test", progress=False)
    cache = FeatureCache.open(tmp_path / "f")
    with pytest.raises(FeatureCacheError, match="extracted with tiny-test, but efficientnet-lite2 is expected"):
        cache.check(encoder="efficientnet-lite2")
    with pytest.raises(FeatureCacheError, match=r"lacks features for 24 of 24 images .*split 'train'"):
        cache.check(prepared, "train")
    other = prepare_dataset(make_synthetic_dataset(tmp_path / "o", 10), tmp_path / "op", min_count=1)
    with pytest.raises(FeatureCacheError, match="images in"):
        cache.check(other, "test")
    with pytest.raises(FeatureCacheError, match="different .*--overwrite"):
        extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, split="val", progress=False)
    res = extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, split="val", overwrite=True, progress=False)
    assert res.images == 3


class _Interrupting:
    """Wraps a runner and raises KeyboardInterrupt on the given call, like Ctrl-C mid-run."""

    def __init__(self, runner, at_call: int):
        self.runner, self.at_call, self.calls = runner, at_call, 0
        self.backend, self.spec = runner.backend, runner.spec

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt
        return self.runner(x)


def test_interrupted_extraction_resumes_without_loss(prepared, tiny_encoder, tmp_path, monkeypatch):
    full = extract_features(prepared, tmp_path / "full", encoder=tiny_encoder, batch_size=4, progress=False)
    real = extract_mod.make_runner
    monkeypatch.setattr(extract_mod, "make_runner", lambda *a, **k: _Interrupting(real(*a, **k), at_call=3))
    with pytest.raises(KeyboardInterrupt):
        extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, batch_size=4, progress=False)
    with pytest.raises(FeatureCacheError, match="did not finish.*resume"):
        FeatureCache.open(tmp_path / "f")
    monkeypatch.setattr(extract_mod, "make_runner", real)
    res = extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, batch_size=4, progress=False)
    assert res.extracted == full.images - 8  # two batches of 4 were kept from the first run
    a, b = FeatureCache.open(tmp_path / "full"), FeatureCache.open(tmp_path / "f")
    ids = [r.image for r in prepared.records()]
    np.testing.assert_array_equal(a.grid(ids), b.grid(ids))
    assert not list((tmp_path / "f").glob("progress-*")) and not (tmp_path / "f" / "job.json").exists()


def test_bad_images_are_skipped_and_listed(tmp_path, tiny_encoder):
    src = make_synthetic_dataset(tmp_path / "s", 20)
    ds = prepare_dataset(src, tmp_path / "p", min_count=1)
    victim = ds.split("train")[2]
    victim.path.write_bytes(b"not a jpeg")
    res = extract_features(ds, tmp_path / "f", encoder=tiny_encoder, batch_size=4, progress=False)
    assert list(res.failed) == [victim.image] and "not an image" in res.failed[victim.image]
    cache = FeatureCache.open(tmp_path / "f")
    assert victim.image not in cache and len(cache) == 19
    with pytest.raises(FeatureCacheError, match="1 of them failed to load"):
        cache.check(ds, "train")
    with pytest.raises(ImageLoadError, match=victim.image):
        extract_features(ds, tmp_path / "g", encoder=tiny_encoder, strict=True, progress=False)


def test_unfinished_cache_from_other_settings_is_refused(prepared, tiny_encoder, tmp_path, monkeypatch):
    real = extract_mod.make_runner
    monkeypatch.setattr(extract_mod, "make_runner", lambda *a, **k: _Interrupting(real(*a, **k), at_call=2))
    with pytest.raises(KeyboardInterrupt):
        extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, batch_size=4, progress=False)
    monkeypatch.setattr(extract_mod, "make_runner", real)
    with pytest.raises(FeatureCacheError, match="unfinished extraction with different dtype"):
        extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, dtype="float32", progress=False)


@pytest.mark.slow
def test_torchrun_shards_across_two_ranks(prepared, tiny_encoder, tmp_path):
    single = extract_features(prepared, tmp_path / "one", encoder=tiny_encoder, batch_size=4, progress=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = run_torchrun(
        [
            "--nproc_per_node",
            "2",
            "-m",
            "capgen",
            "extract",
            str(prepared.root),
            "--out",
            str(tmp_path / "two"),
            "--encoder",
            tiny_encoder,
            "--batch-size",
            "4",
        ],
        env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = FeatureCache.open(tmp_path / "one"), FeatureCache.open(tmp_path / "two")
    ids = [r.image for r in prepared.records()]
    assert len(b) == single.images
    np.testing.assert_array_equal(a.grid(ids), b.grid(ids))


@pytest.mark.parametrize("damage", ["progress row 10**9", "grid.npy deleted"])
def test_a_damaged_unfinished_extraction_is_one_line_and_loses_nothing(
    prepared, tiny_encoder, tmp_path, monkeypatch, damage
):
    """Issue 20 #13: an unfinished cache damaged between runs: before, IndexError after all the work
    (a progress row of 10**9) or FileNotFoundError (grid.npy deleted)."""
    import json

    real = extract_mod.make_runner
    monkeypatch.setattr(extract_mod, "make_runner", lambda *a, **k: _Interrupting(real(*a, **k), at_call=3))
    with pytest.raises(KeyboardInterrupt):
        extract_features(prepared, tmp_path / "f", encoder=tiny_encoder, batch_size=4, progress=False)
    monkeypatch.setattr(extract_mod, "make_runner", real)
    out = tmp_path / "f"
    if damage == "grid.npy deleted":
        (out / "grid.npy").unlink()
        want = "grid.npy"
    else:
        p = sorted(out.glob("progress-*.json"))[0]
        d = json.loads(p.read_text())
        d["done"].append(10**9)
        p.write_text(json.dumps(d))
        want = p.name
    kept = sorted(q.name for q in out.iterdir())
    with pytest.raises(FeatureCacheError, match=f"{want}.*--overwrite"):
        extract_features(prepared, out, encoder=tiny_encoder, batch_size=4, progress=False)
    assert sorted(q.name for q in out.iterdir()) == kept  # nothing removed: the user decides
    res = extract_features(prepared, out, encoder=tiny_encoder, batch_size=4, overwrite=True, progress=False)
    assert res.images == len(prepared.records())
