"""Bulk captioning into a file: append, resume after a kill, repair, bad files, changed inputs."""

import json
import shutil

import pytest

import capgen.inference.bulk as bulk_mod
from capgen.cli import main
from capgen.errors import CapgenError
from capgen.inference.bulk import caption_to_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def photos(tiny_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for r in tiny_run.prepared.split("train")[:10]:
        shutil.copy(r.path, folder / r.path.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bulk_writes_paths_skips_done_and_lists_bad_files(tiny_captioner, photos, tmp_path):
    out = tmp_path / "caps.jsonl"
    res = caption_to_file(tiny_captioner, [str(photos)], out, batch_size=4, progress=False)
    assert (res.inputs, res.captioned, res.skipped) == (11, 10, 0)
    lines = _lines(out)
    assert sorted(d["image"] for d in lines) == sorted(str(p) for p in photos.iterdir() if p.name != "broken.jpg")
    assert all(d["caption"] for d in lines)
    errors = _lines(tmp_path / "caps.jsonl.errors")
    assert [e["image"] for e in errors] == [str(photos / "broken.jpg")] and set(res.failed) == {errors[0]["image"]}
    again = caption_to_file(tiny_captioner, [str(photos)], out, batch_size=4, progress=False)
    assert (again.captioned, again.skipped) == (0, 10) and len(_lines(out)) == 10


def test_a_kill_loses_at_most_the_batch_in_flight(tiny_captioner, photos, tmp_path, monkeypatch):
    """Die in the middle of a line (as kill -9 may): the rerun cuts the torn line and finishes the job."""
    out = tmp_path / "caps.jsonl"
    real = bulk_mod.format_line
    calls = {"n": 0}

    def dying(fmt, path, res):
        calls["n"] += 1
        if calls["n"] == 6:
            return real(fmt, path, res)[:20]   # a torn write, then the process is gone
        if calls["n"] > 6:
            raise KeyboardInterrupt
        return real(fmt, path, res)

    monkeypatch.setattr(bulk_mod, "format_line", dying)
    with pytest.raises(KeyboardInterrupt):
        caption_to_file(tiny_captioner, [str(photos)], out, batch_size=4, progress=False)
    monkeypatch.undo()
    assert not out.read_text().endswith("\n")
    res = caption_to_file(tiny_captioner, [str(photos)], out, batch_size=4, progress=False)
    assert res.skipped == 5 and res.captioned == 5
    assert any("cut its last line" in n for n in res.notes)
    assert len({d["image"] for d in _lines(out)}) == len(_lines(out)) == 10


def test_changed_inputs_are_reported_and_other_settings_refused(tiny_captioner, photos, tmp_path):
    out = tmp_path / "caps.csv"
    caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    assert out.read_text().splitlines()[0] == "image,caption,score,alternatives"
    gone = sorted(photos.glob("*.png")) or sorted(p for p in photos.iterdir() if p.name != "broken.jpg")
    gone[0].unlink()
    res = caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    assert res.captioned == 0 and any("inputs changed" in n and "1 captioned files are no longer" in n
                                      for n in res.notes)
    with pytest.raises(CapgenError, match="another decode"):
        caption_to_file(tiny_captioner, [str(photos)], out, tiny_captioner.decode_config(beam_size=1),
                        progress=False)
    job_path = tmp_path / "caps.csv.job.json"       # a job from before min_words/max_words existed
    job = json.loads(job_path.read_text())
    job["decode"] = {k: v for k, v in job["decode"].items() if k not in ("min_words", "max_words")}
    job_path.write_text(json.dumps(job))
    assert caption_to_file(tiny_captioner, [str(photos)], out, progress=False).captioned == 0
    with pytest.raises(CapgenError, match="another decode"):
        caption_to_file(tiny_captioner, [str(photos)], out, tiny_captioner.decode_config(min_words=3),
                        progress=False)
    (tmp_path / "other.jsonl").write_text("hello\n")
    with pytest.raises(CapgenError, match="not written by capgen caption"):
        caption_to_file(tiny_captioner, [str(photos)], tmp_path / "other.jsonl", progress=False)


def test_cli_bulk_mode(tiny_run, photos, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    code = main(["caption", str(photos), "--model", str(tiny_run.checkpoints["show_tell"]), "--encoder",
                 tiny_run.encoder, "--out", str(out), "--greedy"])
    err = capsys.readouterr().err
    assert code == 1 and "10 captioned" in err and "1 failed" in err and len(_lines(out)) == 10
    assert f"failed {photos / 'broken.jpg'}" in err
    code = main(["caption", str(photos), "--model", str(tiny_run.checkpoints["show_tell"]), "--encoder",
                 tiny_run.encoder, "--out", str(tmp_path / "c.txt")])
    assert code == 2 and "must end in .jsonl or .csv" in capsys.readouterr().err
