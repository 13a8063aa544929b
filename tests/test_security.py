"""Security: forged files import nothing, dataset paths stay in their folder, the server sends nothing
that names another host, answers only its own Host names, and bounds slow and oversized requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from capgen.cli import main
from capgen.errors import CapgenError
from conftest import csv_dataset, forged_checkpoint, one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A module whose factory leaves a mark: if it ever runs, a forged file made capgen import code.
EVIL_MODULE = """
from pathlib import Path
import os

def run():
    Path(os.environ["CAPGEN_EVIL_MARK"]).write_text("ran")
"""


# ---- 1: a file never makes capgen import code ----------------------------------------------------


@pytest.fixture
def evil(tmp_path, monkeypatch) -> Path:
    mods = tmp_path / "evilmods"
    mods.mkdir()
    (mods / "capgen_evil.py").write_text(EVIL_MODULE)
    monkeypatch.syspath_prepend(str(mods))
    mark = tmp_path / "mark"
    monkeypatch.setenv("CAPGEN_EVIL_MARK", str(mark))
    sys.modules.pop("capgen_evil", None)
    return mark


@pytest.mark.parametrize("name", ["capgen_evil:run", "tempfile:mkdtemp", "sys:exit"])
def test_checkpoint_cannot_name_an_import_path(tiny_run, tmp_path, capsys, evil, name):
    from capgen import Captioner

    ck = forged_checkpoint(tiny_run, tmp_path, lambda p: p["encoder"].update(name=name))
    with pytest.raises(CapgenError, match="not registered"):
        Captioner.from_pretrained(ck)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    one_line_error(capsys, ["caption", img, "--model", ck], "not registered", "--encoder")
    assert not evil.exists() and "capgen_evil" not in sys.modules


def test_own_encoder_flag_may_import(tiny_run, tmp_path):
    """The user's own --encoder is trusted: that is how custom encoders are used."""
    from capgen import Captioner

    cap = Captioner.from_pretrained(tiny_run.checkpoints["show_tell"], encoder=tiny_run.encoder)
    assert cap.encoder.name == "tiny-test"


# ---- 2: dataset paths stay inside the images folder --------------------------------------------


@pytest.mark.parametrize("escape", ["../secret.png", "ABS", "link.png"])
def test_dataset_paths_outside_the_root_are_refused(tmp_path, capsys, escape):
    from PIL import Image

    secret = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(secret)
    name = str(secret) if escape == "ABS" else escape
    csv_path = csv_dataset(tmp_path, [f"{name},a secret file"])
    (csv_path.parent / "link.png").symlink_to(secret)
    out = tmp_path / "prepared"
    one_line_error(
        capsys,
        ["prepare", csv_path, "--out", out, "--min-count", "1"],
        "outside the images folder",
        "--allow-outside-root",
    )
    assert not out.exists()
    assert main(["prepare", str(csv_path), "--out", str(out), "--min-count", "1", "--allow-outside-root"]) == 0
    from capgen.data import PreparedDataset

    assert any(r.image == name for r in PreparedDataset.load(out, allow_outside_root=True).records())
    # the manifest records the choice, but only the command line can make it again
    if escape != "link.png":  # the lexical check on load cannot see where a symlink leads
        with pytest.raises(CapgenError, match="--allow-outside-root"):
            PreparedDataset.load(out)


def test_hand_edited_split_file_cannot_escape(prepared, capsys):
    from capgen.data import PreparedDataset

    path = prepared.root / "train.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace(prepared.split("train")[0].image, "../../../../etc/passwd")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CapgenError, match="outside the images folder"):
        PreparedDataset.load(prepared.root)
    manifest = json.loads((prepared.root / "manifest.json").read_text())
    (prepared.root / "manifest.json").write_text(json.dumps({**manifest, "allow_outside_root": True}))
    with pytest.raises(CapgenError, match="outside the images folder"):  # the data cannot lift the safeguard
        PreparedDataset.load(prepared.root)


# ---- 3, 4, 13: the server -----------------------------------------------------------------------


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def local_client(tiny_captioner):
    from fastapi.testclient import TestClient

    from capgen.serve import ServeSettings, create_app

    with TestClient(create_app(tiny_captioner, ServeSettings(timeout=20)), base_url="http://127.0.0.1") as c:
        yield c


def test_nothing_the_server_sends_names_another_host(local_client):
    import re

    external = re.compile(r"https?://(?!127\.0\.0\.1|localhost)", re.I)
    responses = [
        local_client.get(p)
        for p in ("/", "/health", "/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/nope", "/static/x.js")
    ]
    responses += [
        local_client.post("/caption", files={"files": ("a.png", _png_bytes(), "image/png")}),
        local_client.post("/caption", files={"files": ("a.txt", b"hello", "text/plain")}),
        local_client.post("/caption", content=b"x"),
    ]
    for r in responses:
        text = r.text + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        assert not external.search(text), (r.request.url, external.search(text))
    assert local_client.get("/docs").status_code == 404 and local_client.get("/redoc").status_code == 404
    for link in re.findall(r'href="(/[^"]*)"', local_client.get("/").text):  # the page links nothing dead
        assert local_client.get(link).status_code == 200, link


def test_foreign_host_header_is_refused(local_client):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not reach the API."""
    assert local_client.get("/health", headers={"host": "evil.example"}).status_code == 400
    assert local_client.get("/health", headers={"host": "localhost:8000"}).status_code == 200


def test_seventeen_files_is_413(local_client):
    files = [("files", (f"{i}.png", _png_bytes(), "image/png")) for i in range(17)]
    r = local_client.post("/caption", files=files)
    assert r.status_code == 413 and "at most 16" in r.json()["error"]


def test_slow_body_gets_408():
    import asyncio

    from capgen.serve.limits import BodyLimit

    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app saw a request whose body never arrived")

    async def receive():
        await asyncio.sleep(3600)  # a client that sends headers and then nothing

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodyLimit(app, limit=100, read_timeout=0.05)(scope, receive, send))
    assert sent[0]["status"] == 408 and b"not received" in sent[1]["body"]
