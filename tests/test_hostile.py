"""A hostile or unlucky user: a table of bad inputs through every command. Each gives one line naming
the problem, exit 2, no traceback, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capgen.checkpoint import read_payload, save_checkpoint
from capgen.cli import main
from capgen.errors import CapgenError
from conftest import csv_dataset, one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- 10, 11, 13: a table of bad inputs through every command ---------------------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _yaml(tmp: Path, text: str) -> Path:
    return _write(tmp / "cfg.yaml", text)


def _copy_without_key(src: Path, dst: Path, file: str, key: str) -> Path:
    """A copy of folder `src` whose JSON `file` lacks `key`."""
    import json
    import shutil

    shutil.copytree(src, dst)
    m = json.loads((dst / file).read_text())
    del m[key]
    (dst / file).write_text(json.dumps(m))
    return dst


def _manifest_without_images_dir(ctx) -> Path:
    return _copy_without_key(ctx.prepared, ctx.tmp / "prep-no-images-dir", "manifest.json", "images_dir")


def _prepared_with_vocab(ctx, text: str) -> Path:
    import shutil

    root = ctx.tmp / "prep-bad-vocab"
    shutil.copytree(ctx.prepared, root)
    (root / "vocab.json").write_text(text)
    return root


def _meta_without_images(ctx) -> Path:
    return _copy_without_key(ctx.feats, ctx.tmp / "feats-no-images", "meta.json", "images")


def _bad_checkpoint(ctx, **fields) -> Path:
    payload = read_payload(ctx.ckpt)
    payload.update(fields)
    path = ctx.tmp / "bad.pt"
    save_checkpoint(path, payload)
    return path


def _nan_checkpoint(ctx) -> Path:
    """All-NaN weights: decoded to "" and exported as "matching torch" before load refused them."""
    payload = read_payload(ctx.ckpt)
    payload["state_dict"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in payload["state_dict"].items()
    }
    path = ctx.tmp / "nan.pt"
    save_checkpoint(path, payload)
    return path


class Payload:  # an arbitrary class: unpickling it would run code named by the file
    pass


def _pickled_checkpoint(ctx) -> Path:
    path = ctx.tmp / "pickled.pt"
    torch.save({"capgen_checkpoint": 1, "x": Payload()}, path)
    return path


def _train(ctx, *extra):
    return ["train", "--data", ctx.prepared, "--features", ctx.feats, "--out", ctx.tmp / "run", *extra]


def _evaluate(ctx, ckpt, *extra):
    return ["evaluate", ckpt, "--data", ctx.prepared, "--features", ctx.feats, "--no-meteor", *extra]


def _a_file(ctx) -> Path:
    return _write(ctx.tmp / "a-file", "not a folder")


def _bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _copy_with(src: Path, dst: Path, file: str, data: bytes) -> Path:
    """A copy of folder `src` (returned) whose `file` holds `data`."""
    import shutil

    shutil.copytree(src, dst)
    _bytes(dst / file, data)
    return dst


def _first_line_tokens(ctx, tokens) -> Path:
    import json
    import shutil

    root = ctx.tmp / "prep-bad-tokens"
    shutil.copytree(ctx.prepared, root)
    lines = (root / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["tokens"] = tokens
    (root / "train.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    return root


# A few hundred bytes that expand to 10^9 strings: nine levels of ten aliases each
LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{x}: &{x} [{', '.join(['*' + y] * 10)}]\n" for y, x in zip("abcdefgh", "bcdefghi")
)
NOT_UTF8 = b"# r\xe9glages\nmodel: transformer\n"
DEEP = "train: " + "[" * 20000 + "]" * 20000 + "\n"


def _tune(ctx, space: Path, *extra):
    return [
        "tune",
        "--data",
        ctx.prepared,
        "--features",
        ctx.feats,
        "--space",
        space,
        "--study",
        ctx.tmp / "study",
        *extra,
    ]


BAD_INPUTS = {
    # prepare: schema checks for every caption file
    "coco id is a list": (
        lambda c: [
            "prepare",
            _write(c.tmp / "captions_x.json", '{"images": [{"id": [1], "file_name": "a.jpg"}], "annotations": []}'),
            "--out",
            c.tmp / "p",
        ],
        ["images[0]", "'id'"],
    ),
    "coco image_id is a dict": (
        lambda c: [
            "prepare",
            _write(
                c.tmp / "captions_x.json",
                '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": {}, "caption": "a"}]}',
            ),
            "--out",
            c.tmp / "p",
        ],
        ["annotations[0]"],
    ),
    "karpathy sentences not a list": (
        lambda c: [
            "prepare",
            _write(c.tmp / "dataset_x.json", '{"images": [{"filename": "a.jpg", "split": "train", "sentences": 3}]}'),
            "--out",
            c.tmp / "p",
        ],
        ["images[0]", "sentences"],
    ),
    "header-only csv": (
        lambda c: ["prepare", _write(c.tmp / "caps.csv", "image,caption\n"), "--out", c.tmp / "p"],
        ["no captions found"],
    ),
    "prepare --out is a file": (lambda c: ["prepare", c.prepared, "--out", _a_file(c)], ["is a file"]),
    "val fraction nan": (
        lambda c: ["prepare", c.prepared, "--out", c.tmp / "p", "--val-fraction", "nan"],
        ["--val-fraction"],
    ),
    # extract
    "manifest without images_dir": (
        lambda c: ["extract", _manifest_without_images_dir(c), "--out", c.tmp / "f"],
        ["images_dir"],
    ),
    "vocab.json words are numbers": (
        lambda c: ["extract", _prepared_with_vocab(c, '{"itos": [1, 2, 3]}'), "--out", c.tmp / "f"],
        ["vocabulary", "strings"],
    ),
    "vocab.json min_count is a list": (
        lambda c: [
            "extract",
            _prepared_with_vocab(c, '{"itos": ["<pad>", "<start>", "<end>", "<unk>"], "min_count": [1]}'),
            "--out",
            c.tmp / "f",
        ],
        ["min_count"],
    ),
    "extract --out is a file": (lambda c: ["extract", c.prepared, "--out", _a_file(c)], ["is a file"]),
    # train: YAML shapes, ranges, damaged caches
    "yaml model_config list": (
        lambda c: _train(c, "--config", _yaml(c.tmp, "model_config: [1, 2]\n")),
        ["model_config"],
    ),
    "yaml train number": (lambda c: _train(c, "--config", _yaml(c.tmp, "train: 5\n")), ["'train'"]),
    "yaml model list": (lambda c: _train(c, "--config", _yaml(c.tmp, "model: [a]\n")), ["'model'"]),
    "batch_size=0": (lambda c: _train(c, "--set", "batch_size=0"), ["batch_size", ">= 1"]),
    "batch_size=-3": (lambda c: _train(c, "--set", "batch_size=-3"), ["batch_size"]),
    "epochs=0": (lambda c: _train(c, "--set", "epochs=0"), ["epochs", ">= 1"]),
    "lr=-1": (lambda c: _train(c, "--set", "lr=-1"), ["lr", "> 0"]),
    "lr=nan": (lambda c: _train(c, "--set", "lr=nan"), ["lr", "finite"]),
    "lr=inf": (lambda c: _train(c, "--set", "lr=inf"), ["lr", "finite"]),
    "label_smoothing=2": (lambda c: _train(c, "--set", "label_smoothing=2"), ["label_smoothing"]),
    "patience=-1": (lambda c: _train(c, "--set", "patience=-1"), ["patience"]),
    "val_images=-1": (lambda c: _train(c, "--set", "val_images=-1"), ["val_images"]),
    "warmup_steps=-1": (lambda c: _train(c, "--set", "warmup_steps=-1"), ["warmup_steps"]),
    "threads=-1": (lambda c: _train(c, "--set", "threads=-1"), ["threads"]),
    "save_every_steps=-1": (lambda c: _train(c, "--set", "save_every_steps=-1"), ["save_every_steps"]),
    "cache meta without images": (
        lambda c: ["train", "--data", c.prepared, "--features", _meta_without_images(c), "--out", c.tmp / "run"],
        ["malformed feature cache metadata"],
    ),
    "train --out is a file": (
        lambda c: ["train", "--data", c.prepared, "--features", c.feats, "--out", _a_file(c)],
        ["is a file"],
    ),
    # evaluate: checkpoints of the wrong shape
    "evaluate --out is a file": (lambda c: _evaluate(c, c.ckpt, "--out", _a_file(c)), ["is a file"]),
    "checkpoint vocab is a list": (
        lambda c: _evaluate(c, _bad_checkpoint(c, vocab=[1]), "--out", c.tmp / "e"),
        ["'vocab'"],
    ),
    "checkpoint encoder is a string": (
        lambda c: _evaluate(c, _bad_checkpoint(c, encoder="x"), "--out", c.tmp / "e"),
        ["'encoder'"],
    ),
    "checkpoint model_config is a list": (
        lambda c: _evaluate(c, _bad_checkpoint(c, model_config=[1]), "--out", c.tmp / "e"),
        ["'model_config'"],
    ),
    "checkpoint state_dict holds ints": (
        lambda c: _evaluate(c, _bad_checkpoint(c, state_dict={"w": 1}), "--out", c.tmp / "e"),
        ["'state_dict'"],
    ),
    "checkpoint vocab_size is text": (
        lambda c: _evaluate(c, _bad_checkpoint(c, vocab_size="9"), "--out", c.tmp / "e"),
        ["'vocab_size'"],
    ),
    "checkpoint with pickled objects": (
        lambda c: _evaluate(c, _pickled_checkpoint(c), "--out", c.tmp / "e"),
        ["refused", "weights_only"],
    ),
    "checkpoint weights NaN (evaluate)": (
        lambda c: _evaluate(c, _nan_checkpoint(c), "--out", c.tmp / "e"),
        ["nan.pt", "NaN or infinite"],
    ),
    "checkpoint weights NaN (export)": (
        lambda c: ["export", _nan_checkpoint(c), "--out", c.tmp / "x"],
        ["nan.pt", "NaN or infinite"],
    ),
    "checkpoint weights NaN (train --init)": (lambda c: _train(c, "--init", _nan_checkpoint(c)), ["NaN or infinite"]),
    # caption
    "checkpoint weights NaN (caption)": (
        lambda c: ["caption", c.image, "--model", _nan_checkpoint(c)],
        ["nan.pt", "NaN or infinite"],
    ),
    "--annotate is a file": (
        lambda c: ["caption", c.image, "--model", c.ckpt, "--annotate", _a_file(c)],
        ["--annotate", "is a file"],
    ),
    "--attention is a file": (
        lambda c: ["caption", c.image, "--model", c.ckpt, "--attention", _a_file(c)],
        ["--attention", "is a file"],
    ),
    "--temperature nan": (lambda c: ["caption", c.image, "--temperature", "nan"], ["--temperature"]),
    "checkpoint encoder without name": (
        lambda c: ["caption", c.image, "--model", _bad_checkpoint(c, encoder={"dim": 8})],
        ["'encoder'"],
    ),
    # serve: every number checked before anything starts
    "serve --max-upload-mb inf": (lambda c: ["serve", "--max-upload-mb", "inf"], ["--max-upload-mb"]),
    "serve --port 70000": (lambda c: ["serve", "--port", "70000"], ["--port", "65535"]),
    "serve --port 0": (lambda c: ["serve", "--port", "0"], ["--port"]),
    "serve --timeout nan": (lambda c: ["serve", "--timeout", "nan"], ["--timeout"]),
    # synth
    "synth into a file": (lambda c: ["synth", _a_file(c)], ["is a file"]),
    # files read as data: aliases, other encodings, deep nesting, huge numbers, wrong types
    "config billion laughs": (lambda c: _train(c, "--config", _yaml(c.tmp, LAUGHS)), ["cfg.yaml", "aliases"]),
    "space billion laughs": (lambda c: _tune(c, _write(c.tmp / "space.yaml", LAUGHS)), ["space.yaml", "aliases"]),
    "config not UTF-8": (
        lambda c: _train(c, "--config", _bytes(c.tmp / "cfg.yaml", NOT_UTF8)),
        ["cfg.yaml", "not UTF-8", "0xe9"],
    ),
    "config UTF-16": (
        lambda c: _train(c, "--config", _bytes(c.tmp / "cfg.yaml", "model: show_tell\n".encode("utf-16"))),
        ["cfg.yaml", "not UTF-8"],
    ),
    "space not UTF-8": (lambda c: _tune(c, _bytes(c.tmp / "space.yaml", NOT_UTF8)), ["space.yaml", "not UTF-8"]),
    "config nested 20000 deep": (
        lambda c: _train(c, "--config", _yaml(c.tmp, DEEP)),
        ["cfg.yaml", "nested too deeply"],
    ),
    "space nested 20000 deep": (
        lambda c: _tune(c, _write(c.tmp / "space.yaml", DEEP)),
        ["space.yaml", "nested too deeply"],
    ),
    "config integer of 5000 digits": (
        lambda c: _train(c, "--config", _yaml(c.tmp, "train:\n  epochs: " + "9" * 5000)),
        ["cfg.yaml", "4300"],
    ),
    "prepared manifest not UTF-8": (
        lambda c: [
            "extract",
            _copy_with(c.prepared, c.tmp / "p8", "manifest.json", b'{"x": "\xff"}'),
            "--out",
            c.tmp / "f",
        ],
        ["manifest.json", "not UTF-8"],
    ),
    "train.jsonl not UTF-8": (
        lambda c: [
            "extract",
            _copy_with(c.prepared, c.tmp / "p8", "train.jsonl", b'{"image": "\xff"}\n'),
            "--out",
            c.tmp / "f",
        ],
        ["train.jsonl", "not UTF-8"],
    ),
    "vocab.json not UTF-8": (
        lambda c: ["extract", _copy_with(c.prepared, c.tmp / "p8", "vocab.json", b"\xfe\xff"), "--out", c.tmp / "f"],
        ["vocab.json", "not UTF-8"],
    ),
    "train.jsonl tokens hold {}": (
        lambda c: ["extract", _first_line_tokens(c, [["a", {}]]), "--out", c.tmp / "f"],
        ["train.jsonl line 1", "'tokens'"],
    ),
    "cache meta.json not UTF-8": (
        lambda c: [
            "train",
            "--data",
            c.prepared,
            "--features",
            _copy_with(c.feats, c.tmp / "f8", "meta.json", b'{"\xff": 1}'),
            "--out",
            c.tmp / "run",
        ],
        ["meta.json", "not UTF-8"],
    ),
    "cache meta.json 50k [": (
        lambda c: [
            "train",
            "--data",
            c.prepared,
            "--features",
            _copy_with(c.feats, c.tmp / "f8", "meta.json", b"[" * 50_000),
            "--out",
            c.tmp / "run",
        ],
        ["meta.json", "nested too deeply"],
    ),
    "cache grid.npy header replaced": (
        lambda c: [
            "train",
            "--data",
            c.prepared,
            "--features",
            _copy_with(c.feats, c.tmp / "f8", "grid.npy", _garbled_npy(c)),
            "--out",
            c.tmp / "run",
        ],
        ["grid.npy", "unreadable"],
    ),
    "cache meta.json images reordered": (
        lambda c: ["train", "--data", c.prepared, "--features", _edited_meta(c, "reordered"), "--out", c.tmp / "run"],
        ["meta.json", "reordered"],
    ),
    "cache meta.json images reordered, checksum deleted": (
        lambda c: ["train", "--data", c.prepared, "--features", _edited_meta(c, "unbound"), "--out", c.tmp / "run"],
        ["meta.json", "missing", "--overwrite"],
    ),
    "cache of format version 1": (
        lambda c: ["train", "--data", c.prepared, "--features", _edited_meta(c, "v1"), "--out", c.tmp / "run"],
        ["meta.json", "version 1", "--overwrite"],
    ),
}


def _edited_meta(ctx, how: str) -> Path:
    import json
    import shutil

    root = ctx.tmp / f"f-{how}"
    shutil.copytree(ctx.feats, root)
    meta = json.loads((root / "meta.json").read_text())
    meta["images"] = meta["images"][::-1]
    if how == "unbound":
        del meta["images_sha256"]
    if how == "v1":  # as capgen 0.1 wrote it
        meta["capgen_features"] = 1
        del meta["images_sha256"]
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def _garbled_npy(ctx) -> bytes:
    """grid.npy with its header dict's bytes replaced by unbalanced brackets (numpy's tokenizer chokes)."""
    data = bytearray((ctx.feats / "grid.npy").read_bytes())
    data[10:40] = b"(" * 30
    return bytes(data)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_table(case, tiny_run, tmp_path, capsys):
    from types import SimpleNamespace

    from PIL import Image

    ctx = SimpleNamespace(
        tmp=tmp_path,
        prepared=tiny_run.prepared.root,
        feats=tiny_run.root / "feats",
        ckpt=tiny_run.checkpoints["show_tell"],
        image=tmp_path / "photo.png",
    )
    Image.new("RGB", (40, 30), (10, 200, 10)).save(ctx.image)
    make_argv, words = BAD_INPUTS[case]
    argv = make_argv(ctx)
    before = sorted(p for p in tmp_path.rglob("*"))
    one_line_error(capsys, argv, *words)
    assert sorted(p for p in tmp_path.rglob("*")) == before, "the failed command left files behind"


def test_unreadable_checkpoint_is_not_called_corrupt(tiny_run, monkeypatch):
    import capgen.checkpoint as checkpoint

    def denied(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint, "open", denied, raising=False)
    with pytest.raises(CapgenError, match="cannot read the checkpoint \\(Permission denied\\)"):
        checkpoint.read_payload(tiny_run.checkpoints["show_tell"])


def test_epochs_zero_claims_nothing(tiny_run, tmp_path, capsys):
    """It used to exit 0 and print '-> RUN/best.pt', a file never written."""
    one_line_error(
        capsys,
        [
            "train",
            "--data",
            tiny_run.prepared.root,
            "--features",
            tiny_run.root / "feats",
            "--out",
            tmp_path / "run",
            "--set",
            "epochs=0",
        ],
        "epochs",
    )
    assert "best.pt" not in capsys.readouterr().out and not (tmp_path / "run").exists()


def test_duplicate_captions_are_reported(tmp_path, capsys):
    csv_path = csv_dataset(tmp_path, ["0.png,a red square number 0", "0.png,a red square number 0"])
    assert main(["prepare", str(csv_path), "--out", str(tmp_path / "p"), "--min-count", "1"]) == 0
    assert "note: 2 captions repeat another caption" in capsys.readouterr().out


def test_folders_take_what_single_files_take(tmp_path):
    """One rule: a folder picks up a photo format exactly when a file of it loads on its own."""
    from PIL import Image

    from capgen.images import is_image_file, load_image
    from capgen.inference.files import expand_paths

    Image.init()
    if "AVIF" not in Image.SAVE:
        pytest.skip("this Pillow cannot write AVIF")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "a.avif")
    load_image(tmp_path / "a.avif")
    assert is_image_file("x.AVIF") and expand_paths([tmp_path]) == [tmp_path / "a.avif"]


def test_serve_on_a_taken_port_is_one_line(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        one_line_error(capsys, ["serve", "--port", port], "cannot listen on 127.0.0.1:")
    one_line_error(capsys, ["serve", "--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid")


# ---- issue 20 #20: thread counts are bounded, integers are digits -----------------------------------


@pytest.mark.parametrize("threads", ["0", "-1", "5000", "100000"])
def test_thread_counts_out_of_bounds_are_one_line_errors(capsys, threads):
    from capgen.runtime.__main__ import main as runtime_main

    for run in (
        lambda: main(["caption", "x.jpg", "--threads", threads]),
        lambda: runtime_main(["folder", "x.jpg", "--threads", threads]),
    ):
        with pytest.raises(SystemExit) as e:
            run()
        err = capsys.readouterr().err
        assert e.value.code == 2 and "from 1 to 256" in err and "Traceback" not in err


def test_sessions_refuse_absurd_thread_counts():
    from capgen.ort import check_threads, session_options

    assert check_threads(4) == 4
    for bad in (0, -1, 100_000, True, 2.0):
        with pytest.raises(CapgenError, match="from 1 to 256"):
            session_options(bad)


def test_resume_refuses_a_nan_optimizer_state(tiny_run, tmp_path, capsys):
    """A bit flip in last.pt's Adam moments made every weight NaN after the first resumed step."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.root / "show_tell", run)
    payload = read_payload(run / "last.pt")
    moments = next(iter(payload["resume"]["optimizer"]["state"].values()))
    moments["exp_avg"].view(-1)[0] = float("inf")
    save_checkpoint(run / "last.pt", payload)
    one_line_error(
        capsys,
        ["train", "--data", tiny_run.prepared.root, "--features", tiny_run.root / "feats", "--out", run, "--resume"],
        "last.pt",
        "optimizer state",
        "NaN or infinite",
    )


