"""`capgen alt`: alt text for local images in web pages, the rest of the page byte for byte."""

import shutil

import pytest

from capgen.cli import main
from capgen.inference.alt import AltError, find_images, splice
from conftest import one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PAGE = """<!doctype html>\r
<html><head><title>Trip</title>
<script>var s = '<img src="img/a.jpg">';</script></head>
<body>
<!-- <img src="img/a.jpg"> in a comment -->
<p>caf\u00e9 &amp; more</p>
<IMG SRC="img/a.jpg" width=10>
<img src='img/b.jpg' alt="">
<img alt="a kept description" src="img/a.jpg">
<img
  src=/img/b.jpg
  alt
/>
<img src="https://example.com/x.jpg">
<img src="data:image/png;base64,AAAA">
<img alt=" " src="img/%61.jpg" class="x">
</body></html>
"""


@pytest.fixture
def site(tiny_run, tmp_path):
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    (root / "sub").mkdir()
    records = tiny_run.prepared.split("train")
    shutil.copy(records[0].path, root / "img" / "a.jpg")
    shutil.copy(records[1].path, root / "img" / "b.jpg")
    (root / "index.html").write_bytes(PAGE.encode("utf-8"))
    (root / "sub" / "page.htm").write_text('<p>x</p><img src="../img/b.jpg">\n', encoding="utf-8")
    return root


def _model(tiny_run):
    return ["--model", str(tiny_run.checkpoints["show_tell"]), "--encoder", tiny_run.encoder, "--backend", "torch"]


def test_only_missing_or_empty_alts_of_local_images_change(site):
    text, imgs = find_images(site / "index.html", site)
    assert [(i.line, i.image.name) for i in imgs] == [(7, "a.jpg"), (8, "b.jpg"), (10, "b.jpg"), (16, "a.jpg")]
    new = splice(text, imgs, {site / "img" / "a.jpg": 'a dog & "cat"', site / "img" / "b.jpg": "a b"})
    expected = (
        PAGE.replace('<IMG SRC="img/a.jpg"', '<IMG alt="a dog &amp; &quot;cat&quot;" SRC="img/a.jpg"')
        .replace("""<img src='img/b.jpg' alt="">""", """<img src='img/b.jpg' alt="a b">""")
        .replace("  alt\n/>", '  alt="a b"\n/>')
        .replace('<img alt=" " src="img/%61.jpg"', '<img alt="a dog &amp; &quot;cat&quot;" src="img/%61.jpg"')
    )
    assert new == expected
    _, kept = find_images(site / "index.html", site, keep_empty=True)
    assert [i.line for i in kept] == [7]  # alt="", bare alt and alt=" " are deliberate with --keep-empty


def test_cli_out_dry_run_and_in_place(tiny_run, site, tmp_path, capsys):
    before = (site / "index.html").read_bytes()
    assert main(["alt", str(site), "--dry-run", *_model(tiny_run)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5 and "would fill 5 alt attributes in 2 pages" in err
    assert (site / "index.html").read_bytes() == before and not list(site.rglob("*.bak"))
    assert main(["alt", str(site), "--out", str(tmp_path / "out"), *_model(tiny_run)]) == 0
    written = (tmp_path / "out" / "index.html").read_bytes().decode("utf-8")
    assert written.count('alt="') == 5 and "\r\n" in written and (tmp_path / "out" / "sub" / "page.htm").is_file()
    assert (site / "index.html").read_bytes() == before
    capsys.readouterr()
    page = site / "sub" / "page.htm"
    assert main(["alt", str(page), "--in-place", "--root", str(site), *_model(tiny_run)]) == 0
    assert page.with_name("page.htm.bak").read_text() == '<p>x</p><img src="../img/b.jpg">\n'
    assert page.read_text().startswith('<p>x</p><img alt="') and page.read_text().endswith(' src="../img/b.jpg">\n')


def test_bad_pages_are_one_line_and_nothing_is_written(tiny_run, site, tmp_path, capsys):
    (site / "latin1.html").write_bytes("<p>caf\xe9</p>".encode("latin-1"))
    one_line_error(capsys, ["alt", site / "latin1.html", "--out", tmp_path / "o.html"], "UTF-8")
    (site / "latin1.html").unlink()
    (site / "notes.html").write_text("just some words\n")
    one_line_error(capsys, ["alt", site / "notes.html", "--out", tmp_path / "o.html"], "not an HTML page")
    (site / "notes.html").unlink()
    (site / "evil.html").write_text('<img src="../../etc/passwd.jpg">')
    one_line_error(capsys, ["alt", site, "--in-place", *_model(tiny_run)], "outside the site folder")
    assert not list(site.rglob("*.bak")) and not (tmp_path / "o.html").exists()
    with pytest.raises(AltError, match="outside"):
        find_images(site / "evil.html", site)
    one_line_error(capsys, ["alt", site], "--out")
    one_line_error(capsys, ["alt", site, "--out", site / "copy"], "inside")
