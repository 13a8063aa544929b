"""A hostile or unlucky user: forged files, escaping paths, concurrent writers, full disks, bad
numbers. Every command answers with one line naming the problem, exit 2, no traceback, and leaves
nothing behind that could later load as valid."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from capgen.checkpoint import read_payload, save_checkpoint
from capgen.cli import main
from capgen.errors import CapgenError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A module whose factory leaves a mark: if it ever runs, a forged file made capgen import code.
EVIL_MODULE = '''
from pathlib import Path
import os

def run():
    Path(os.environ["CAPGEN_EVIL_MARK"]).write_text("ran")
'''


def one_line_error(capsys, argv, *words) -> str:
    """Run the CLI in-process; assert exit 2, one stderr line, no traceback; return the line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse rejects a value: also one line, exit 2
        code = e.code
    captured = capsys.readouterr()
    # progress bars (tqdm, "\r"-separated, with "%|") are not messages
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert "internal error" not in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def forged_checkpoint(tiny_run, tmp_path: Path, edit) -> Path:
    """A copy of the tiny model's checkpoint with `edit(payload)` applied."""
    payload = read_payload(tiny_run.checkpoints["show_tell"])
    edit(payload)
    path = tmp_path / "forged.pt"
    save_checkpoint(path, payload)
    return path


# ---- 1: a file never makes capgen import code ----------------------------------------------------

@pytest.fixture
def evil(tmp_path, monkeypatch) -> Path:
    mods = tmp_path / "evilmods"
    mods.mkdir()
    (mods / "capgen_evil.py").write_text(EVIL_MODULE)
    monkeypatch.syspath_prepend(str(mods))
    mark = tmp_path / "mark"
    monkeypatch.setenv("CAPGEN_EVIL_MARK", str(mark))
    sys.modules.pop("capgen_evil", None)
    return mark


@pytest.mark.parametrize("name", ["capgen_evil:run", "tempfile:mkdtemp", "sys:exit"])
def test_checkpoint_cannot_name_an_import_path(tiny_run, tmp_path, capsys, evil, name):
    from capgen import Captioner

    ck = forged_checkpoint(tiny_run, tmp_path, lambda p: p["encoder"].update(name=name))
    with pytest.raises(CapgenError, match="not registered"):
        Captioner.from_pretrained(ck)
    img = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(img)
    one_line_error(capsys, ["caption", img, "--model", ck], "not registered", "--encoder")
    assert not evil.exists() and "capgen_evil" not in sys.modules


def test_own_encoder_flag_may_import(tiny_run, tmp_path):
    """The user's own --encoder is trusted: that is how custom encoders are used."""
    from capgen import Captioner

    cap = Captioner.from_pretrained(tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder)
    assert cap.encoder.name == "tiny-test"


# ---- 2: dataset paths stay inside the images folder --------------------------------------------

def _csv_dataset(tmp_path: Path, rows: list[str]) -> Path:
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(data / f"{i}.png")
    lines = ["image,caption"] + [f"{i}.png,a red square number {i}" for i in range(6)] + rows
    (data / "caps.csv").write_text("\n".join(lines) + "\n")
    return data / "caps.csv"


@pytest.mark.parametrize("escape", ["../secret.png", "ABS", "link.png"])
def test_dataset_paths_outside_the_root_are_refused(tmp_path, capsys, escape):
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(secret)
    name = str(secret) if escape == "ABS" else escape
    csv_path = _csv_dataset(tmp_path, [f"{name},a secret file"])
    (csv_path.parent / "link.png").symlink_to(secret)
    out = tmp_path / "prepared"
    one_line_error(capsys, ["prepare", csv_path, "--out", out, "--min-count", "1"],
                   "outside the images folder", "--allow-outside-root")
    assert not out.exists()
    assert main(["prepare", str(csv_path), "--out", str(out), "--min-count", "1", "--allow-outside-root"]) == 0
    from capgen.data import PreparedDataset

    assert any(r.image == name for r in PreparedDataset.load(out).records())