def test_a_bit_flip_in_the_weights_is_refused_by_the_stored_hash(tiny_run, tmp_path):
    """Issue 20 #15: a flipped bit in tensor data loaded and trained silently."""
    from capgen.checkpoint import CheckpointError, load_checkpoint
    from conftest import forged_checkpoint

    def flip(payload):
        name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel())
        payload["state_dict"][name].view(torch.int32).view(-1)[0] ^= 1 << 3  # a finite value, changed

    assert "weights_sha256" in read_payload(tiny_run.checkpoints["show_tell"])
    with pytest.raises(CheckpointError, match="do not match the hash"):
        load_checkpoint(forged_checkpoint(tiny_run, tmp_path, flip))
    old = forged_checkpoint(tiny_run, tmp_path, lambda p: p.pop("weights_sha256"))  # written before hashes
    assert load_checkpoint(old).model is not None


@pytest.mark.parametrize(
    "script, args, words",
    [
        ("build_neighbour_index.py", ["{tmp}/none", "--features", "{tmp}/f", "--out", "{tmp}/n.json"], "prepared"),
        ("bundle_model.py", ["{tmp}/none.pt", "--out", "{tmp}/b"], "checkpoint"),
    ],
)
def test_a_maintainer_script_refuses_bad_input_in_one_line(tmp_path, script, args, words):
    """scripts/ run through capgen.errors.run_script: one line naming the script, exit 2, nothing written."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    argv = [a.format(tmp=tmp_path) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "CAPGEN_DEBUG"}
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / script), *argv], capture_output=True, text=True, env=env
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and words in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
