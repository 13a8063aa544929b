"""Shared fixtures: everything is generated in tmp_path; no test reads ../shared or the network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from capgen.data import prepare_dataset
from capgen.data.synthetic import make_synthetic_dataset

TINY_ENCODER_MODULE = '''
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
'''


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
