"""capgen tune on synthetic data: spaces, pruning, crashes, kill and resume, parallel workers, bad input."""

import csv
import os
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import capgen.training.callbacks as callbacks_mod
import capgen.tuning.study as study_mod
from capgen.cli import main
from capgen.features import FeatureCache, extract_features
from capgen.training import load_run_config
from capgen.tuning import TuneOptions, open_study, parse_space, run_worker
from capgen.tuning.report import write_report
from capgen.tuning.storage import JOURNAL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_SPACE = {
    "model": "transformer",
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.warmup_steps": 2,
    "train.val_images": 4,
    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "model_config.d_model": 16,
    "model_config.num_heads": 2,
    "model_config.ff_dim": {"choices": [16, 32]},
    "model_config.num_layers": {"low": 1, "high": 2},
}


@pytest.fixture
def features(prepared, tiny_encoder, tmp_path):
    extract_features(prepared, tmp_path / "feats", encoder=tiny_encoder, progress=False)
    return FeatureCache.open(tmp_path / "feats")


def _space_file(tmp_path, space=None, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(space or TINY_SPACE))
    return path


def _cli(prepared, features, space_path, study, *extra):
    return [
        "tune",
        "--data",
        str(prepared.root),
        "--features",
        str(features.root),
        "--space",
        str(space_path),
        "--study",
        str(study),
        "--set",
        "threads=1",
        *extra,
    ]


def _load(study_dir):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(
            str(study_dir / JOURNAL), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(study_dir / JOURNAL))
        )
    )
    return optuna.load_study(study_name="capgen", storage=storage)


def _study(prepared, features, tmp_path, space=None, **opts):
    space = parse_space(space or TINY_SPACE, "transformer")
    base = load_run_config(None, ["threads=1"], "transformer")
    opts = TuneOptions(**{"trials": 2, "startup_trials": 2, **opts})
    study = open_study(tmp_path / "study", space, base, prepared, features, opts)
    return study, space, base, opts


# ---- the search space ---------------------------------------------------------------------------


