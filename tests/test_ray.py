"""Bulk captioning on Ray Data (capgen[ray]): `capgen caption --out DIR --engine ray` and the
RayCaptioner class for your own pipelines, on a local Ray. Outside CI a missing Ray skips these
tests; in CI (env CI set) they fail, so the engine is never untested."""

from __future__ import annotations

import json
import os
import sys

import pytest

from capgen.cli import main
from test_bulk import photos  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed; CI installs capgen[ray] (see .ci/run)", pytrace=False)
        pytest.skip("Ray is not installed (pip install 'capgen[ray]')")
    # Actors import the tests' tiny encoder module: they get this process's sys.path.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield ray
    ray.shutdown()


def _model_args(tiny_run):
    return ["--model", str(tiny_run.checkpoints["show_tell"]), "--encoder", tiny_run.encoder, "--greedy"]


def _parts(out):
    import pyarrow.parquet as pq

    rows = [r for p in sorted(out.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["image"]: r for r in rows}, len(rows)


def test_ray_captions_are_capgen_captions_and_a_rerun_resumes(ray, tiny_run, photos, tmp_path, capsys):  # noqa: F811
    ref = tmp_path / "ref.jsonl"
    assert main(["caption", str(photos), *_model_args(tiny_run), "--out", str(ref)]) == 1  # broken.jpg
    expected = {d["image"]: json.dumps(d) for d in map(json.loads, ref.read_text().splitlines())}
    out = tmp_path / "ray"
    args = ["caption", str(photos), *_model_args(tiny_run), "--out", str(out), "--engine", "ray", "--batch-size", "3"]
    assert main(args) == 1
    rows, n = _parts(out)
    assert n == len(rows) == 10 and {k: json.dumps(json.loads(r["result"])) for k, r in rows.items()} == expected
    assert all(r["caption"] == json.loads(r["result"])["caption"] for r in rows.values())
    assert [json.loads(line)["image"] for line in (out / "errors.jsonl").read_text().splitlines()] == [
        str(photos / "broken.jpg")
    ]
    # A part a killed run was writing (a temporary) is removed; every photo stays captioned once.
    (out / ".part-x-00009.parquet.abc.tmp").write_bytes(b"torn")
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "0 captioned on Ray" in err and "10 already" in err
    assert _parts(out) == (rows, 10) and not list(out.glob(".*.tmp"))


def test_a_rerun_with_other_settings_is_refused_in_one_line(ray, tiny_run, photos, tmp_path, capsys):  # noqa: F811
    from conftest import one_line_error

    out = tmp_path / "ray"
    args = ["caption", str(photos), *_model_args(tiny_run), "--out", str(out), "--engine", "ray"]
    assert main(args) == 1
    capsys.readouterr()
    one_line_error(capsys, [*args, "--max-len", "5"], "was written with another decode")
    one_line_error(capsys, [*args[:-4], "--engine", "ray"], "--engine ray writes --out DIR")


def test_ray_captioner_in_your_own_pipeline_takes_paths_or_bytes(ray, tiny_run, photos):  # noqa: F811
    from capgen.inference.ray_engine import RayCaptioner

    files = sorted(p for p in photos.iterdir() if p.name != "broken.jpg")[:4]
    load = {"path": str(tiny_run.checkpoints["show_tell"]), "encoder": tiny_run.encoder, "threads": 1}
    kwargs = {"load": load, "decode": {"beam_size": 1}}
    by_path = ray.data.from_items([{"image": str(p)} for p in files])
    by_bytes = ray.data.from_items([{"image": p.name, "bytes": p.read_bytes()} for p in files])
    got = [
        sorted(
            ds.map_batches(RayCaptioner, fn_constructor_kwargs=kwargs, concurrency=1, batch_size=2).take_all(),
            key=lambda r: r["image"],
        )
        for ds in (by_path, by_bytes)
    ]
    assert [r["caption"] for r in got[0]] == [r["caption"] for r in got[1]] and all(r["caption"] for r in got[0])
    assert [r["image"] for r in got[1]] == [p.name for p in files] and not any(r["error"] for r in got[0])


def test_without_ray_the_engine_says_what_to_install(tiny_run, photos, tmp_path, capsys, monkeypatch):  # noqa: F811
    from conftest import one_line_error

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    out = tmp_path / "ray"
    one_line_error(
        capsys,
        ["caption", str(photos), *_model_args(tiny_run), "--out", str(out), "--engine", "ray"],
        "pip install 'capgen[ray]'",
    )
    assert not out.exists()


def test_a_ray_that_cannot_start_is_one_line_and_writes_nothing(ray, tiny_run, photos, tmp_path, capsys, monkeypatch):  # noqa: F811
    from conftest import one_line_error

    def refuse(**kw):
        raise ConnectionError("could not connect to 10.0.0.9:6379\nsecond line")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    out = tmp_path / "ray"
    args = ["caption", str(photos), *_model_args(tiny_run), "--out", str(out), "--engine", "ray"]
    one_line_error(capsys, [*args, "--ray-address", "10.0.0.9:6379"], "Ray could not start at 10.0.0.9:6379")
    assert not out.exists()
