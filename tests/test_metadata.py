"""Captions into the photos' metadata (`capgen caption PHOTOS --write-metadata`), read back by ExifTool.

Needs /usr/bin/exiftool (apt package libimage-exiftool-perl; .ci/run installs it). Outside CI a
missing exiftool skips these tests; in CI (env CI set) they fail, so the writer is never untested.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from capgen.cli import main
from capgen.inference import metadata
from capgen.inference.metadata import MetadataError, plan, same_pixels, write_description
from conftest import one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def exiftool():
    path = shutil.which("exiftool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("exiftool not found; CI must install it (see .ci/run)", pytrace=False)
        pytest.skip("exiftool not found (apt-get install libimage-exiftool-perl)")
    return path


def _camera_exif():
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS 5D", 6  # Make, Model, Orientation
    exif[0x8825] = {1: "N", 2: (52.0, 30.0, 0.0), 3: "E", 4: (13.0, 24.0, 0.0)}  # GPS
    return exif


def _photo(path: Path, fmt: str | None = None) -> Path:
    im = Image.new("RGB", (40, 30), (180, 40, 20))
    im.paste((20, 200, 40), (10, 5, 30, 25))
    exif = _camera_exif()
    if path.suffix == ".webp":
        im.save(path, exif=exif.tobytes(), lossless=True)
    elif path.suffix == ".tif":
        exif = Image.Exif()
        exif[0x010F], exif[0x0112] = "Canon", 6
        im.save(path, exif=exif)
    else:
        im.save(path, fmt, exif=exif, **({"quality": 90} if path.suffix == ".jpg" else {}))
    return path


def _tags(exiftool, path: Path) -> dict:
    out = subprocess.run([exiftool, "-json", "-G1", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


@pytest.mark.parametrize("name", ["a.jpg", "a.png", "a.tif", "a.webp"])
def test_exiftool_reads_the_caption_back_and_every_other_tag_stays(exiftool, tmp_path, name):
    photo = _photo(tmp_path / name)
    original = tmp_path / f"original-{name}"
    shutil.copy(photo, original)
    before = _tags(exiftool, photo)
    write_description(photo, 'a dog runs on the grass, "ünïcode"')
    after = _tags(exiftool, photo)
    assert after["XMP-dc:Description"] == 'a dog runs on the grass, "ünïcode"'
    assert after["IFD0:ImageDescription"] == 'a dog runs on the grass, "ünïcode"'
    if name.endswith((".jpg", ".tif")):
        assert after["IPTC:Caption-Abstract"] == 'a dog runs on the grass, "ünïcode"'
    for key in ("IFD0:Make", "IFD0:Orientation", "GPS:GPSLatitude", "GPS:GPSLongitude", "IFD0:Model"):
        assert after.get(key) == before.get(key)
    assert before["IFD0:Make"] == "Canon" and before["IFD0:Orientation"] == "Rotate 90 CW"
    assert same_pixels(original, photo)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_existing_descriptions_are_kept_unless_overwrite(exiftool, tmp_path):
    photo = _photo(tmp_path / "a.jpg")
    write_description(photo, "first caption")
    assert plan([str(photo)]).kept == 1 and plan([str(photo)], overwrite=True).todo == [photo]


def test_unsupported_read_only_and_corrupt_are_reported(exiftool, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.gif")
    ro = _photo(tmp_path / "ro.jpg")
    ro.chmod(0o444)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00garbage")
    good = _photo(tmp_path / "good.jpg")
    planned = plan([str(tmp_path)])
    assert "GIF files are not supported" in planned.failed[str(tmp_path / "a.gif")]
    assert "read-only" in planned.failed[str(ro)] and set(planned.failed) == {str(tmp_path / "a.gif"), str(ro)}
    assert planned.todo == [good, tmp_path / "junk.jpg"]  # its EXIF block is only found broken when written
    junk = (tmp_path / "junk.jpg").read_bytes()
    with pytest.raises(MetadataError, match="junk.jpg"):
        write_description(tmp_path / "junk.jpg", "a caption")
    assert (tmp_path / "junk.jpg").read_bytes() == junk
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_check_leaves_the_photo_untouched(exiftool, tmp_path, monkeypatch):
    photo = _photo(tmp_path / "a.jpg")
    data = photo.read_bytes()
    monkeypatch.setattr(metadata, "same_pixels", lambda a, b: False)
    with pytest.raises(MetadataError, match="pixels"):
        write_description(photo, "a caption")
    assert photo.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def test_cli_write_metadata(exiftool, tiny_run, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for r in tiny_run.prepared.split("train")[:3]:
        shutil.copy(r.path, folder / r.path.name)
    gps = _photo(folder / "gps.jpg")
    Image.new("RGB", (8, 8)).save(folder / "a.gif")
    args = [
        "caption",
        str(folder),
        "--write-metadata",
        "--model",
        str(tiny_run.checkpoints["show_tell"]),
        "--encoder",
        tiny_run.encoder,
        "--backend",
        "torch",
    ]
    assert main(args) == 1  # the GIF
    out, err = capsys.readouterr()
    captions = dict(line.split("\t") for line in out.splitlines())
    assert len(captions) == 4 and "a.gif" in err and "4 written, 0 kept their description, 1 failed" in err
    tags = _tags(exiftool, gps)
    assert tags["XMP-dc:Description"] == tags["IPTC:Caption-Abstract"] == captions[str(gps)]
    assert tags["GPS:GPSLatitudeRef"] == "North" and tags["IFD0:Model"] == "EOS 5D"
    assert main(args) == 1
    assert "0 written, 4 kept their description" in capsys.readouterr().err


def test_cli_without_exiftool_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metadata, "EXIFTOOL", "no-such-exiftool")
    one_line_error(capsys, ["caption", _photo(tmp_path / "a.jpg"), "--write-metadata"], "ExifTool")
