"""Shared fixtures: everything is generated in tmp_path; no test reads ../shared or the network."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

from capgen.data import prepare_dataset
from capgen.data.synthetic import make_synthetic_dataset

TINY_ENCODER_MODULE = """
import torch
from capgen.encoders import GridEncoder, Preprocess


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)

    def forward(self, x):            # (B, 3, 32, 32) -> (B, 8, 4, 4)
        return torch.relu(self.conv(x))


def build():
    return GridEncoder(_Tiny(), Preprocess(size=32), name="tiny-test", dim=8, grid_hw=(4, 4))
"""


class _Writes:
    """A text stream that records each write() call apart (a line and its newline must be one)."""

    def __init__(self):
        self.calls = []

    def write(self, s):
        self.calls.append(s)
        return len(s)

    def flush(self):
        pass


@pytest.fixture
def recorded_writes() -> _Writes:
    """A stream to put in place of sys.stdout or sys.stderr; its `calls` are the writes, in order."""
    return _Writes()


@pytest.fixture
def synth_dir(tmp_path: Path) -> Path:
    return make_synthetic_dataset(tmp_path / "synth", n_images=30, fmt="kaggle", seed=1)


@pytest.fixture
def prepared(tmp_path: Path, synth_dir: Path):
    return prepare_dataset(synth_dir, tmp_path / "prepared", min_count=1)


@pytest.fixture
def tiny_encoder(tmp_path: Path, monkeypatch) -> str:
    """A registered-by-path tiny encoder ('module:factory') so cache tests run in milliseconds."""
    mod_dir = tmp_path / "tinymods"
    mod_dir.mkdir()
    (mod_dir / "capgen_tiny_encoder.py").write_text(TINY_ENCODER_MODULE)
    monkeypatch.syspath_prepend(str(mod_dir))
    sys.modules.pop("capgen_tiny_encoder", None)
    return "capgen_tiny_encoder:build"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """ONNX exports go to a per-session folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPGEN_CACHE", str(tmp_path_factory.mktemp("capgen-cache")))
    yield
    mp.undo()


# ---- a tiny trained captioner, shared by the caption / serve / browser tests -----------------------

TINY_MODELS = {
    "show_tell": ["model.embed_dim=16", "model.hidden_dim=32"],
    "show_attend_tell": ["model.embed_dim=16", "model.hidden_dim=32", "model.attention_dim=16"],
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Synthetic data -> features from the tiny encoder -> one epoch of show_attend_tell and show_tell.

    Returns a namespace: encoder ('module:factory'), checkpoints {model: best.pt}, prepared, cache.
    """
    from types import SimpleNamespace

    from capgen.features import FeatureCache, extract_features
    from capgen.training import load_run_config, train

    root = tmp_path_factory.mktemp("tiny-run")
    mod_dir = root / "mods"
    mod_dir.mkdir()
    # Its own module name, so the function-scoped `tiny_encoder` fixture never swaps it out.
    (mod_dir / "capgen_tiny_session_encoder.py").write_text(TINY_ENCODER_MODULE)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(mod_dir))
    encoder = "capgen_tiny_session_encoder:build"
    data = prepare_dataset(
        make_synthetic_dataset(root / "synth", n_images=30, fmt="kaggle", seed=1), root / "prepared", min_count=1
    )
    extract_features(data, root / "feats", encoder=encoder, progress=False)
    cache = FeatureCache.open(root / "feats")
    checkpoints = {}
    with _one_torch_thread():
        for model, sets in TINY_MODELS.items():
            cfg = load_run_config(None, sets + ["epochs=1", "batch_size=4", "warmup_steps=2"], model)
            checkpoints[model] = train(cfg, data, cache, root / model, progress=False).best_checkpoint
    yield SimpleNamespace(encoder=encoder, checkpoints=checkpoints, prepared=data, cache=cache, root=root)
    mp.undo()


@contextlib.contextmanager
def _one_torch_thread():
    # For tiny models a torch thread pool costs more than the maths (50x slower on a busy 2-core
    # machine), so these tests run single-threaded and leave the other cores alone.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Use in modules that run tiny models many times: pytestmark = pytest.mark.usefixtures(...)."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_captioner(tiny_run):
    """A Captioner over the tiny attention model."""
    from capgen import Captioner

    return Captioner.from_pretrained(tiny_run.checkpoints["show_attend_tell"], encoder=tiny_run.encoder)


def run_torchrun(args: list[str], env: dict, timeout: float):
    """Run `python -m torch.distributed.run --standalone ARGS` once: no retries, so a rank that
    aborts at exit (as it did while the process group outlived the interpreter) fails the test."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(capsys, argv, *words) -> str:
    """Run `capgen.cli.main` in-process; assert exit 2, one stderr line, no traceback; return the line."""
    from capgen.cli import main

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


def csv_dataset(tmp_path: Path, rows: list[str]) -> Path:
    """DATA/caps.csv over six small PNGs, plus `rows` (image,caption lines)."""
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(data / f"{i}.png")
    lines = ["image,caption"] + [f"{i}.png,a red square number {i}" for i in range(6)] + rows
    (data / "caps.csv").write_text("\n".join(lines) + "\n")
    return data / "caps.csv"


def forged_checkpoint(tiny_run, tmp_path: Path, edit) -> Path:
    """A copy of the tiny model's checkpoint with `edit(payload)` applied (for hostile-input tests)."""
    from capgen.checkpoint import read_payload, save_checkpoint

    payload = read_payload(tiny_run.checkpoints["show_tell"])
    edit(payload)
    path = tmp_path / "forged.pt"
    save_checkpoint(path, payload)
    return path


class HeldCaptioner:
    """A stand-in for a Captioner in ModelWorker tests: options pass through, encoding gives nothing,
    and captioning sets `started`, waits for `release` (at most `wait` s), runs `captioned` and
    returns the images themselves as their "captions"."""

    def __init__(self, wait: float = 60.0):
        import threading

        self.started, self.release, self.wait = threading.Event(), threading.Event(), wait

    def decode_config(self, **options):
        from capgen.decoding import DecodeConfig

        return options if options else DecodeConfig()  # no options: the model's defaults, for the server

    def encode_loaded(self, images):
        return None, None

    def caption_encoded(self, images, pooled, grid, config, **kw):
        self.started.set()
        self.release.wait(self.wait)
        self.captioned(images)
        return list(images)

    def captioned(self, images) -> None:
        """Runs once a batch is released (a test may advance a fake clock here)."""
