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
            return real(fmt, path, res)[:20]  # a torn write, then the process is gone
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
    assert res.captioned == 0 and any(
        "inputs changed" in n and "1 captioned files are no longer" in n for n in res.notes
    )
    with pytest.raises(CapgenError, match="another decode"):
        caption_to_file(tiny_captioner, [str(photos)], out, tiny_captioner.decode_config(beam_size=1), progress=False)
    job_path = tmp_path / "caps.csv.job.json"  # a job from before min_words/max_words existed
    job = json.loads(job_path.read_text())
    job["decode"] = {k: v for k, v in job["decode"].items() if k not in ("min_words", "max_words")}
    job_path.write_text(json.dumps(job))
    assert caption_to_file(tiny_captioner, [str(photos)], out, progress=False).captioned == 0
    with pytest.raises(CapgenError, match="another decode"):
        caption_to_file(tiny_captioner, [str(photos)], out, tiny_captioner.decode_config(min_words=3), progress=False)
    (tmp_path / "other.jsonl").write_text("hello\n")
    with pytest.raises(CapgenError, match="not written by capgen caption"):
        caption_to_file(tiny_captioner, [str(photos)], tmp_path / "other.jsonl", progress=False)


def test_cli_bulk_mode(tiny_run, photos, tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    code = main(
        [
            "caption",
            str(photos),
            "--model",
            str(tiny_run.checkpoints["show_tell"]),
            "--encoder",
            tiny_run.encoder,
            "--out",
            str(out),
            "--greedy",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "10 captioned" in err and "1 failed" in err and len(_lines(out)) == 10
    assert f"failed {photos / 'broken.jpg'}" in err
    code = main(
        [
            "caption",
            str(photos),
            "--model",
            str(tiny_run.checkpoints["show_tell"]),
            "--encoder",
            tiny_run.encoder,
            "--out",
            str(tmp_path / "c.txt"),
        ]
    )
    assert code == 2 and "must end in .jsonl or .csv" in capsys.readouterr().err


# ---- issue 20 #4-#9: hostile file names and damaged job state ---------------------------------------


def _odd_names(photos, *names):
    """Copies of one photo under each of `names` (str, or bytes for a name that is not UTF-8)."""
    import os

    src = next(p for p in sorted(photos.iterdir()) if p.name != "broken.jpg")
    for name in names:
        raw = os.fsencode(photos) + b"/" + (name if isinstance(name, bytes) else os.fsencode(name))
        shutil.copy(src, raw)
    return photos


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_odd_file_names_are_captioned_once_and_found_again(tiny_captioner, photos, tmp_path, fmt):
    """Not UTF-8 (#4), \\n and \\r (#5), U+2028 / U+0085 (#6), a tab, an ANSI escape, a formula (#9)."""
    import csv
    import os

    _odd_names(
        photos,
        b"a\xff.jpg",
        "new\nline.jpg",
        "cr\rx.jpg",
        "ls\u2028x.jpg",
        "nel\x85x.jpg",
        "t\tx.jpg",
        "esc\x1b[31mx.jpg",
        "=cmd()+1.jpg",
        "'q.jpg",
    )
    (photos / "bad\u2028\x85name.jpg").write_bytes(b"unreadable")  # a failure under such a name (#6)
    out = tmp_path / f"caps.{fmt}"
    res = caption_to_file(tiny_captioner, [str(photos)], out, batch_size=4, progress=False)
    assert (res.captioned, len(res.failed)) == (19, 2)
    data = out.read_bytes()
    data.decode("utf-8")  # valid UTF-8 whatever the names
    text = data.decode()
    if fmt == "jsonl":
        assert len(text.splitlines()) == 19
        assert {d["image"] for d in map(json.loads, text.splitlines())} >= {
            str(photos / "a\udcff.jpg"),
            str(photos / "new\nline.jpg"),
        }
    else:
        rows = list(csv.reader(text.splitlines()))
        assert len(rows) == 20 and all(len(r) == 4 for r in rows)
        assert not [r for r in rows[1:] if r[0].startswith(("=", "+", "-", "@")) or "\x1b" in r[0]]
    errors = [json.loads(line) for line in (tmp_path / f"caps.{fmt}.errors").read_text("utf-8").splitlines()]
    assert {e["image"] for e in errors} == {str(photos / "broken.jpg"), str(photos / "bad\u2028\x85name.jpg")}
    assert not list(tmp_path.glob("*.part*"))
    again = caption_to_file(tiny_captioner, [str(photos)], out, batch_size=4, progress=False)
    assert (again.captioned, again.skipped) == (0, 19) and out.read_bytes() == data
    assert os.fsencode(photos / "a\udcff.jpg").endswith(b"a\xff.jpg")


def test_a_file_named_twice_is_captioned_once(tiny_captioner, photos, tmp_path):
    """#8: the same path twice, or a folder and a file in it (also through another spelling)."""
    one = next(p for p in sorted(photos.iterdir()) if p.name != "broken.jpg")
    out = tmp_path / "caps.jsonl"
    res = caption_to_file(
        tiny_captioner, [str(one), str(photos), str(one), f"{photos}/./{one.name}"], out, progress=False
    )
    images = [d["image"] for d in _lines(out)]
    assert res.inputs == 11 and len(images) == 10 == len(set(images)) and images.count(str(one)) == 1


def _job(tmp_path, tiny_captioner, photos):
    out = tmp_path / "caps.jsonl"
    caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    return out


@pytest.mark.parametrize("damage", ["empty", "truncated", "list", "not-utf8", "folder"])
def test_a_damaged_job_file_is_a_named_error(tiny_captioner, photos, tmp_path, damage):
    """#7: .job.json damaged in each way -> CapgenError naming it (exit 2), OUT untouched."""
    out = _job(tmp_path, tiny_captioner, photos)
    job = out.with_name(out.name + ".job.json")
    before = out.read_bytes()
    text = job.read_bytes()
    job.unlink()
    if damage == "folder":
        job.mkdir()
    else:
        job.write_bytes(
            {
                "empty": b"",
                "truncated": text[: len(text) // 2],
                "list": b"[1, 2]",
                "not-utf8": b'{"capgen_bulk": 1, "model": "\xff"}',
            }[damage]
        )
    with pytest.raises(CapgenError, match=r"caps\.jsonl\.job\.json: damaged"):
        caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    assert out.read_bytes() == before


def test_damaged_output_parts_and_lock_are_named_errors(tiny_captioner, photos, tmp_path):
    """#7: a stray 0xFF byte in OUT, a garbage leftover OUT.part0, OUT.lock a folder, OUT under /proc."""
    out = _job(tmp_path, tiny_captioner, photos)
    good = out.read_bytes()
    out.write_bytes(good + b"\xff\n")
    with pytest.raises(CapgenError, match=r"caps\.jsonl: line 11 is not UTF-8"):
        caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    out.write_bytes(good)
    part = tmp_path / "caps.jsonl.part0"
    part.write_bytes(b"garbage\n")
    with pytest.raises(CapgenError, match=r"caps\.jsonl\.part0: line 1 is not a capgen jsonl caption line"):
        caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    assert out.read_bytes() == good
    part.unlink()
    lock = tmp_path / "caps.jsonl.lock"
    lock.unlink()
    lock.mkdir()
    with pytest.raises(CapgenError, match=r"caps\.jsonl\.lock: cannot open it as this job's lock file"):
        caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    with pytest.raises(CapgenError, match="/proc/caps.jsonl"):
        caption_to_file(tiny_captioner, [str(photos)], "/proc/caps.jsonl", progress=False)


def test_a_leftover_part_merges_only_lines_of_the_inputs(tiny_captioner, photos, tmp_path):
    """#7: a part left by a dead run is merged, but not its lines for images that are not inputs."""
    out = _job(tmp_path, tiny_captioner, photos)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))
    stranger = json.dumps({**json.loads(lines[0]), "image": "/elsewhere/not-an-input.jpg"}) + "\n"
    (tmp_path / "caps.jsonl.part0").write_text(lines[-1] + stranger)
    res = caption_to_file(tiny_captioner, [str(photos)], out, progress=False)
    assert res.captioned == 0 and any("dropped 1 lines" in n for n in res.notes)
    assert "not-an-input" not in out.read_text() and len(_lines(out)) == 10


def test_stdout_records_stay_one_safe_line(tiny_run, photos, capsys):
    """#9: text, csv and jsonl on stdout with names holding \\n \\r \\t, ANSI escapes, formulas, bytes
    that are not UTF-8."""
    import csv
    import os

    keep = sorted(p for p in photos.iterdir() if p.name != "broken.jpg")[0]
    for p in photos.iterdir():
        if p != keep:
            p.unlink()
    _odd_names(photos, b"a\xff.jpg", "n\nl.jpg", "c\rr.jpg", "t\tb.jpg", "e\x1b[2Jx.jpg", "=1+2.jpg", "@x.jpg")
    model = ["--model", str(tiny_run.checkpoints["show_tell"]), "--encoder", tiny_run.encoder, "--greedy"]
    for fmt in ("text", "csv", "jsonl"):
        assert main(["caption", str(photos), "--format", fmt, *model]) == 0
        out = capsys.readouterr().out
        os.fsencode(out).decode("utf-8")  # no undecodable byte reaches stdout
        assert "\x1b" not in out and "\r" not in out
        lines = out.splitlines()
        if fmt == "text":
            assert len(lines) == 8 and all(line.count("\t") == 1 for line in lines)
            assert f"{photos}/a\\xff.jpg\t" in out and "n\\x0al.jpg\t" in out
        elif fmt == "csv":
            rows = list(csv.reader(lines))
            assert len(rows) == 9 and not [r for r in rows if r[0].startswith(("=", "+", "-", "@"))]
        else:
            assert len(lines) == 8 and str(photos / "a\udcff.jpg") in {json.loads(x)["image"] for x in lines}


def test_long_names_get_figures_and_one_failed_figure_does_not_stop_the_batch(tiny_run, photos, tmp_path, capsys):
    """#10: a legal 240-byte stem with --annotate gave Errno 36 (the temporary's name is longer) and
    stopped the batch; now its figure is written, and a figure that cannot be written fails that photo."""
    keep = sorted(p for p in photos.iterdir() if p.name != "broken.jpg")[:2]
    for p in photos.iterdir():
        if p not in keep:
            p.unlink()
    long = keep[0].rename(photos / ("é" * 120 + ".jpg"))  # 240 bytes of stem
    annotated = tmp_path / "ann"
    (annotated / f"{keep[1].stem}.jpg").mkdir(parents=True)  # in the way of the second photo's figure
    code = main(
        [
            "caption",
            str(long),
            str(keep[1]),
            "--model",
            str(tiny_run.checkpoints["show_tell"]),
            "--encoder",
            tiny_run.encoder,
            "--greedy",
            "--annotate",
            str(annotated),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1 and len(captured.out.splitlines()) == 2
    assert (annotated / f"{long.stem}.jpg").is_file()
    assert f"no figure for {keep[1]}" in captured.err and "internal error" not in captured.err


@pytest.mark.slow
def test_under_torchrun_a_job_rank_0_refuses_ends_every_rank(tiny_run, photos, tmp_path):
    """Issue 20: rank 0 refused a damaged job file and the other rank waited for it forever."""
    import os
    import sys

    from conftest import run_torchrun

    out = tmp_path / "c.jsonl"
    out.with_name(out.name + ".job.json").write_text("garbage")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = ["caption", str(photos), "--model", str(tiny_run.checkpoints["show_tell"]), "--encoder", tiny_run.encoder]
    proc = run_torchrun(["--nproc_per_node", "2", "-m", "capgen", *args, "--out", str(out), "--greedy"], env, 120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("capgen caption: error:")]
    assert len(lines) == 2 and all("damaged" in line for line in lines), proc.stderr[-3000:]
    # torchrun itself prints a traceback for failed workers; none comes from capgen's ranks
    assert "capgen/inference" not in proc.stderr and out.with_name(out.name + ".job.json").read_text() == "garbage"


@pytest.mark.slow
def test_under_torchrun_two_ranks_caption_every_photo_once_as_one_process_does(tiny_run, photos, tmp_path):
    """Both ranks append to their own part; rank 0 merges them into OUT: the lines one process writes."""
    import json
    import os
    import sys

    from conftest import run_torchrun

    args = ["caption", str(photos), "--model", str(tiny_run.checkpoints["show_tell"]), "--encoder", tiny_run.encoder]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main([*args, "--out", str(one), "--greedy", "--threads", "1"]) == 1  # photos/ holds a broken file
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = run_torchrun(
        ["--nproc_per_node", "2", "-m", "capgen", *args, "--out", str(two), "--greedy", "--threads", "1"], env, 180
    )
    assert "broken.jpg" in (tmp_path / "two.jsonl.errors").read_text(), proc.stderr[-3000:]

    def lines(path):
        return sorted((d["image"], d["caption"]) for d in map(json.loads, path.read_text().splitlines()))

    assert lines(two) == lines(one) and len(lines(one)) == len(set(lines(one)))
    assert not list(tmp_path.glob("two.jsonl*part*"))