def test_hand_edited_split_file_cannot_escape(prepared, capsys):
    from capgen.data import PreparedDataset

    path = prepared.root / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace(prepared.split("train")[0].image, "../../../../etc/passwd")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CapgenError, match="outside the images folder"):
        PreparedDataset.load(prepared.root)


# ---- 3, 4, 9, 13: the server -----------------------------------------------------------------------

def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def local_client(tiny_captioner):
    from fastapi.testclient import TestClient

    from capgen.serve import ServeSettings, create_app

    with TestClient(create_app(tiny_captioner, ServeSettings(timeout=20)), base_url="http://127.0.0.1") as c:
        yield c


def test_nothing_the_server_sends_names_another_host(local_client):
    import re

    external = re.compile(r"https?://(?!127\.0\.0\.1|localhost)", re.I)
    responses = [local_client.get(p) for p in ("/", "/health", "/openapi.json", "/docs", "/redoc",
                                               "/docs/oauth2-redirect", "/nope", "/static/x.js")]
    responses += [local_client.post("/caption", files={"files": ("a.png", _png_bytes(), "image/png")}),
                  local_client.post("/caption", files={"files": ("a.txt", b"hello", "text/plain")}),
                  local_client.post("/caption", content=b"x")]
    for r in responses:
        text = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        assert not external.search(text), (r.request.url, external.search(text))
    assert local_client.get("/docs").status_code == 404 and local_client.get("/redoc").status_code == 404


def test_foreign_host_header_is_refused(local_client):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not reach the API."""
    assert local_client.get("/health", headers={"host": "evil.example"}).status_code == 400
    assert local_client.get("/health", headers={"host": "localhost:8000"}).status_code == 200


def test_seventeen_files_is_413(local_client):
    files = [("files", (f"{i}.png", _png_bytes(), "image/png")) for i in range(17)]
    r = local_client.post("/caption", files=files)
    assert r.status_code == 413 and "at most 16" in r.json()["error"]


def test_slow_body_gets_408():
    import asyncio

    from capgen.serve.limits import BodyLimit

    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app saw a request whose body never arrived")

    async def receive():
        await asyncio.sleep(3600)  # a client that sends headers and then nothing

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodyLimit(app, limit=100, read_timeout=0.05)(scope, receive, send))
    assert sent[0]["status"] == 408 and b"not received" in sent[1]["body"]


def test_worker_answers_every_waiting_job_on_close():
    import threading
    from concurrent.futures import wait

    from capgen.serve.worker import ModelWorker, ServerBusy

    release, started = threading.Event(), threading.Event()

    class Blocking:
        def decode_config(self, **options):
            return options

        def caption_loaded(self, images, config, batch_size):
            started.set()
            release.wait(10)
            return list(images)

    worker = ModelWorker(Blocking(), max_batch=1)
    first = worker.submit(["a"], {"beam_size": 1})
    assert started.wait(10)
    waiting = [worker.submit([x], {"beam_size": 2}) for x in "bcd"]
    closer = threading.Thread(target=worker.close)
    closer.start()
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


# ---- 5: one writer per folder; unwritten or damaged rows never load ---------------------------------

SLOW_ENCODER_MODULE = '''
import time
import torch
from capgen.encoders import GridEncoder, Preprocess


class _Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, x):
        time.sleep(0.2)
        return torch.relu(self.conv(x)) + 0.01


def build():
    return GridEncoder(_Slow(), Preprocess(size=32), name="slow-test", dim=8, grid_hw=(4, 4))
'''


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
    cmd = [sys.executable, "-m", "capgen", "extract", str(prepared.root), "--out", str(out), "--encoder",
           "capgen_slow_encoder:build", "--batch-size", "2", "--backend", "torch", "--threads", "1"]
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
    one_line_error(capsys, ["train", "--data", tiny_run.prepared.root, "--features", out, "--model", "show_tell",
                            "--out", tmp_path / "run", "--set", "epochs=1"], "NaN or infinite")
    assert not list((tmp_path / "run").glob("*.pt"))


def test_a_second_training_into_a_run_folder_is_refused(tiny_run, tmp_path, capsys):
    from capgen.io import folder_lock

    run = tmp_path / "run"
    with folder_lock(run, "training run"):  # as a running `capgen train` holds it
        one_line_error(capsys, ["train", "--data", tiny_run.prepared.root, "--features", tiny_run.root / "feats",
                                "--model", "show_tell", "--out", run, "--set", "epochs=1"],
                       "another capgen process is writing this training run")
        assert [p.name for p in run.iterdir()] == [".lock"]


@pytest.mark.parametrize("meta_edit", [lambda m: m.pop("images"), lambda m: m.update(images=[1, 2]),
                                       lambda m: m["encoder"].update(grid="9x9")])
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
    line = one_line_error(capsys, ["extract", prepared.root, "--out", out, "--encoder", tiny_encoder,
                                   "--backend", "torch"], "no space left on device writing", "pooled.npy", "MB")
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
    one_line_error(capsys, ["prepare", synth_dir, "--out", out, "--min-count", "1"],
                   "no space left on device writing", str(out))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared")]


def test_train_on_a_full_disk_keeps_the_last_valid_checkpoint(tiny_run, tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as RuntimeError('[enforce fail at inline_container.cc] ...')."""
    import shutil
    from collections import namedtuple

    from capgen.checkpoint import load_checkpoint

    run = tmp_path / "run"
    base = ["train", "--data", tiny_run.prepared.root, "--features", tiny_run.root / "feats", "--model",
            "show_tell", "--out", run, "--set", "model.embed_dim=16", "--set", "model.hidden_dim=16",
            "--set", "batch_size=8", "--set", "warmup_steps=1"]
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


