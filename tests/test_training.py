"""Full train -> evaluate runs on synthetic data, resume equivalence, checkpoints, configs, DDP."""

import json
import os
import sys

import pytest
import torch
import yaml

import capgen.training.callbacks as callbacks_mod
import capgen.training.trainer as trainer_mod
from capgen.checkpoint import CheckpointError, load_checkpoint
from capgen.cli import main
from capgen.decoding import DecodeConfig
from capgen.errors import CapgenError
from capgen.evaluation.run import evaluate_checkpoint
from capgen.features import FeatureCache, extract_features
from capgen.training import load_run_config, train
from capgen.training.callbacks import read_history
from capgen.training.config import ConfigError
from conftest import run_torchrun

TINY = {
    "show_tell": ["model.embed_dim=16", "model.hidden_dim=32"],
    "show_attend_tell": ["model.embed_dim=16", "model.hidden_dim=32", "model.attention_dim=16"],
    "transformer": ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.ff_dim=64"],
}


@pytest.fixture
def features(prepared, tiny_encoder, tmp_path):
    extract_features(prepared, tmp_path / "feats", encoder=tiny_encoder, progress=False)
    return FeatureCache.open(tmp_path / "feats")


def _cfg(model, *extra):
    return load_run_config(None, TINY[model] + ["epochs=2", "batch_size=4", "warmup_steps=2", *extra], model)


