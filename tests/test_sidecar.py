"""Sidecar files: `capgen caption PHOTOS --sidecar`, existing files, prefix/suffix/tags, kill -9 and resume."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from capgen.cli import main
from capgen.errors import CapgenError
from capgen.inference.sidecar import SidecarSettings, compose, plan, remove_temporaries, write_sidecar
from capgen.result import CaptionResult
from capgen.tags import Tag
from conftest import one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def photos(tiny_run, tmp_path):
    """Ten photos in PHOTOS/ and PHOTOS/sub/, and one broken file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, r in enumerate(tiny_run.prepared.split("train")[:10]):
        shutil.copy(r.path, folder / ("sub" if i % 2 else "") / r.path.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _cli(tiny_run, *args):
    return main(
        [
            "caption",
            *map(str, args),
            "--model",
            str(tiny_run.checkpoints["show_tell"]),
            "--encoder",
            tiny_run.encoder,
            "--backend",
            "torch",
        ]
    )


def _images(folder):
    return sorted(p for p in folder.rglob("*.jpg") if p.name != "broken.jpg")


def test_sidecar_beside_each_photo_and_a_rerun_skips_them(tiny_run, photos, capsys):
    assert _cli(tiny_run, photos, "--sidecar") == 1  # broken.jpg
    out, err = capsys.readouterr()
    images = _images(photos)
    for img in images:
        text = img.with_suffix(".txt").read_text()
        assert text.endswith("\n") and text.count("\n") == 1 and text.strip()
        assert f"{img}\t{text.strip()}" in out.splitlines()
    assert not (photos / "broken.txt").exists() and "broken.jpg" in err
    assert "10 written, 0 already had a sidecar, 1 failed" in err
    stamps = {img: img.with_suffix(".txt").stat().st_mtime_ns for img in images}
    assert _cli(tiny_run, photos, "--sidecar") == 1
    out, err = capsys.readouterr()
    assert out == "" and "0 written, 10 already had a sidecar" in err
    assert stamps == {img: img.with_suffix(".txt").stat().st_mtime_ns for img in images}


def test_sidecar_dir_mirrors_the_folders_json_and_prefix_suffix(tiny_run, photos, tmp_path, capsys):
    out_dir = tmp_path / "captions"
    assert (
        _cli(tiny_run, photos, "--sidecar", "json", "--sidecar-dir", out_dir, "--prefix", "sks", "--suffix", "photo")
        == 1
    )
    capsys.readouterr()
    for img in _images(photos):
        side = out_dir / img.relative_to(photos).with_suffix(".json")
        d = json.loads(side.read_text())
        assert d["image"] == img.name and d["text"] == f"sks, {d['caption']}, photo" and "score" in d
        assert not img.with_suffix(".json").exists()


def test_existing_overwrite_append_prepend(tmp_path):
    photo, side = tmp_path / "a.jpg", tmp_path / "a.txt"
    res = CaptionResult("a dog runs", -1.0, ["a", "dog", "runs"], tags=[Tag("dog", 0.9), Tag("grass", 0.5)])
    side.write_text("old words\n")
    assert write_sidecar(photo, side, res, SidecarSettings(existing="append"))
    assert side.read_text() == "old words, dog, grass, a dog runs\n"
    assert not write_sidecar(photo, side, res, SidecarSettings(existing="append"))  # a rerun adds nothing
    side.write_text("old words\n")
    assert write_sidecar(photo, side, res, SidecarSettings(existing="prepend", prefix="sks"))
    assert side.read_text() == "sks, dog, grass, a dog runs, old words\n"
    assert not write_sidecar(photo, side, res, SidecarSettings(existing="prepend", prefix="sks"))
    assert write_sidecar(photo, side, res, SidecarSettings(existing="overwrite"))
    assert side.read_text() == "dog, grass, a dog runs\n"
    assert compose(CaptionResult("a cat", -1.0, ["a", "cat"]), SidecarSettings(suffix=" style ")) == "a cat, style"
    with pytest.raises(CapgenError, match="json"):
        SidecarSettings("json", existing="append")


def test_two_photos_sharing_a_sidecar_and_leftover_temporaries(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    planned = plan([str(tmp_path)], SidecarSettings())
    assert [p.name for p, _ in planned.todo] == ["a.jpg"]
    assert list(planned.failed) == [str(tmp_path / "a.png")] and "a.txt" in planned.failed[str(tmp_path / "a.png")]
    (tmp_path / ".a.txt.abcd1234.tmp").write_text("torn")
    (tmp_path / ".notes.tmp").write_text("someone else's")
    assert remove_temporaries([tmp_path / "a.txt"]) == 1
    assert (tmp_path / ".notes.tmp").exists()


def test_bad_flag_combinations_are_one_line(tiny_run, photos, tmp_path, capsys):
    one_line_error(capsys, ["caption", photos, "--prefix", "x"], "--prefix", "--sidecar")
    one_line_error(capsys, ["caption", photos, "--sidecar", "--out", tmp_path / "c.jsonl"], "--out")
    one_line_error(capsys, ["caption", photos, "--sidecar", "json", "--existing", "append"], "json")
    one_line_error(capsys, ["caption", photos, "--sidecar", "csv"], "--sidecar")
    (tmp_path / "file").write_text("")
    one_line_error(capsys, ["caption", photos, "--sidecar", "--sidecar-dir", tmp_path / "file"], "folder")


def test_kill_9_at_random_points_then_a_rerun_finishes(tiny_run, tmp_path):
    """kill -9 the CLI (a real process) after a random number of sidecars, twice; the rerun leaves every
    photo with one complete sidecar, no temporaries, and captions only the rest."""
    folder = tmp_path / "many"
    folder.mkdir()
    records = tiny_run.prepared.split("train")
    for k in range(40):
        shutil.copy(records[k % len(records)].path, folder / f"{k:02d}.jpg")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tiny_run.root / "mods"), *sys.path])}
    cmd = [
        sys.executable,
        "-m",
        "capgen",
        "caption",
        str(folder),
        "--sidecar",
        "--batch-size",
        "1",
        "--model",
        str(tiny_run.checkpoints["show_tell"]),
        "--encoder",
        tiny_run.encoder,
        "--backend",
        "torch",
        "--threads",
        "1",
    ]
    rng = random.Random(0)
    for _ in range(2):
        target = rng.randrange(1, 39)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and len(list(folder.glob("*.txt"))) < target:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(list(folder.glob("*.txt")))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{40 - before} written, {before} already had a sidecar, 0 failed" in done.stderr
    assert len(done.stdout.splitlines()) == 40 - before
    texts = [p.read_text() for p in sorted(folder.glob("*.txt"))]
    assert len(texts) == 40 and all(t.count("\n") == 1 and t.strip() and "," not in t for t in texts)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