# ---- 10, 11, 13: a table of bad inputs through every command ---------------------------------------

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _yaml(tmp: Path, text: str) -> Path:
    return _write(tmp / "cfg.yaml", text)


def _manifest_without_images_dir(ctx) -> Path:
    import json
    import shutil

    root = ctx.tmp / "prep-no-images-dir"
    shutil.copytree(ctx.prepared, root)
    m = json.loads((root / "manifest.json").read_text())
    del m["images_dir"]
    (root / "manifest.json").write_text(json.dumps(m))
    return root


def _meta_without_images(ctx) -> Path:
    import json
    import shutil

    root = ctx.tmp / "feats-no-images"
    shutil.copytree(ctx.feats, root)
    m = json.loads((root / "meta.json").read_text())
    del m["images"]
    (root / "meta.json").write_text(json.dumps(m))
    return root


def _bad_checkpoint(ctx, **fields) -> Path:
    payload = read_payload(ctx.ckpt)
    payload.update(fields)
    path = ctx.tmp / "bad.pt"
    save_checkpoint(path, payload)
    return path


class Payload:  # an arbitrary class: unpickling it would run code named by the file
    pass


def _pickled_checkpoint(ctx) -> Path:
    path = ctx.tmp / "pickled.pt"
    torch.save({"capgen_checkpoint": 1, "x": Payload()}, path)
    return path


def _train(ctx, *extra):
    return ["train", "--data", ctx.prepared, "--features", ctx.feats, "--out", ctx.tmp / "run", *extra]


def _evaluate(ctx, ckpt, *extra):
    return ["evaluate", ckpt, "--data", ctx.prepared, "--features", ctx.feats, "--no-meteor", *extra]


def _a_file(ctx) -> Path:
    return _write(ctx.tmp / "a-file", "not a folder")