def test_space_draws_typed_values_and_conditional_keys():
    space = parse_space(
        {
            "model": {"choices": ["show_tell", "transformer"]},
            "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "train.batch_size": {"low": 2, "high": 8, "step": 2},
            "transformer.d_model": {"choices": [16, 32]},
            "show_tell.rnn": {"choices": ["gru"]},
            "model_config.dropout": 0.2,
        },
        "show_attend_tell",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        values = space.sample(study.ask())
        seen.add(values["model"])
        assert isinstance(values["train.batch_size"], int) and values["train.batch_size"] % 2 == 0
        assert 1e-4 <= values["train.lr"] <= 1e-2 and values["model_config.dropout"] == 0.2
        assert ("transformer.d_model" in values) == (values["model"] == "transformer")
        assert ("show_tell.rnn" in values) == (values["model"] == "show_tell")
    assert seen == {"show_tell", "transformer"}


@pytest.mark.parametrize(
    "space, words",
    [
        ({"train.lrr": 0.1}, ["train.lrr", "TrainConfig"]),
        ({"foo.bar": 1}, ["foo.bar", "MODEL"]),
        ({"lr": 0.1}, ["'lr'", "train.KEY"]),
        ({"train.lr": {"low": 0.1, "high": 0.01}}, ["train.lr", "greater than high"]),
        ({"train.lr": {"low": 0.0, "high": 0.01, "log": True}}, ["train.lr", "> 0"]),
        ({"train.lr": {"low": "abc", "high": 0.01}}, ["train.lr", "expected float"]),
        ({"train.epochs": {"low": 1.5, "high": 3}}, ["train.epochs", "expected int"]),
        ({"train.lr": {"low": 0.1}}, ["train.lr", "choices"]),
        ({"train.batch_size": {"choices": []}}, ["train.batch_size", "non-empty"]),
        ({"train.batch_size": [8, 16]}, ["train.batch_size", "choices: [8, 16]"]),
        ({"model_config.positions": {"low": 1, "high": 2}}, ["model_config.positions", "number setting"]),
        (
            {"model_config.d_model": {"choices": [16, 32]}, "model": {"choices": ["transformer", "show_tell"]}},
            ["model_config.d_model", "ShowTellConfig"],
        ),
        ({"show_tell.rnn": {"choices": ["gru"]}}, ["show_tell.rnn", "not among the space's models"]),
        ({"model": "resnet"}, ["resnet", "expected one of"]),
        ({"model": {"low": 1, "high": 2}}, ["model", "choices"]),
    ],
)
def test_bad_space_file_is_one_clear_line_and_touches_no_study(space, words, prepared, features, tmp_path, capsys):
    path = _space_file(tmp_path, {"model": "transformer", **space} if "model" not in space else space)
    rc = main(_cli(prepared, features, path, tmp_path / "study"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(path) in err and all(w in err for w in words), err
    assert not (tmp_path / "study").exists()


def test_malformed_space_yaml(prepared, features, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("train.lr: {low: 1\n")
    assert main(_cli(prepared, features, path, tmp_path / "study")) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_baseline_outside_the_space_is_refused_before_the_study_exists(prepared, features, tmp_path, capsys):
    path = _space_file(tmp_path)
    rc = main(_cli(prepared, features, path, tmp_path / "study", "--baseline", "--set", "model.ff_dim=64"))
    assert rc == 2 and "model_config.ff_dim (64) is outside" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


# ---- studies ------------------------------------------------------------------------------------


def _fake_validate(model, *args, **kwargs):
    """val CIDEr-D = 0.1 per decoder layer: a deterministic stand-in, so pruning is predictable."""
    return {"CIDEr": 0.1 * model.config.num_layers, "BLEU-4": 0.0}


def test_study_prunes_weak_trials_and_reports(prepared, features, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(callbacks_mod, "validate", _fake_validate)
    study, space, base, opts = _study(prepared, features, tmp_path, trials=3, baseline=False)
    for layers in (2, 2, 1):
        study.enqueue_trial({"model_config.num_layers": layers})
    run_worker(study, space, base, prepared, features, tmp_path / "study", opts)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert study.trials[2].user_attrs["epochs"] == 1  # stopped after its first epoch
    assert study.trials[0].value == pytest.approx(0.2)
    assert "trial 2 PRUNED" in capsys.readouterr().out

    lines = write_report(study, tmp_path / "study")
    out = tmp_path / "study"
    assert "| 2 | PRUNED |" in "\n".join(lines)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["status"] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert (out / "optimization_history.png").stat().st_size > 1000
    best = load_run_config(out / "best_config.yaml")  # a ready config for capgen train
    assert best.to_dict() == study.trials[0].user_attrs["config"]
    assert best.model_config["num_layers"] == 2 and best.train.epochs == 2
    assert (out / "trials" / "0" / "best.pt").is_file()


def test_crashing_trial_is_recorded_as_failed_and_the_study_goes_on(prepared, features, tmp_path, monkeypatch):
    real, calls = study_mod.train, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(study_mod, "train", flaky)
    study, space, base, opts = _study(prepared, features, tmp_path, trials=2)
    run_worker(study, space, base, prepared, features, tmp_path / "study", opts)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "RuntimeError: out of memory" in study.trials[0].user_attrs["error"]
    assert "| FAIL |" in write_report(study, tmp_path / "study")[0]


@pytest.mark.slow
def test_killed_tune_continues_without_losing_a_trial(prepared, features, tmp_path):
    space = _space_file(tmp_path, {**TINY_SPACE, "train.epochs": 4})
    study_dir = tmp_path / "study"
    # no pruning: whether a tiny random trial is pruned depends on its draw, not on what is tested here
    argv = _cli(prepared, features, space, study_dir, "--trials", "3", "--startup-trials", "2", "--pruner", "none")
    proc = subprocess.Popen(
        [sys.executable, "-m", "capgen", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    history = study_dir / "trials" / "1" / "history.json"
    deadline = time.monotonic() + 300
    while not history.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL in the middle of trial 1: no handler runs
    proc.wait()
    before = _load(study_dir)
    assert before.trials[0].state == TrialState.COMPLETE, proc.stderr.read()
    assert before.trials[1].state == TrialState.RUNNING

    assert main(argv) == 0  # the same command again
    after = _load(study_dir)
    assert after.trials[0].value == before.trials[0].value and after.trials[0].params == before.trials[0].params
    t1 = after.trials[1]
    assert t1.state == TrialState.FAIL and t1.user_attrs["interrupted"]
    retry = next(t for t in after.trials if t.user_attrs.get("retry_of") == 1)
    assert retry.params == t1.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_trial"] == 1  # continued its run, did not start over
    assert retry.user_attrs["epochs"] == 4
    assert not (study_dir / "trials" / "1").exists()
    assert sum(t.state == TrialState.COMPLETE for t in after.trials) == 3


@pytest.mark.slow
def test_two_workers_share_one_study(prepared, features, tmp_path, capsys):
    space = _space_file(tmp_path, {**TINY_SPACE, "train.epochs": 1})
    # no pruning: which tiny random trial would be pruned depends on its draw, not on sharing
    assert (
        main(_cli(prepared, features, space, tmp_path / "study", "--trials", "4", "--workers", "2", "--pruner", "none"))
        == 0
    )
    study = _load(tmp_path / "study")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 4 and len(done) == len(study.trials)  # two may start the last one at once
    assert len({t.user_attrs["run_dir"] for t in done}) == len(done)
    assert all(t.user_attrs["config"]["train"]["threads"] == 1 for t in done)
    assert all(t.user_attrs["worker"].split(":")[1] != str(os.getpid()) for t in done)  # the workers ran them
    assert "best: trial" in capsys.readouterr().out


def test_study_from_other_space_or_data_is_refused(prepared, features, tmp_path, capsys, synth_dir):
    from capgen.data import prepare_dataset

    space = _space_file(tmp_path, {**TINY_SPACE, "train.epochs": 1})
    study_dir = tmp_path / "study"
    assert main(_cli(prepared, features, space, study_dir, "--trials", "1")) == 0
    journal = (study_dir / JOURNAL).read_bytes()
    capsys.readouterr()

    other = _space_file(tmp_path, {**TINY_SPACE, "train.epochs": 1, "train.lr": 1e-3}, name="other.yaml")
    assert main(_cli(prepared, features, other, study_dir, "--trials", "2")) == 2
    err = capsys.readouterr().err
    assert "made for another --space" in err and "other.yaml" in err and len(err.strip().splitlines()) == 1

    data2 = prepare_dataset(synth_dir, tmp_path / "prepared2", min_count=1, seed=7)  # other splits
    assert main(_cli(data2, features, space, study_dir, "--trials", "2")) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "prepared2" in err and "--space" not in err
    assert (study_dir / JOURNAL).read_bytes() == journal  # nothing written


def test_folder_that_is_not_a_study_is_refused(prepared, features, tmp_path, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "notes.txt").write_text("mine")
    assert main(_cli(prepared, features, _space_file(tmp_path), tmp_path / "study")) == 2
    assert "not a capgen study" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url, words",
    [
        ("sqlite:////nonexistent-dir/sub/x.db", ["cannot reach the database"]),
        ("postgresql://alice:s3cret@127.0.0.1:1/capgen", ["postgresql://alice:***@127.0.0.1:1/capgen"]),
    ],
)
def test_unreachable_database_is_one_line(url, words, prepared, features, tmp_path, capsys):
    assert main(_cli(prepared, features, _space_file(tmp_path), tmp_path / "study", "--storage", url)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words) and "s3cret" not in err, err


def test_half_written_journal_line_is_repaired(prepared, features, tmp_path):
    study, space, base, opts = _study(prepared, features, tmp_path, trials=1)
    with open(tmp_path / "study" / JOURNAL, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id"')  # a worker killed mid-append
    study, *_ = _study(prepared, features, tmp_path, trials=1)
    assert study.user_attrs["fingerprint"]


def test_tune_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "--space" in capsys.readouterr().out


def test_a_continued_study_draws_new_points(prepared, features, tmp_path, monkeypatch):
    """Each rerun (or restart after a kill) seeded its sampler alike and replayed its first draws:
    `--trials 1` then `--trials 2` made trial 1 identical to trial 0."""
    from types import SimpleNamespace

    monkeypatch.setattr(study_mod, "train", lambda *a, **kw: SimpleNamespace(best_metrics={"CIDEr": 0.1}))
    for n in (1, 2, 3, 4):  # a new process each time: the study is opened afresh
        study, space, base, opts = _study(prepared, features, tmp_path, trials=n, startup_trials=10)
        run_worker(study, space, base, prepared, features, tmp_path / "study", opts, say=lambda s: None)
    points = [tuple(sorted(t.params.items())) for t in _load(tmp_path / "study").trials]
    assert len(points) == 4 and len(set(points)) == 4, points


def _flip_a_key(journal):  # "user_attr" -> "user_atts": one bit (r 0x72 -> s 0x73); the line still parses
    journal.write_bytes(journal.read_bytes().replace(b'"user_attr"', b'"user_atts"', 1))


def _as_folder(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda j: j.open("ab").write(b"garbage\n"), ["line 3 is not a JSON record"]),
        (lambda j: j.open("ab").write(b'{"op_code": 99}\n'), ["line 3 has no known op_code"]),
        (lambda j: j.open("ab").write(b'{"op_code": 8, "key": "\xff"}\n'), ["journal.log", "not UTF-8"]),
        (lambda j: j.open("ab").write(b"[" * 100_000 + b"\n"), ["line 3 is not a JSON record"]),
        (lambda j: j.open("ab").write(b"\n"), ["line 3 is not a JSON record"]),
        (_flip_a_key, ["Optuna cannot replay it"]),
        (_as_folder, ["must be a file"]),
        (lambda j: (j.parent / "trials").write_text("x"), ["trials", "not a file"]),
    ],
    ids=[
        "garbage line",
        "op_code 99",
        "not UTF-8",
        "deep nesting",
        "empty line",
        "bit flip",
        "journal is a folder",
        "trials is a file",
    ],
)
def test_damaged_journal_is_one_named_error(damage, words, prepared, features, tmp_path, capsys):
    """Each gave an internal error (JSONDecodeError, KeyError, IsADirectoryError, NotADirectoryError,
    UnicodeDecodeError, RecursionError, and "AssertionError: Should not reach." for op_code 99)."""
    from capgen.tuning.storage import StudyError

    _study(prepared, features, tmp_path)  # the study: two journal lines
    damage(tmp_path / "study" / JOURNAL)
    with pytest.raises(StudyError, match="damaged study journal|must be|not a file|not UTF-8 text") as e:
        _study(prepared, features, tmp_path)
    assert all(w in str(e.value) for w in words), e.value
    from conftest import one_line_error

    one_line_error(capsys, _cli(prepared, features, _space_file(tmp_path), tmp_path / "study"), *words)
