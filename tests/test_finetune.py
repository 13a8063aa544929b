"""Fine-tuning the encoder's last blocks from a block-input feature cache (extract --split-at N):
the split, the cache kind, joint training with exact resume, checkpoints that carry the blocks, the
Captioner's ONNX encoder with them, and one-line errors for caches of the wrong kind."""

import contextlib

import numpy as np
import pytest
import torch

import capgen.training.trainer as trainer_mod
from capgen.checkpoint import load_checkpoint
from capgen.encoders import create_encoder
from capgen.encoders.efficientnet import EfficientNetLite
from capgen.encoders.registry import _REGISTRY
from capgen.features import FeatureCache, extract_features
from capgen.models.finetuned import FinetunedModel
from capgen.training import load_run_config, train
from capgen.training.callbacks import read_history
from conftest import one_line_error
from test_training import _StopAfter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "tiny-lite"
DECODER = ["model.embed_dim=16", "model.hidden_dim=32"]


def _tiny_lite():
    """A 64x64 EfficientNet-Lite with 8 blocks and a 2x2 grid: the real code, random weights that are the
    same on every build (the Captioner rebuilds the encoder by name and loads only the fine-tuned blocks)."""
    from efficientnet_lite_pytorch import EfficientNet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = EfficientNet.from_name(
            "efficientnet-lite0", width_coefficient=0.25, depth_coefficient=0.3, image_size=64, num_classes=10
        )
        # Fresh BatchNorm statistics would leave activations ~1e-8 at the grid: calibrate them on
        # one random batch, so features (and differences between them) are of order 1.
        bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
        with torch.no_grad():
            model.train().extract_features(torch.rand(16, 3, 64, 64) * 2 - 1)
        for m in bns:
            m.momentum = 0.01
    return EfficientNetLite("efficientnet-lite0", model.eval(), size=64, name=TINY)


@pytest.fixture
def tiny_lite(monkeypatch):
    monkeypatch.setitem(_REGISTRY, TINY, _tiny_lite)
    return TINY


@pytest.fixture
def caches(prepared, tiny_lite, tmp_path):
    """{None: final-grid cache, 1: input of the last block, 2: input of the last 2 blocks}."""
    out = {}
    for n in (None, 1, 2):
        root = tmp_path / f"feats-{n}"
        extract_features(prepared, root, encoder=tiny_lite, progress=False, split_at=n)
        out[n] = FeatureCache.open(root)
    return out


def _cfg(*extra):
    return load_run_config(None, DECODER + ["epochs=2", "batch_size=4", "warmup_steps=2", *extra], "show_tell")


