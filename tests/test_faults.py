"""Faults: concurrent writers, unwritten rows, full disks, loading from threads, server shutdown.
Nothing is lost: every output is valid or absent, and an earlier valid output survives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from capgen.cli import main
from capgen.errors import CapgenError
from conftest import TINY_ENCODER_MODULE, one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- 5: one writer per folder; unwritten or damaged rows never load ---------------------------------

# The tiny test encoder, 0.2 s per batch: slow enough to run two extractions at once.
SLOW_ENCODER_MODULE = (
    TINY_ENCODER_MODULE
    + """

import time


class _Slow(_Tiny):
    def forward(self, x):
        time.sleep(0.2)
        return super().forward(x) + 0.01


def build():
    return GridEncoder(_Slow(), Preprocess(size=32), name="slow-test", dim=8, grid_hw=(4, 4))
"""
)


def _python_env(*extra: Path) -> dict:
    import os

    import capgen

    src = Path(capgen.__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), *map(str, extra)]), "OMP_NUM_THREADS": "1"}


def test_two_extractions_into_one_folder(prepared, tmp_path, capsys, monkeypatch):
    import subprocess
    import time

    from capgen.features import FeatureCache

    mods = tmp_path / "slowmods"
    mods.mkdir()
    (mods / "capgen_slow_encoder.py").write_text(SLOW_ENCODER_MODULE)
    monkeypatch.syspath_prepend(str(mods))
    out = tmp_path / "feats"
    cmd = [
        sys.executable,
        "-m",
        "capgen",
        "extract",
        str(prepared.root),
        "--out",
        str(out),
        "--encoder",
        "capgen_slow_encoder:build",
        "--batch-size",
        "2",
        "--backend",
        "torch",
        "--threads",
        "1",
    ]
    first = subprocess.Popen(cmd, env=_python_env(mods), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("progress-*.json")):  # the first run is writing rows
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        one_line_error(capsys, cmd[3:] + ["--overwrite"], "another capgen process is writing this feature cache")
        stdout, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    cache = FeatureCache.open(out)
    cache.check(prepared, encoder="slow-test")
    assert len(cache) == len(prepared.records())


def _copy_feats(tiny_run, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "feats"
    shutil.copytree(tiny_run.root / "feats", out)
    return out


@pytest.mark.parametrize("damage", ["zero", "nan"])
def test_unwritten_or_nan_pooled_rows_never_load(tiny_run, tmp_path, damage):
    import numpy as np

    from capgen.features import FeatureCache

    out = _copy_feats(tiny_run, tmp_path)
    pooled = np.load(out / "pooled.npy", mmap_mode="r+")
    pooled[3:7] = 0 if damage == "zero" else np.nan
    pooled.flush()
    del pooled
    with pytest.raises(CapgenError, match="4 of .* never written or are not finite"):
        FeatureCache.open(out)


def test_nan_grid_features_are_a_named_error(tiny_run, tmp_path, capsys):
    import numpy as np

    out = _copy_feats(tiny_run, tmp_path)
    grid = np.load(out / "grid.npy", mmap_mode="r+")
    grid[0, 0, 0] = np.nan
    grid.flush()
    del grid
    one_line_error(
        capsys,
        [
            "train",
            "--data",
            tiny_run.prepared.root,
            "--features",
            out,
            "--model",
            "show_tell",
            "--out",
            tmp_path / "run",
            "--set",
            "epochs=1",
        ],
        "NaN or infinite",
    )
    assert not list((tmp_path / "run").glob("*.pt"))


def test_a_second_training_into_a_run_folder_is_refused(tiny_run, tmp_path, capsys):
    from capgen.io import folder_lock

    run = tmp_path / "run"
    with folder_lock(run, "training run"):  # as a running `capgen train` holds it
        one_line_error(
            capsys,
            [
                "train",
                "--data",
                tiny_run.prepared.root,
                "--features",
                tiny_run.root / "feats",
                "--model",
                "show_tell",
                "--out",
                run,
                "--set",
                "epochs=1",
            ],
            "another capgen process is writing this training run",
        )
        assert [p.name for p in run.iterdir()] == [".lock"]


@pytest.mark.parametrize(
    "meta_edit",
    [lambda m: m.pop("images"), lambda m: m.update(images=[1, 2]), lambda m: m["encoder"].update(grid="9x9")],
)
def test_malformed_cache_meta_is_a_named_error(tiny_run, tmp_path, meta_edit):
    import json

    from capgen.features import FeatureCache

    out = _copy_feats(tiny_run, tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    meta_edit(meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CapgenError, match="malformed feature cache metadata"):
        FeatureCache.open(out)


# ---- 6: a full disk is a message, and the output is valid or absent ---------------------------------


def _enospc(*args, **kwargs):
    import errno
    import os

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_extract_on_a_full_disk(prepared, tiny_encoder, tmp_path, capsys, monkeypatch):
    import os

    monkeypatch.setattr(os, "posix_fallocate", _enospc)
    out = tmp_path / "feats"
    line = one_line_error(
        capsys,
        ["extract", prepared.root, "--out", out, "--encoder", tiny_encoder, "--backend", "torch"],
        "no space left on device writing",
        "pooled.npy",
        "MB",
    )
    assert "needs ~" in line
    assert not out.exists()


def test_prepare_on_a_full_disk(synth_dir, tmp_path, capsys, monkeypatch):
    import json

    from capgen.data import vocab

    monkeypatch.setattr(vocab, "write_json", _enospc, raising=False)
    real_dumps = json.dumps
    calls = {"n": 0}

    def dumps(*a, **kw):  # the disk fills while the split files are written
        calls["n"] += 1
        if calls["n"] > 5:
            _enospc()
        return real_dumps(*a, **kw)

    monkeypatch.setattr("capgen.data.prepared.json.dumps", dumps)
    out = tmp_path / "prepared"
    one_line_error(
        capsys, ["prepare", synth_dir, "--out", out, "--min-count", "1"], "no space left on device writing", str(out)
    )
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_train_on_a_full_disk_keeps_the_last_valid_checkpoint(tiny_run, tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as RuntimeError('[enforce fail at inline_container.cc] ...')."""
    import shutil
    from collections import namedtuple

    from capgen.checkpoint import load_checkpoint

    run = tmp_path / "run"
    base = [
        "train",
        "--data",
        tiny_run.prepared.root,
        "--features",
        tiny_run.root / "feats",
        "--model",
        "show_tell",
        "--out",
        run,
        "--set",
        "model.embed_dim=16",
        "--set",
        "model.hidden_dim=16",
        "--set",
        "batch_size=8",
        "--set",
        "warmup_steps=1",
    ]
    assert main([str(a) for a in base + ["--set", "epochs=1"]]) == 0
    capsys.readouterr()
    before = (run / "best.pt").read_bytes()
    real_save = torch.save

    def full_disk_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # what a full disk leaves
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("epochs: 1", "epochs: 2"))
    one_line_error(capsys, base[:5] + ["--out", run, "--resume"], "no space left on device writing", ".pt")
    assert (run / "best.pt").read_bytes() == before
    monkeypatch.undo()
    load_checkpoint(run / "best.pt")
    load_checkpoint(run / "last.pt")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# ---- 8: loading from several threads leaves the process alone ---------------------------------------


