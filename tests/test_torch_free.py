"""The core install (`pip install capgen`, plus `[serve]` for the server): captioning, the Captioner
API, the server and its web page with torch and every other package of the optional installs made
unimportable, in subprocesses.

These tests need only the core install, its serve extra and pytest (CI runs them in a fresh
virtualenv made from the wheel, without torch); the last ones compare against the torch path where
torch is installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import capgen
from capgen.extras import EXTRA_OF
from capgen.runtime import folder as fmt

CAPGEN_ROOT = str(Path(capgen.__file__).resolve().parents[1])  # the capgen this test imported
BUNDLED = Path(capgen.__file__).resolve().parent / "assets" / "captioner"
TRAIN_HINT = "pip install 'capgen[train]'"
SERVE = sorted(m for m, extra in EXTRA_OF.items() if extra == "serve")

# Installed first on sys.meta_path by sitecustomize: importing any of BLOCKED raises
# ModuleNotFoundError, as on a machine where only the core install (and what EXTRA_BLOCKED leaves) is.
BLOCKER = """
import os
import sys

BLOCKED = set(os.environ["CAPGEN_TEST_BLOCKED"].split(","))


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory) -> dict:
    """The environment of a subprocess in which torch and the other extras' packages cannot be imported."""
    return _blocking(tmp_path_factory, [m for m in EXTRA_OF if m not in SERVE])


@pytest.fixture(scope="module")
def core_only(tmp_path_factory) -> dict:
    """As without_extras, and the serve extra's packages blocked too: `pip install capgen` alone."""
    return _blocking(tmp_path_factory, list(EXTRA_OF))


def _blocking(tmp_path_factory, modules: list[str]) -> dict:
    block = tmp_path_factory.mktemp("block")
    (block / "sitecustomize.py").write_text(BLOCKER)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(block), CAPGEN_ROOT]),
        "OMP_NUM_THREADS": "1",
        "CAPGEN_TEST_BLOCKED": ",".join(sorted(modules)),
    }


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    """Three small synthetic photos: shapes on gradients, in JPEG and PNG."""
    root = tmp_path_factory.mktemp("photos")
    out = []
    for i, (color, ext) in enumerate((((200, 40, 40), "jpg"), ((40, 160, 60), "png"), ((30, 60, 200), "jpg"))):
        y, x = np.mgrid[0:120, 0:160]
        img = Image.fromarray(np.stack([x * 1.5, y * 2.0, (x + y) * 0.9], -1).clip(0, 255).astype(np.uint8))
        ImageDraw.Draw(img).ellipse((30 + 10 * i, 20, 110, 100), fill=color)
        out.append(str(root / f"photo{i}.{ext}"))
        img.save(out[-1], **({"format": "JPEG"} if ext == "jpg" else {}))
    return out


def _run(env: dict, *args: str, code: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code is not None else [sys.executable, "-m", "capgen", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_the_blocker_blocks(without_extras, core_only):
    done = _run(without_extras, code="import torch")
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in done.stderr
    done = _run(core_only, code="import fastapi")
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'fastapi'" in done.stderr


def test_core_install_captions_and_serve_names_its_extra(core_only, photos):
    done = _run(core_only, "caption", photos[0])
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    done = _run(core_only, "serve", "--port", str(_free_port()))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "pip install 'capgen[serve]'" in lines[0], done.stderr


def test_capgen_caption_without_torch(without_extras, photos):
    done = _run(without_extras, "caption", *photos, "--format", "jsonl", "--tags")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in lines] == photos
    assert all(r["caption"] and r["score"] < 0 and isinstance(r["tags"], list) for r in lines), lines


def test_captioner_api_without_torch(without_extras, photos):
    code = (
        "import json, sys\n"
        "from capgen import Captioner\n"
        "cap = Captioner.from_pretrained()\n"
        "one = cap.caption(sys.argv[1])\n"
        "many = cap.caption(sys.argv[1:], n_best=3, beam_size=3)\n"
        "assert [r.caption for r in many][0] == one.caption and len(many[0].alternatives) == 2\n"
        "print(json.dumps([type(one).__name__, cap.info(), [r.to_dict() for r in many]]))\n"
        "assert not any(m.split('.')[0] == 'torch' for m in sys.modules)\n"
    )
    done = _run(without_extras, *photos, code=code)
    assert done.returncode == 0, done.stderr
    kind, info, results = json.loads(done.stdout)
    assert kind == "CaptionResult" and info["decoder"] == "onnx" and not info["supports_attention"]
    assert info["weights_sha256"] == json.loads((BUNDLED / fmt.MANIFEST).read_text())["weights_sha256"]
    assert len(results) == 3 and all(r["caption"] and len(r["alternatives"]) == 2 for r in results)


def test_what_needs_torch_names_the_extra(without_extras, photos, tmp_path):
    for args in (
        ["train", "--data", str(tmp_path), "--features", str(tmp_path), "--out", str(tmp_path / "run")],
        ["export", str(tmp_path / "x.pt"), "--out", str(tmp_path / "exp")],
        ["caption", photos[0], "--attention", str(tmp_path / "att")],
        ["caption", photos[0], "--precision", "bf16"],
        ["caption", photos[0], "--model", str(tmp_path / "best.pt")],
    ):
        done = _run(without_extras, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and TRAIN_HINT in lines[0], (args, done.stderr)
    done = _run(
        without_extras,
        "tune",
        "--data",
        str(tmp_path),
        "--features",
        str(tmp_path),
        "--space",
        "s.yaml",
        "--study",
        str(tmp_path / "study"),
    )
    assert done.returncode == 2 and "needs torch" in done.stderr and "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _get(url: str, data: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": ctype} if ctype else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read()


def test_capgen_serve_and_its_page_without_torch(without_extras, photos):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "capgen", "serve", "--port", str(port), "--threads", "1"],
        env=without_extras,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = _get(f"{base}/health")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1]
                time.sleep(0.3)
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok" and health["decoder"] == "onnx"
        status, page = _get(f"{base}/")
        assert status == 200 and b"/caption" in page  # the page posts its photos there
        body, ctype = _multipart("photo.png", Path(photos[1]).read_bytes())
        status, answer = _get(f"{base}/caption?tags=3", body, ctype)
        result = json.loads(answer)["results"][0]
        assert status == 200 and result["filename"] == "photo.png" and result["caption"] and "tags" in result
    finally:
        server.terminate()
        server.wait(timeout=30)


