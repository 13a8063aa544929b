import io

import numpy as np
import pytest
from PIL import Image

from capgen.errors import ImageLoadError
from capgen.images import load_image


def _save(img: Image.Image, path, fmt="PNG", **kw):
    img.save(path, fmt, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    arr = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    base = Image.fromarray(arr).convert("RGB")
    img = base.convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 200)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_image(_save(img, tmp_path / f"x.{fmt.lower()}", fmt))
    assert out.mode == "RGB" and out.size == (16, 16)


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(_save(img, tmp_path / "t.png")).getpixel((0, 0)) == (255, 255, 255)


def test_16bit_is_stretched_not_clipped(tmp_path):
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "g.png")))
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and 0 < out[0, 1, 0] < out[1, 0, 0] < 255


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "o.jpg"
    img.save(path, "JPEG", exif=exif)
    assert load_image(path).size == (20, 40)


def test_bytes_and_pil_input():
    buf = io.BytesIO()
    Image.new("L", (5, 7)).save(buf, "PNG")
    assert load_image(buf.getvalue()).size == (5, 7)
    assert load_image(Image.new("P", (3, 3))).mode == "RGB"


def test_bad_files_raise_typed_errors_naming_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(good, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(good.getvalue()[:200])
    cases = {"missing.jpg": "no such file", "empty.jpg": "empty", "text.jpg": "not an image", "trunc.jpg": "truncated"}
    for name, words in cases.items():
        with pytest.raises(ImageLoadError, match=words) as e:
            load_image(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


def test_decompression_bomb_refused(tmp_path):
    path = _save(Image.new("RGB", (300, 300)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(path, max_pixels=10_000)


# ---- issue 20 #16: the same photo formats everywhere, never EPS (Ghostscript) ---------------------


@pytest.mark.parametrize("fmt", ["EPS", "SGI", "PCX", "TGA", "XBM", "DDS", "ICO"])
def test_only_photo_formats_are_opened(tmp_path, fmt, monkeypatch):
    from PIL import EpsImagePlugin

    def ghostscript(*a, **kw):
        raise AssertionError("the EPS plugin was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", ghostscript)
    img = Image.new("1" if fmt == "XBM" else "RGB", (8, 8))
    path = _save(img, tmp_path / "photo.jpg", fmt)  # named as a JPEG, whatever it holds
    with pytest.raises(ImageLoadError, match="not an image of a supported format .expected JPEG, PNG"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="not an image of a supported format"):
        load_image(path.read_bytes())


def test_the_server_and_the_loader_share_one_format_list():
    from capgen.images import photo_formats

    ppm = io.BytesIO()
    Image.new("RGB", (8, 8)).save(ppm, "PPM")
    from capgen.serve.uploads import image_pixels

    assert "PPM" in photo_formats() and "EPS" not in photo_formats()
    assert image_pixels(ppm.getvalue(), "x.ppm", 100) == 64


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_float_image_with_a_non_finite_pixel_is_refused(tmp_path, bad):
    """issue 20 #17: one NaN or inf pixel stretched the whole image to black, captioned with exit 0."""
    arr = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    arr[3, 4] = bad
    path = _save(Image.fromarray(arr, mode="F"), tmp_path / "f.tif", "TIFF")
    with pytest.raises(ImageLoadError, match=r"f\.tif: 1 of 64 pixels are NaN or infinite"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="NaN or infinite"):
        load_image(path.read_bytes(), name="upload.tif")
