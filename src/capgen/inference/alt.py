"""Alt text for web pages: fill the missing or empty `alt` of <img> elements whose `src` is a local
file (`capgen alt PAGE.html|SITE_DIR`), changing nothing else in the page, byte for byte.

The stdlib html.parser finds each <img> start tag and its position; the tag's own text is then
scanned with the same attribute pattern the parser uses, so only the `alt` attribute is inserted
(right after `<img`) or its empty value replaced. The caption is HTML-escaped.

A page that is not UTF-8, not HTML, or has an <img> whose src leaves the site folder is an AltError
(the CLI: one line, exit 2) raised before anything is written. src values with a scheme or host
(http:, data:, //cdn...) are not local and are left alone.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from capgen.errors import CapgenError

PAGE_SUFFIXES = (".html", ".htm", ".xhtml")
# html.parser's (Python 3.11) tagfind_tolerant and attrfind_tolerant: the tag name, then each attribute
# as the parser reads it, so the spans found here are the attributes it reported.
_TAG_NAME = re.compile(r"([a-zA-Z][^\t\n\r\f />\x00]*)(?:\s|/(?!>))*")
_ATTRIBUTE = re.compile(
    r"((?<=['\"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|\"[^\"]*\"|(?!['\"])[^>\s]*))?(?:\s|/(?!>))*"
)


class AltError(CapgenError):
    """A page cannot be given alt text: not UTF-8, not HTML, or an image outside the site folder."""


@dataclass
class Img:
    """One <img> to fill: where its start tag is, the local file it shows, and what to splice."""

    page: Path
    line: int
    start: int  # offset of the tag's "<" in the page text
    src: str
    image: Path
    replace: tuple[int, int]  # span in the page text: the alt attribute, or empty after "<img"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.imgs: list[tuple[tuple[int, int], str, list]] = []
        self.tags = 0

    def handle_starttag(self, tag, attrs) -> None:
        self.tags += 1
        if tag == "img":
            self.imgs.append((self.getpos(), self.get_starttag_text(), attrs))

    def handle_endtag(self, tag) -> None:
        self.tags += 1


def read_page(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AltError(f"{path}: not UTF-8 text (byte {e.start}); convert the page to UTF-8 first") from None
    if "\x00" in text:
        raise AltError(f"{path}: not an HTML page (it holds NUL bytes)")
    return text


def _attributes(raw: str) -> list[tuple[str, tuple[int, int], str | None]]:
    """(lower-case name, span of the whole attribute, raw value or None) of each attribute of a start tag."""
    m = _TAG_NAME.match(raw, 1)
    k, out = m.end(), []
    while k < len(raw):
        a = _ATTRIBUTE.match(raw, k)
        if not a:
            break
        end = a.end(3) if a.group(2) else a.end(1)
        out.append((a.group(1).lower(), (a.start(1), end), a.group(3)))
        k = a.end()
    return out


def _is_empty(value: str | None) -> bool:
    if value is None:
        return True
    if value[:1] in "'\"":
        value = value[1:-1]
    return not html.unescape(value).strip()


def local_file(src: str, page: Path, root: Path) -> Path | None:
    """The file an <img src> names inside the site, None when it is not a local path (http:, data:,
    //host), AltError when it leads outside `root`."""
    parts = urlsplit(src.strip())
    if parts.scheme or parts.netloc or not parts.path:
        return None
    rel = unquote(parts.path)
    target = (root / rel.lstrip("/")) if rel.startswith("/") else (page.parent / rel)
    resolved, top = Path(os.path.realpath(target)), Path(os.path.realpath(root))
    if resolved != top and top not in resolved.parents:
        raise AltError(f"{page}: <img src={src!r}> leads outside the site folder {root}; nothing written")
    return resolved


def find_images(page: Path, root: Path, keep_empty: bool = False) -> tuple[str, list[Img]]:
    """The page's text and the <img> elements whose alt should be filled."""
    text = read_page(page)
    parser = _Tags()
    parser.feed(text)
    parser.close()
    if parser.tags == 0:
        raise AltError(f"{page}: not an HTML page (no tags found)")
    # html.parser counts lines by "\n" only; so does this table of line starts
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    out = []
    for (line, col), raw, attrs in parser.imgs:
        start = starts[line - 1] + col
        src = next((v for k, v in attrs if k == "src"), None)
        if not src or not text.startswith(raw, start):
            continue
        image = local_file(src, page, root)
        if image is None:
            continue
        found = _attributes(raw)
        if [n for n, _, _ in found] != [k for k, _ in attrs]:  # not what the parser read: leave it alone
            continue
        alt = next(((span, value) for name, span, value in found if name == "alt"), None)
        if alt is None:
            at = start + len("<img")
            out.append(Img(page, line, start, src, image, (at, at)))
        elif _is_empty(alt[1]) and not keep_empty:
            out.append(Img(page, line, start, src, image, (start + alt[0][0], start + alt[0][1])))
    return text, out


def splice(text: str, imgs: list[Img], alts: dict[Path, str]) -> str:
    """The page with each img's alt attribute set to its image's caption (imgs without one stay)."""
    pieces, pos = [], 0
    for img in sorted(imgs, key=lambda i: i.replace):
        caption = alts.get(img.image)
        if not caption:
            continue
        a, b = img.replace
        attribute = f'alt="{html.escape(caption, quote=True)}"'
        pieces += [text[pos:a], f" {attribute}" if a == b else attribute]
        pos = b
    return "".join(pieces) + text[pos:]


def pages_of(path: Path) -> list[Path]:
    """A page itself, or every page under a site folder (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PAGE_SUFFIXES)
    if not path.is_file():
        raise AltError(f"{path}: no such file or folder")
    return [path]