RUNTIME_MAIN = "import sys; from capgen.runtime.__main__ import main; sys.exit(main(sys.argv[1:]))"


def test_runtime_and_capgen_caption_write_the_same_json(without_extras, photos):
    caption = _run(without_extras, "caption", *photos, "--format", "jsonl")
    runtime = _run(
        without_extras,
        str(BUNDLED),
        *photos,
        "--format",
        "jsonl",
        code=RUNTIME_MAIN,
    )
    assert caption.returncode == 0 and runtime.returncode == 0, caption.stderr + runtime.stderr
    assert runtime.stdout == caption.stdout and len(caption.stdout.splitlines()) == 3
    # a folder, as capgen caption takes it: its image files, sorted (the photos' own order)
    folder = _run(
        without_extras,
        str(BUNDLED),
        os.path.dirname(photos[0]),
        "--format",
        "jsonl",
        code=RUNTIME_MAIN,
    )
    assert folder.returncode == 0 and folder.stdout == caption.stdout, folder.stderr


def test_runtime_entry_point_names_an_input_that_finds_nothing(capsys, tmp_path):
    from capgen.runtime.__main__ import main as runtime_main

    (tmp_path / "empty").mkdir()
    for name, why in (("empty", "folder holds no image files"), ("none*.jpg", "no image files match this pattern")):
        assert runtime_main([str(BUNDLED), str(tmp_path / name)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"capgen.runtime: error: {tmp_path / name}: {why}"]


def test_runtime_entry_point_reports_an_unexpected_error_in_one_line(monkeypatch, capsys, photos):
    from capgen.runtime import Runtime
    from capgen.runtime.__main__ import main as runtime_main

    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Runtime, "caption", broken)
    assert runtime_main([str(BUNDLED), photos[0]]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "capgen.runtime: internal error: RuntimeError: boom (rerun with --debug for the traceback)"
    ]
    with pytest.raises(RuntimeError, match="boom"):
        runtime_main([str(BUNDLED), photos[0], "--debug"])


# ---- against the torch path, where torch is installed ---------------------------------------------


def test_the_bundled_export_is_the_bundled_checkpoint():
    pytest.importorskip("torch")
    from dataclasses import asdict

    from capgen.checkpoint import read_payload
    from capgen.decoding import DecodeConfig
    from capgen.inference.captioner import bundled_model_path

    manifest = json.loads((BUNDLED / fmt.MANIFEST).read_text())
    assert manifest["weights_sha256"] == [read_payload(bundled_model_path())["weights_sha256"]]
    # the torch-free path decodes with the export's settings, the torch one with DecodeConfig's defaults
    defaults = {k: v for k, v in asdict(DecodeConfig()).items() if k != "return_attention"}
    assert json.loads((BUNDLED / fmt.DECODING).read_text()) == defaults


@pytest.mark.slow
def test_torch_and_torch_free_write_identical_json_lines(without_extras, photos, capsys):
    pytest.importorskip("torch")
    from capgen.cli import main

    free = _run(without_extras, "caption", *photos, "--format", "jsonl", "--tags", "--n-best", "2")
    assert free.returncode == 0, free.stderr
    assert main(["caption", *photos, "--format", "jsonl", "--tags", "--n-best", "2", "--threads", "1"]) == 0
    assert capsys.readouterr().out == free.stdout