BAD_INPUTS = {
    # prepare: schema checks for every caption file
    "coco id is a list": (lambda c: ["prepare", _write(c.tmp / "captions_x.json",
                          '{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []}'), "--out",
                          c.tmp / "p"], ["images[0]", "'id'"]),
    "coco image_id is a dict": (lambda c: ["prepare", _write(c.tmp / "captions_x.json",
                                '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": '
                                '[{"image_id": {}, "caption": "a"}]}'), "--out", c.tmp / "p"], ["annotations[0]"]),
    "karpathy sentences not a list": (lambda c: ["prepare", _write(c.tmp / "dataset_x.json",
                                      '{"images": [{"filename": "a.jpg", "split": "train", "sentences": 3}]}'),
                                      "--out", c.tmp / "p"], ["images[0]", "sentences"]),
    "header-only csv": (lambda c: ["prepare", _write(c.tmp / "caps.csv", "image,caption\n"), "--out", c.tmp / "p"],
                        ["no captions found"]),
    "prepare --out is a file": (lambda c: ["prepare", c.prepared, "--out", _a_file(c)], ["is a file"]),
    "val fraction nan": (lambda c: ["prepare", c.prepared, "--out", c.tmp / "p", "--val-fraction", "nan"],
                         ["--val-fraction"]),
    # extract
    "manifest without images_dir": (lambda c: ["extract", _manifest_without_images_dir(c), "--out", c.tmp / "f"],
                                    ["images_dir"]),
    "extract --out is a file": (lambda c: ["extract", c.prepared, "--out", _a_file(c)], ["is a file"]),
    # train: YAML shapes, ranges, damaged caches
    "yaml model_config list": (lambda c: _train(c, "--config", _yaml(c.tmp, "model_config: [1, 2]\n")),
                               ["model_config"]),
    "yaml train number": (lambda c: _train(c, "--config", _yaml(c.tmp, "train: 5\n")), ["'train'"]),
    "yaml model list": (lambda c: _train(c, "--config", _yaml(c.tmp, "model: [a]\n")), ["'model'"]),
    "batch_size=0": (lambda c: _train(c, "--set", "batch_size=0"), ["batch_size", ">= 1"]),
    "batch_size=-3": (lambda c: _train(c, "--set", "batch_size=-3"), ["batch_size"]),
    "epochs=0": (lambda c: _train(c, "--set", "epochs=0"), ["epochs", ">= 1"]),
    "lr=-1": (lambda c: _train(c, "--set", "lr=-1"), ["lr", "> 0"]),
    "lr=nan": (lambda c: _train(c, "--set", "lr=nan"), ["lr", "finite"]),
    "lr=inf": (lambda c: _train(c, "--set", "lr=inf"), ["lr", "finite"]),
    "label_smoothing=2": (lambda c: _train(c, "--set", "label_smoothing=2"), ["label_smoothing"]),
    "patience=-1": (lambda c: _train(c, "--set", "patience=-1"), ["patience"]),
    "val_images=-1": (lambda c: _train(c, "--set", "val_images=-1"), ["val_images"]),
    "warmup_steps=-1": (lambda c: _train(c, "--set", "warmup_steps=-1"), ["warmup_steps"]),
    "threads=-1": (lambda c: _train(c, "--set", "threads=-1"), ["threads"]),
    "save_every_steps=-1": (lambda c: _train(c, "--set", "save_every_steps=-1"), ["save_every_steps"]),
    "cache meta without images": (lambda c: ["train", "--data", c.prepared, "--features", _meta_without_images(c),
                                             "--out", c.tmp / "run"], ["malformed feature cache metadata"]),
    "train --out is a file": (lambda c: ["train", "--data", c.prepared, "--features", c.feats, "--out", _a_file(c)],
                              ["is a file"]),
    # evaluate: checkpoints of the wrong shape
    "evaluate --out is a file": (lambda c: _evaluate(c, c.ckpt, "--out", _a_file(c)), ["is a file"]),
    "checkpoint vocab is a list": (lambda c: _evaluate(c, _bad_checkpoint(c, vocab=[1]), "--out", c.tmp / "e"),
                                   ["'vocab'"]),
    "checkpoint encoder is a string": (lambda c: _evaluate(c, _bad_checkpoint(c, encoder="x"), "--out", c.tmp / "e"),
                                       ["'encoder'"]),
    "checkpoint model_config is a list": (lambda c: _evaluate(c, _bad_checkpoint(c, model_config=[1]), "--out",
                                                              c.tmp / "e"), ["'model_config'"]),
    "checkpoint state_dict holds ints": (lambda c: _evaluate(c, _bad_checkpoint(c, state_dict={"w": 1}), "--out",
                                                             c.tmp / "e"), ["'state_dict'"]),
    "checkpoint vocab_size is text": (lambda c: _evaluate(c, _bad_checkpoint(c, vocab_size="9"), "--out",
                                                          c.tmp / "e"), ["'vocab_size'"]),
    "checkpoint with pickled objects": (lambda c: _evaluate(c, _pickled_checkpoint(c), "--out", c.tmp / "e"),
                                        ["refused", "weights_only"]),
    # caption
    "--annotate is a file": (lambda c: ["caption", c.image, "--model", c.ckpt, "--annotate", _a_file(c)],
                             ["--annotate", "is a file"]),
    "--attention is a file": (lambda c: ["caption", c.image, "--model", c.ckpt, "--attention", _a_file(c)],
                              ["--attention", "is a file"]),
    "--temperature nan": (lambda c: ["caption", c.image, "--temperature", "nan"], ["--temperature"]),
    "checkpoint encoder without name": (lambda c: ["caption", c.image, "--model",
                                                   _bad_checkpoint(c, encoder={"dim": 8})], ["'encoder'"]),
    # serve: every number checked before anything starts
    "serve --max-upload-mb inf": (lambda c: ["serve", "--max-upload-mb", "inf"], ["--max-upload-mb"]),
    "serve --port 70000": (lambda c: ["serve", "--port", "70000"], ["--port", "65535"]),
    "serve --port 0": (lambda c: ["serve", "--port", "0"], ["--port"]),
    "serve --timeout nan": (lambda c: ["serve", "--timeout", "nan"], ["--timeout"]),
    # synth
    "synth into a file": (lambda c: ["synth", _a_file(c)], ["is a file"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_table(case, tiny_run, tmp_path, capsys):
    from types import SimpleNamespace

    from PIL import Image

    ctx = SimpleNamespace(tmp=tmp_path, prepared=tiny_run.prepared.root, feats=tiny_run.root / "feats",
                          ckpt=tiny_run.checkpoints["show_tell"], image=tmp_path / "photo.png")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(ctx.image)
    make_argv, words = BAD_INPUTS[case]
    argv = make_argv(ctx)
    before = sorted(p for p in tmp_path.rglob("*"))
    one_line_error(capsys, argv, *words)
    assert sorted(p for p in tmp_path.rglob("*")) == before, "the failed command left files behind"


def test_unreadable_checkpoint_is_not_called_corrupt(tiny_run, monkeypatch):
    import capgen.checkpoint as checkpoint

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint, "open", denied, raising=False)
    with pytest.raises(CapgenError, match="cannot read the checkpoint \\(Permission denied\\)"):
        checkpoint.read_payload(tiny_run.checkpoints["show_tell"])


def test_epochs_zero_claims_nothing(tiny_run, tmp_path, capsys):
    """It used to exit 0 and print '-> RUN/best.pt', a file never written."""
    one_line_error(capsys, ["train", "--data", tiny_run.prepared.root, "--features", tiny_run.root / "feats",
                            "--out", tmp_path / "run", "--set", "epochs=0"], "epochs")
    assert "best.pt" not in capsys.readouterr().out and not (tmp_path / "run").exists()


def test_duplicate_captions_are_reported(tmp_path, capsys):
    csv_path = _csv_dataset(tmp_path, ["0.png,a red square number 0", "0.png,a red square number 0"])
    assert main(["prepare", str(csv_path), "--out", str(tmp_path / "p"), "--min-count", "1"]) == 0
    assert "note: 2 captions repeat another caption" in capsys.readouterr().out


def test_folders_take_what_single_files_take(tmp_path):
    """One rule: a folder picks up a photo format exactly when a file of it loads on its own."""
    from PIL import Image

    from capgen.images import is_image_file, load_image
    from capgen.inference.files import expand_paths

    Image.init()
    if "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow cannot write AVIF")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "a.avif")
    load_image(tmp_path / "a.avif")
    assert is_image_file("x.AVIF") and expand_paths([tmp_path]) == [tmp_path / "a.avif"]


def test_serve_on_a_taken_port_is_one_line(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(capsys, ["serve", "--port", port], "cannot listen on 127.0.0.1:")
    one_line_error(capsys, ["serve", "--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid")