def test_loading_efficientnet_from_threads_keeps_stdout(capsys):
    import threading

    pytest.importorskip("efficientnet_lite_pytorch")
    from capgen.encoders.efficientnet import load_efficientnet_lite

    stdout = sys.stdout
    errors = []

    def load():
        try:
            load_efficientnet_lite("efficientnet-lite0")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sys.stdout is stdout
    assert "Loaded pretrained" not in capsys.readouterr().out


# ---- 9: the server's model worker answers every waiting request on shutdown ---------------------------


def test_worker_answers_every_waiting_job_on_close():
    import threading
    from concurrent.futures import wait

    from capgen.serve.worker import ModelWorker, ServerBusy
    from conftest import HeldCaptioner

    blocking = HeldCaptioner(wait=10)
    release, started = blocking.release, blocking.started
    worker = ModelWorker(blocking, max_batch=1)
    first = worker.submit(["a"], {"beam_size": 1})
    assert started.wait(10)
    waiting = [worker.submit([x], {"beam_size": 2}) for x in "bcd"]
    closer = threading.Thread(target=worker.close)
    closer.start()
    for _ in range(10_000):  # the closer thread has begun closing (no race with the late submit)
        if worker.closed:
            break
        threading.Event().wait(0.001)
    try:
        worker.submit(["late"], {"beam_size": 1})
        late_refused = False
    except ServerBusy:
        late_refused = True
    release.set()
    closer.join(10)
    assert late_refused and first.result(5) == ["a"]
    done, not_done = wait(waiting, timeout=5)
    assert not not_done
    assert all(isinstance(f.exception(), ServerBusy) for f in waiting)