@pytest.mark.parametrize("model", sorted(TINY))
def test_train_then_evaluate_every_model(model, prepared, features, tmp_path):
    res = train(_cfg(model), prepared, features, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "last.pt", "best.pt", "history.json", "curves.png"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == model
    assert len(res.history) == 2 and res.history[1]["train_loss"] < res.history[0]["train_loss"] + 0.5
    evaluate_checkpoint(
        res.best_checkpoint, prepared, features, "test", DecodeConfig(beam_size=2), out=tmp_path / "eval", meteor=False
    )
    preds = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert [p["image_id"] for p in preds] == [r.image for r in prepared.split("test")]
    assert all(isinstance(p["caption"], str) for p in preds)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert 0.0 <= metrics[key] <= 10.0
    assert any("SPICE" in n for n in metrics["notes"])


class _StopAfter(dict):
    """Acts like the Ctrl-C flag: reads True after `n` checks."""

    def __init__(self, n):
        super().__init__(stop=False)
        self.n = n

    def __getitem__(self, key):
        self.n -= 1
        return self.n < 0


def test_resume_ends_where_an_uninterrupted_run_would(prepared, features, tmp_path, monkeypatch):
    cfg = _cfg("show_attend_tell", "epochs=3")
    full = train(cfg, prepared, features, tmp_path / "full", progress=False)
    import contextlib

    monkeypatch.setattr(trainer_mod, "_graceful_interrupt", lambda: contextlib.nullcontext(_StopAfter(9)))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, prepared, features, tmp_path / "cut", progress=False)
    state = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert state["resume"]["step_in_epoch"] > 0  # stopped mid-epoch
    monkeypatch.undo()
    with pytest.raises(Exception, match="--resume"):
        train(cfg, prepared, features, tmp_path / "cut", progress=False)
    resumed = train(cfg, prepared, features, tmp_path / "cut", resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["CIDEr"] == pytest.approx(b["CIDEr"], rel=1e-5)


def test_checkpoint_round_trip_and_bad_checkpoints(prepared, features, tmp_path):
    res = train(_cfg("transformer", "epochs=1"), prepared, features, tmp_path / "run", progress=False)
    ck = load_checkpoint(res.best_checkpoint)
    assert ck.vocab.itos == prepared.vocab.itos and ck.encoder["name"] == "tiny-test"
    ids = [r.image for r in prepared.split("val")]
    pooled, grid = torch.from_numpy(features.pooled(ids)), torch.from_numpy(features.grid(ids))
    caps = torch.tensor([prepared.vocab.encode(["a", "red", "circle"])] * len(ids))
    again = load_checkpoint(res.best_checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(
            ck.model(pooled, grid, caps)["logits"], again.model(pooled, grid, caps)["logits"], rtol=0, atol=0
        )
    data = res.best_checkpoint.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello")
    for bad in ("trunc.pt", "text.pt", "missing.pt"):
        with pytest.raises(CheckpointError, match=bad):
            load_checkpoint(tmp_path / bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a capgen checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_evaluate_refuses_other_vocabulary_and_encoder(prepared, features, tmp_path, capsys):
    from capgen.data import prepare_dataset

    res = train(_cfg("show_tell", "epochs=1"), prepared, features, tmp_path / "run", progress=False)
    other = prepare_dataset(prepared.manifest["source"], tmp_path / "p2", min_count=1, max_vocab=10)
    code = main(
        [
            "evaluate",
            str(res.best_checkpoint),
            "--data",
            str(other.root),
            "--features",
            str(features.root),
            "--out",
            str(tmp_path / "e"),
            "--no-meteor",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "another vocabulary" in err and len(err.strip().splitlines()) == 1
    meta = json.loads((features.root / "meta.json").read_text())
    meta["encoder"]["name"] = "efficientnet-lite0"
    (features.root / "meta.json").write_text(json.dumps(meta))
    code = main(
        [
            "evaluate",
            str(res.best_checkpoint),
            "--data",
            str(prepared.root),
            "--features",
            str(features.root),
            "--out",
            str(tmp_path / "e"),
            "--no-meteor",
        ]
    )
    assert code == 2 and "extracted with efficientnet-lite0, but tiny-test is expected" in capsys.readouterr().err


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="bogus"):
        load_run_config(None, ["bogus=1"], "show_tell")
    with pytest.raises(Exception, match="nonsense_key"):
        load_run_config(None, ["model.nonsense_key=1"], "show_tell")
    with pytest.raises(Exception, match="epochs"):
        load_run_config(None, ["epochs=many"], "show_tell")
    with pytest.raises(Exception, match="no_such_model"):
        load_run_config(None, [], "no_such_model")
    (tmp_path / "c.yaml").write_text("model: show_tell\ntrain: {lr: 0.01, epochs: 3}\nextra: 1\n")
    with pytest.raises(ConfigError, match="extra"):
        load_run_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("model: show_tell\ntrain: {lr: 0.01, epochs: 3}\n")
    cfg = load_run_config(tmp_path / "c.yaml", ["lr=0.5"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 3


def test_run_files_carry_their_format(tmp_path):
    from capgen.decoding import MAX_BEAM, DecodeConfig

    cfg = load_run_config(None, [], "show_tell")
    assert cfg.to_file_dict()["capgen_run"] == 1
    (tmp_path / "v2.yaml").write_text("capgen_run: 2\nmodel: show_tell\n")
    with pytest.raises(ConfigError, match="capgen_run 2 is not a run config format"):
        load_run_config(tmp_path / "v2.yaml")
    (tmp_path / "v1.yaml").write_text("capgen_run: 1\nmodel: show_tell\n")
    assert load_run_config(tmp_path / "v1.yaml").to_dict() == cfg.to_dict()  # and without the key, as 0.1 wrote
    # history.json: the versioned object, the bare list of capgen 0.1, anything else refused
    (tmp_path / "h.json").write_text('{"capgen_history": 1, "epochs": [{"epoch": 1}]}')
    assert read_history(tmp_path / "h.json") == [{"epoch": 1}]
    (tmp_path / "h.json").write_text('[{"epoch": 1}]')
    assert read_history(tmp_path / "h.json") == [{"epoch": 1}]
    (tmp_path / "h.json").write_text('{"capgen_history": 9, "epochs": []}')
    with pytest.raises(CapgenError, match="not a capgen training history of format 1"):
        read_history(tmp_path / "h.json")
    # validation decodes through DecodeConfig: its defaults, its MAX_BEAM
    assert cfg.train.val_max_len == DecodeConfig.max_len
    assert cfg.train.val_decode_config() == DecodeConfig(beam_size=1)
    with pytest.raises(ConfigError, match=f"val_beam_size / val_max_len: beam_size must be in \\[1, {MAX_BEAM}\\]"):
        load_run_config(None, [f"val_beam_size={MAX_BEAM + 1}"], "show_tell")


def test_cli_train_and_evaluate(prepared, features, tmp_path, capsys):
    argv = [
        "train",
        "--data",
        str(prepared.root),
        "--features",
        str(features.root),
        "--model",
        "show_tell",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "epochs=1",
        "--set",
        "batch_size=8",
        *sum((["--set", s] for s in TINY["show_tell"]), []),
    ]
    assert main(argv) == 0
    assert "best epoch 1" in capsys.readouterr().out
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--data",
                str(prepared.root),
                "--features",
                str(features.root),
                "--out",
                str(tmp_path / "run"),
                "--resume",
            ]
        )
        == 0
    )  # already finished: nothing more to do
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run" / "best.pt"),
                "--data",
                str(prepared.root),
                "--features",
                str(features.root),
                "--out",
                str(tmp_path / "e"),
                "--beam-size",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "BLEU-4" in out and "CIDEr" in out


@pytest.mark.slow
def test_torchrun_ddp_two_processes(prepared, features, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = run_torchrun(
        [
            "--nproc_per_node",
            "2",
            "-m",
            "capgen",
            "train",
            "--data",
            str(prepared.root),
            "--features",
            str(features.root),
            "--model",
            "show_tell",
            "--out",
            str(tmp_path / "ddp"),
            "--set",
            "epochs=2",
            "--set",
            "batch_size=4",
            *sum((["--set", s] for s in TINY["show_tell"]), []),
        ],
        env,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (tmp_path / "ddp" / "best.pt").is_file()
    assert len(read_history(tmp_path / "ddp" / "history.json")) == 2


GLOO_THREADS_AFTER_SHUTDOWN = """
import glob, sys, torch
from capgen.parallel import dist_info, shutdown_distributed
dist = dist_info()
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))  # imports torch._dynamo
ddp(torch.ones(2, 3)).sum().backward()
del ddp
shutdown_distributed()
names = [open(f).read().strip() for f in glob.glob("/proc/self/task/*/comm")]
sys.exit(3 if any("gloo" in n for n in names) else 0)
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from /proc")
def test_no_gloo_thread_outlives_shutdown(tmp_path):
    """The process group DDP used is freed by shutdown_distributed: its gloo threads are gone before
    the interpreter exits (else they die in C++ teardown with SIGABRT, now and then)."""
    script = tmp_path / "ddp_exit.py"
    script.write_text(GLOO_THREADS_AFTER_SHUTDOWN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = run_torchrun(["--nproc_per_node", "2", str(script)], env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("model", sorted(TINY))
def test_grouped_captions_equal_repeated_images(model):
    """forward(image_index=...) shares each image's memory among its captions: same logits as
    repeating the image features once per caption."""
    from capgen.models import create_model

    torch.manual_seed(0)
    overrides = {k.split(".", 1)[1].split("=")[0]: int(k.split("=")[1]) for k in TINY[model]}
    m = create_model(model, 12, 8, 16, overrides=overrides).eval()
    pooled, grid = torch.randn(2, 8), torch.randn(2, 16, 8)
    caps = torch.randint(4, 12, (5, 6))
    caps[:, 0] = 1
    index = torch.tensor([0, 0, 1, 1, 1])
    with torch.no_grad():
        grouped = m(pooled, grid, caps, index)["logits"]
        repeated = m(pooled[index], grid[index], caps)["logits"]
    torch.testing.assert_close(grouped, repeated)


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "{tmp}/s", "--images", "4"],
        ["train", "--data", "{tmp}/nope", "--features", "{tmp}/x", "--out", "{tmp}/r"],
    ],
)
def test_cli_destroys_the_process_group_on_every_exit_path(tmp_path, argv):
    """A live gloo group at interpreter exit aborts the process (SIGABRT after the last epoch, seen
    in ~1 of 5 DDP runs): the CLI must tear it down whether the command succeeds or fails."""
    import torch.distributed as td

    from capgen.cli import main

    td.init_process_group("gloo", store=td.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
        assert not td.is_initialized()
        assert code in (0, 2)
    finally:
        if td.is_initialized():
            td.destroy_process_group()


@pytest.mark.parametrize("model", ["transformer", "show_attend_tell"])
def test_self_critical_from_a_cross_entropy_checkpoint(model, prepared, features, tmp_path, capsys):
    xe = train(_cfg(model, "epochs=1"), prepared, features, tmp_path / "xe", progress=False)
    cfg = load_run_config(
        None,
        [
            "objective=scst",
            f"init={xe.best_checkpoint}",
            "epochs=2",
            "batch_size=4",
            "lr=1e-4",
            "warmup_steps=0",
            "min_lr_ratio=1.0",
            "scst_samples=3",
        ],
        "show_tell",
    )
    res = train(cfg, prepared, features, tmp_path / "scst", progress=False)
    # the architecture is the init checkpoint's, whatever --model said
    assert yaml.safe_load((tmp_path / "scst" / "config.yaml").read_text())["model"] == model
    assert load_checkpoint(res.best_checkpoint).model.name == model
    for row in res.history:
        assert {"train_reward", "train_baseline", "train_entropy", "CIDEr"} <= set(row)
        assert row["train_reward"] >= 0
    assert any(n.startswith("events") for n in os.listdir(tmp_path / "scst" / "tb"))


def test_self_critical_resumes_exactly(prepared, features, tmp_path, monkeypatch):
    import contextlib

    xe = train(_cfg("show_tell", "epochs=1"), prepared, features, tmp_path / "xe", progress=False)
    cfg = load_run_config(
        None,
        [
            "objective=scst",
            f"init={xe.best_checkpoint}",
            "epochs=2",
            "batch_size=4",
            "lr=1e-4",
            "warmup_steps=0",
            "scst_samples=3",
        ],
        "show_tell",
    )
    full = train(cfg, prepared, features, tmp_path / "full", progress=False)
    monkeypatch.setattr(trainer_mod, "_graceful_interrupt", lambda: contextlib.nullcontext(_StopAfter(3)))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, prepared, features, tmp_path / "cut", progress=False)
    monkeypatch.undo()
    resumed = train(cfg, prepared, features, tmp_path / "cut", resume=True, progress=False)
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["CIDEr"] == pytest.approx(b["CIDEr"], rel=1e-5)


def test_self_critical_bad_starts(prepared, features, tmp_path, capsys):
    from capgen.data import prepare_dataset

    base = ["train", "--data", str(prepared.root), "--features", str(features.root), "--set", "objective=scst"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "--init" in capsys.readouterr().err
    other = prepare_dataset(prepared.manifest["source"], tmp_path / "p2", min_count=1, max_vocab=10)
    xe = train(_cfg("show_tell", "epochs=1"), other, features, tmp_path / "xe", progress=False)
    assert main(base + ["--init", str(xe.best_checkpoint), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "another vocabulary" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() or [p.name for p in (tmp_path / "b").iterdir()] == [".lock"]


def test_runs_from_before_a_new_setting_still_resume(prepared, features, tmp_path):
    """config.yaml written before a TrainConfig field existed: the missing key takes its default."""
    cfg = _cfg("show_tell", "epochs=1")
    train(cfg, prepared, features, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    del saved["train"]["scst_samples"]
    path.write_text(yaml.safe_dump(saved))
    res = train(cfg, prepared, features, tmp_path / "run", resume=True, progress=False)  # finished: no-op
    assert [h["epoch"] for h in res.history] == [1]


def test_self_critical_scores_the_distribution_it_samples_from(prepared, features, tmp_path):
    """A model that puts its mass on <unk> (never sampled): the policy log-probs of the samples are
    those of the renormalised, rule-masked distribution, so no gradient can park mass on <unk>."""
    from capgen.training.objectives import Batch, SelfCritical

    xe = train(_cfg("show_tell", "epochs=1"), prepared, features, tmp_path / "xe", progress=False)
    model = load_checkpoint(xe.best_checkpoint).model
    with torch.no_grad():
        model.head.bias[prepared.vocab.unk_id] = 30.0
    obj = SelfCritical(prepared.vocab, prepared.split("train"), samples=3, max_len=6)
    recs = prepared.split("train")[:2]
    ids = [r.image for r in recs]
    b = Batch(
        torch.from_numpy(features.pooled(ids)),
        torch.from_numpy(features.grid(ids)),
        torch.tensor([0, 1]),
        torch.zeros(2, 3, dtype=torch.long),
        ids,
    )
    loss, logs = obj(model, model, b)
    assert torch.isfinite(loss)
    # with <unk> (e^30) counted, every sampled token would have NLL ~30; renormalised it is small
    assert logs["entropy"] < 10


def test_divergence_stops_at_its_step_and_keeps_the_checkpoints_before_it(prepared, features, tmp_path, monkeypatch):
    """A NaN loss in epoch 2 used to reach validation with NaN weights (internal error: IndexError)."""
    from capgen.training.objectives import CrossEntropy

    real, seen = CrossEntropy.__call__, {"epochs": 0, "steps": 0}

    def nan_at_epoch_2_step_2(self, ddp, model, b):
        loss, logs = real(self, ddp, model, b)
        seen["steps"] += seen["epochs"] == 1
        if seen["steps"] == 2:
            return loss * float("nan"), {**logs, "loss": float("nan")}
        return loss, logs

    monkeypatch.setattr(CrossEntropy, "__call__", nan_at_epoch_2_step_2)
    run = tmp_path / "run"
    with pytest.raises(trainer_mod.TrainingDiverged, match=r"epoch 2, step 2 of \d+ \(loss nan"):
        train(
            _cfg("show_tell"),
            prepared,
            features,
            run,
            progress=False,
            on_epoch=lambda row: seen.update(epochs=row["epoch"]),
        )
    assert torch.load(run / "last.pt", weights_only=True)["resume"]["epoch"] == 1  # epoch 1's, untouched
    assert [h["epoch"] for h in read_history(run / "history.json")] == [1]
    load_checkpoint(run / "best.pt")  # finite weights


def test_cli_divergence_is_one_line(prepared, features, tmp_path, capsys):
    from conftest import one_line_error

    one_line_error(
        capsys,
        [
            "train",
            "--data",
            prepared.root,
            "--features",
            features.root,
            "--out",
            tmp_path / "run",
            "--model",
            "transformer",
            *[a for s in TINY["transformer"] for a in ("--set", s)],
            "--set",
            "epochs=1",
            "--set",
            "batch_size=4",
            "--set",
            "lr=1e6",
        ],
        "training diverged at epoch 1, step",
        "lr",
    )


def test_resuming_a_run_that_stopped_early_changes_nothing(prepared, features, tmp_path, monkeypatch, capsys):
    """It trained one more epoch on every --resume (history 24 -> 25 -> 26, last.pt rewritten)."""
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2])  # no better epoch after the first: patience=1 stops at 2
    monkeypatch.setattr(callbacks_mod, "validate", lambda *a, **kw: {"CIDEr": next(scores), "BLEU-4": 0.0})
    run = tmp_path / "run"
    res = train(_cfg("show_tell", "epochs=5", "patience=1"), prepared, features, run, progress=False)
    assert res.stopped_early and len(res.history) == 2

    def files():
        return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = files()
    again = train(_cfg("show_tell", "epochs=5", "patience=1"), prepared, features, run, resume=True, progress=False)
    assert again.already_finished and again.stopped_early and [h["epoch"] for h in again.history] == [1, 2]
    assert (
        main(["train", "--data", str(prepared.root), "--features", str(features.root), "--out", str(run), "--resume"])
        == 0
    )
    assert "already finished (stopped early after 2 of 5 epochs)" in capsys.readouterr().out
    assert files() == before


def test_the_epoch_summary_is_one_write_to_stdout(monkeypatch, recorded_writes):
    """The epoch line is a result (stdout) written above the batch bar: one write with its newline,
    as every line above a bar (errors.say_above_bar), so another writer cannot split it."""
    from capgen.training.callbacks import Report

    monkeypatch.setattr(sys, "stdout", recorded_writes)
    Report().on_epoch_end(None, {"epoch": 2, "train_loss": 1.5, "CIDEr": 0.25, "BLEU-4": 0.125})
    # tqdm.write still writes its (empty) `end` apart: nothing to split
    calls = recorded_writes.calls
    assert [c for c in calls if c] == ["epoch 2: loss 1.500, val CIDEr-D 0.250, BLEU-4 0.125\n"], calls