def test_split_reproduces_the_encoder_and_freezes_batchnorm(tiny_lite):
    enc = create_encoder(tiny_lite)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    for n in (1, 2, 8):
        stem, top = enc.split(n)
        with torch.no_grad():
            torch.testing.assert_close(top(stem.forward_grid(x)), enc.forward_grid(x), rtol=0, atol=0)
        assert stem.spec()["split_at"] == n and stem.spec()["name"] == tiny_lite
        top.train()
        assert not top.training and not any(m.training for m in top.modules())
        bn = [p for m in top.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
        assert bn and not any(p.requires_grad for p in bn)
        assert any(p.requires_grad for p in top.parameters())
    with pytest.raises(Exception, match="1 to 8 blocks"):
        enc.split(9)


def test_block_input_cache_records_kind_and_split(caches):
    meta = caches[2].meta
    assert meta["kind"] == "block_input" and meta["encoder"]["split_at"] == 2 and meta["dtype"] == "float16"
    assert caches[None].kind == "grid" and "split_at" not in caches[None].encoder_spec
    ids = list(caches[2].index)[:3]
    assert caches[2].grid(ids).shape == (3, 2 * 2, caches[2].encoder_spec["dim"])


def test_extracting_another_split_into_a_cache_is_refused(prepared, caches, tiny_lite):
    with pytest.raises(Exception, match="different encoder .the activation entering the last 2 blocks of tiny-lite"):
        extract_features(prepared, caches[2].root, encoder=tiny_lite, progress=False, split_at=1)


def test_joint_training_moves_the_blocks_resumes_exactly_and_checkpoints_them(prepared, caches, tmp_path, monkeypatch):
    cfg = _cfg("finetune_blocks=2", "encoder_lr=1e-3", "epochs=2")
    full = train(cfg, prepared, caches[2], tmp_path / "full", progress=False)
    ck = load_checkpoint(full.best_checkpoint)
    assert isinstance(ck.model, FinetunedModel) and ck.model.split_at == 2 and ck.encoder["split_at"] == 2
    pretrained = dict(create_encoder(TINY).split(2)[1].named_parameters())
    moved = [k for k, p in ck.model.top.named_parameters() if not torch.equal(p, pretrained[k])]
    assert moved and not any(".bn" in k or k.startswith("bn1") for k in moved)  # convs train, BatchNorm not

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(trainer_mod, "_graceful_interrupt", lambda: contextlib.nullcontext(_StopAfter(5)))
        train(cfg, prepared, caches[2], tmp_path / "cut", progress=False)
    resumed = train(cfg, prepared, caches[2], tmp_path / "cut", resume=True, progress=False)
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["CIDEr"] == pytest.approx(b["CIDEr"], rel=1e-5)
    last = load_checkpoint(tmp_path / "cut" / "last.pt").model
    ref = load_checkpoint(tmp_path / "full" / "last.pt").model
    for (k, a), b in zip(last.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)  # torch's float32 tolerances


def test_encoder_lr_applies_to_the_blocks_only(prepared, caches, tmp_path):
    train(
        _cfg("finetune_blocks=1", "lr=1e-3", "encoder_lr=2e-5", "epochs=1", "warmup_steps=0", "min_lr_ratio=1.0"),
        prepared,
        caches[1],
        tmp_path / "run",
        progress=False,
    )
    groups = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["resume"]["optimizer"]["param_groups"]
    lrs = [g["lr"] for g in groups]  # decoder (decay, no decay), then the blocks' groups
    assert len(lrs) > 2 and lrs[:2] == pytest.approx([1e-3, 1e-3]) and lrs[2:] == pytest.approx([2e-5] * (len(lrs) - 2))


def test_captioner_runs_the_finetuned_blocks_through_onnx(prepared, caches, tmp_path):
    from PIL import Image

    from capgen import Captioner
    from capgen.encoders import make_runner

    res = train(
        _cfg("finetune_blocks=2", "encoder_lr=1e-2", "epochs=1"), prepared, caches[2], tmp_path / "run", progress=False
    )
    cap = Captioner.from_pretrained(res.best_checkpoint, backend="onnx")
    assert cap.runner.backend == "onnx" and not isinstance(cap.model, FinetunedModel)
    img = Image.new("RGB", (80, 60), (200, 30, 40))
    onnx_pooled, onnx_grid = cap.runner(cap.preprocess([img]))
    # The PyTorch forward of the checkpoint: frozen stem -> fine-tuned blocks, as in training.
    ck = load_checkpoint(res.best_checkpoint)
    stem = create_encoder(TINY).split(2)[0]
    with torch.no_grad():
        block_in = stem.forward_grid(torch.from_numpy(cap.preprocess([img])))  # (1, C, h, w)
        pooled, grid = ck.model.encoder_features(block_in.mean((2, 3)), block_in.flatten(2).transpose(1, 2))
    np.testing.assert_allclose(onnx_grid, grid.numpy(), atol=1e-3)
    np.testing.assert_allclose(onnx_pooled, pooled.numpy(), atol=1e-3)
    _, frozen_grid = make_runner(create_encoder(TINY), backend="torch")(cap.preprocess([img]))
    assert np.abs(frozen_grid - onnx_grid).max() > 1e-2  # the blocks did change the features
    assert isinstance(cap.caption(img).caption, str)


def test_finetuned_checkpoint_with_a_cache_of_the_wrong_kind(prepared, caches, tmp_path, capsys):
    res = train(_cfg("finetune_blocks=2", "epochs=1"), prepared, caches[2], tmp_path / "run", progress=False)
    base = ["evaluate", res.best_checkpoint, "--data", prepared.root, "--split", "val", "--no-meteor"]
    line = one_line_error(
        capsys,
        base + ["--features", caches[None].root, "--out", tmp_path / "e1"],
        "final-grid",
        "last 2 blocks",
        "--split-at 2",
    )
    assert str(caches[None].root) in line
    one_line_error(
        capsys, base + ["--features", caches[1].root, "--out", tmp_path / "e2"], "last 1 blocks", "last 2 blocks"
    )
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
    # training: a cache of another N, or of the final grid, for finetune_blocks=2; --init of another N
    train_args = ["train", "--data", prepared.root, "--model", "show_tell", *sum((["--set", s] for s in DECODER), [])]
    one_line_error(
        capsys,
        train_args + ["--features", caches[1].root, "--set", "finetune_blocks=2", "--out", tmp_path / "t1"],
        "last 1 blocks",
        "finetune_blocks=2",
    )
    one_line_error(
        capsys,
        train_args + ["--features", caches[None].root, "--set", "finetune_blocks=1", "--out", tmp_path / "t2"],
        "final-grid",
        "--split-at 1",
    )
    one_line_error(capsys, train_args + ["--features", caches[2].root, "--out", tmp_path / "t3"], "finetune_blocks=0")
    one_line_error(
        capsys,
        train_args
        + [
            "--features",
            caches[1].root,
            "--init",
            res.best_checkpoint,
            "--set",
            "finetune_blocks=1",
            "--out",
            tmp_path / "t4",
        ],
        "last 2 encoder blocks",
        "finetune_blocks=1",
    )
    assert not any((tmp_path / t).exists() for t in ("t1", "t2", "t3", "t4"))


def test_finetuning_from_a_grid_checkpoint_and_scst_after_it(prepared, caches, tmp_path):
    xe = train(_cfg("epochs=1"), prepared, caches[None], tmp_path / "xe", progress=False)
    ft = train(
        _cfg("finetune_blocks=1", "epochs=1", f"init={xe.best_checkpoint}"),
        prepared,
        caches[1],
        tmp_path / "ft",
        progress=False,
    )
    start, after = load_checkpoint(xe.best_checkpoint).model, load_checkpoint(ft.best_checkpoint).model
    assert any(not torch.equal(a, b) for a, b in zip(start.state_dict().values(), after.decoder.state_dict().values()))
    # self-critical on top, blocks frozen (finetune_blocks=0) and still carried by the checkpoint
    scst = train(
        load_run_config(
            None,
            [
                "objective=scst",
                f"init={ft.best_checkpoint}",
                "epochs=1",
                "batch_size=4",
                "warmup_steps=0",
                "scst_samples=2",
            ],
            "show_tell",
        ),
        prepared,
        caches[1],
        tmp_path / "scst",
        progress=False,
    )
    final = load_checkpoint(scst.best_checkpoint).model
    assert isinstance(final, FinetunedModel)
    for a, b in zip(after.top.state_dict().values(), final.top.state_dict().values()):
        assert torch.equal(a, b)
    history = read_history(tmp_path / "scst" / "history.json")
    assert len(history) == 1
