"""The command line: help everywhere, one-line errors with exit 2, a real end-to-end run."""

import importlib.util
import subprocess
import sys

import pytest

from capgen.cli import COMMANDS, build_parser, main
from capgen.features import FeatureCache


def test_every_command_has_help(capsys):
    for module in COMMANDS:
        name = module.__name__.rsplit(".", 1)[-1]
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: capgen " + name in out and len(out.splitlines()) > 3
    assert build_parser().format_help().count("COMMAND") >= 1


def _one_line_error(capsys, argv, *words):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_input_is_one_line_exit_2(capsys, tmp_path, prepared, tiny_encoder):
    _one_line_error(capsys, ["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "p")], "nope", "no such")
    assert not (tmp_path / "p").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg", "caption": "x"}\n[1, 2\n')
    _one_line_error(capsys, ["prepare", str(bad), "--out", str(tmp_path / "p")], "bad.jsonl:2", "malformed JSON")
    assert not (tmp_path / "p").exists()
    _one_line_error(capsys, ["extract", str(tmp_path / "nope"), "--out", str(tmp_path / "f")], "nope")
    _one_line_error(
        capsys,
        ["extract", str(prepared.root), "--out", str(tmp_path / "f"), "--encoder", "resnet9000"],
        "resnet9000",
        "efficientnet-lite2",
    )
    assert not (tmp_path / "f").exists()
    if importlib.util.find_spec("timm") is None:
        _one_line_error(
            capsys,
            ["extract", str(prepared.root), "--out", str(tmp_path / "f"), "--encoder", "timm:resnet18"],
            "capgen[timm]",
        )


def test_an_error_line_is_one_write(monkeypatch, tmp_path, recorded_writes):
    """Issue 20's CI failure: under PYTHONUNBUFFERED print() wrote a message and its newline apart, so
    two torchrun ranks' errors ran together on one line. Each message must reach stderr in one write."""

    stderr = recorded_writes
    monkeypatch.setattr(sys, "stderr", stderr)
    code = main(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    assert code == 2 and len(stderr.calls) == 1, stderr.calls
    assert stderr.calls[0].startswith("capgen prepare: error:") and stderr.calls[0].endswith("\n")
    assert stderr.calls[0].count("\n") == 1


def test_a_line_above_a_progress_bar_is_one_write(monkeypatch, recorded_writes):
    """A skipped photo's line while the bar runs: tqdm.write writes its `end` apart, which ran lines
    of torchrun ranks together as print() did; say_above_bar writes the line with its newline."""
    from tqdm.auto import tqdm

    from capgen.errors import say_above_bar

    stderr = recorded_writes
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = tqdm(total=3, file=stderr)
    bar.update(1)
    say_above_bar("capgen caption: skipped a.jpg: not an image")
    bar.close()
    mine = [c for c in stderr.calls if "skipped" in c]
    assert mine == ["capgen caption: skipped a.jpg: not an image\n"], stderr.calls


def test_bad_option_values_exit_2(capsys, tmp_path):
    for argv in (
        ["prepare", "x", "--out", "y", "--min-count", "zero"],
        ["prepare", "x", "--out", "y", "--format", "xml"],
        ["extract", "x", "--out", "y", "--batch-size", "-3"],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "capgen", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "p"), "--debug"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_synth_prepare_extract_end_to_end_with_a_real_encoder(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--images", "12", "--format", "flickr"]) == 0
    assert main(["prepare", str(tmp_path / "d"), "--out", str(tmp_path / "p"), "--min-count", "1"]) == 0
    assert (
        main(
            [
                "extract",
                str(tmp_path / "p"),
                "--out",
                str(tmp_path / "f"),
                "--encoder",
                "efficientnet-lite0",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "extracted 12 images" in out
    cache = FeatureCache.open(tmp_path / "f")
    assert cache.encoder_name == "efficientnet-lite0" and len(cache) == 12
    assert cache.grid([cache.meta["images"][0]]).shape == (1, 49, 1280)
