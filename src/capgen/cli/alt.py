"""capgen alt PAGE.html|SITE_DIR: fill missing or empty alt text of local images with their captions."""

from __future__ import annotations

import shutil
from pathlib import Path

from capgen.argtypes import positive_int
from capgen.cli.caption import add_model_args
from capgen.decoding.flags import add_decode_args, add_guide_args, decode_options, guide_config
from capgen.errors import CapgenError, say
from capgen.tags.guide import GuideConfig


def register(sub, parents) -> None:
    p = sub.add_parser(
        "alt",
        parents=parents,
        help="write alt text for the images of web pages",
        description="Fill the alt attribute of <img> elements that have none (or an empty one) and "
        "show a local file, with the image's caption; everything else in the page stays "
        "byte for byte. A page that is not UTF-8 or not HTML, or an image outside the "
        "site folder, stops the run before anything is written (exit 2).",
    )
    p.add_argument("path", metavar="PAGE|SITE_DIR", help="an HTML page, or a folder of pages (searched recursively)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        metavar="FILE|DIR",
        help="write the new page to FILE (a folder: the site's pages, mirrored, for a SITE_DIR)",
    )
    where.add_argument("--in-place", action="store_true", help="replace each changed page, keeping PAGE.bak")
    where.add_argument("--dry-run", action="store_true", help="list the alt text it would write; write nothing")
    p.add_argument("--keep-empty", action="store_true", help='keep alt="" (decorative images) as it is')
    p.add_argument(
        "--root",
        metavar="DIR",
        help="the site folder image paths must stay in, and that /abs/src "
        "paths start from (default: SITE_DIR, or the page's folder)",
    )
    add_model_args(p)
    add_decode_args(p)
    add_guide_args(p, default=GuideConfig())
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    p.set_defaults(func=run)


def run(args) -> int:
    from capgen.cli.caption import load_captioner
    from capgen.errors import ImageLoadError
    from capgen.inference import caption_paths
    from capgen.inference.alt import find_images, pages_of, splice

    path = Path(args.path)
    if not (args.out or args.in_place or args.dry_run):
        raise CapgenError("choose where the pages go: --out FILE|DIR, --in-place, or --dry-run")
    root = Path(args.root) if args.root else path if path.is_dir() else path.parent
    pages = pages_of(path)
    if not pages:
        raise CapgenError(f"{path}: holds no .html pages")
    targets = _targets(path, pages, args)
    found = {page: find_images(page, root, args.keep_empty) for page in pages}  # every page checked first
    images = sorted({img.image for _, imgs in found.values() for img in imgs})
    missing = [i for i in images if not i.is_file()]
    for i in missing:
        say(f"capgen alt: skipped {i}: no such image file")
    alts, failed = {}, len(missing)
    todo = [i for i in images if i.is_file()]
    if todo:
        captioner = load_captioner(args)
        config = captioner.decode_config(**decode_options(args))
        for image, res in caption_paths(captioner, todo, config, batch_size=args.batch_size, guide=guide_config(args)):
            if isinstance(res, ImageLoadError):
                failed += 1
                say(f"capgen alt: skipped {res}")
            else:
                alts[Path(image)] = res.caption
    filled = 0
    for page, (text, imgs) in found.items():
        done = [i for i in imgs if alts.get(i.image)]
        filled += len(done)
        if args.dry_run:
            for img in done:
                print(f"{page}:{img.line}: {img.src}\t{alts[img.image]}")
            continue
        _write(page, targets[page], splice(text, done, alts), text, args.in_place)
    verb = "would fill" if args.dry_run else "filled"
    say(
        f"capgen alt: {verb} {filled} alt attributes in {len(pages)} pages"
        + (f", {failed} images failed" if failed else "")
    )
    return 1 if failed else 0


def _targets(path: Path, pages: list[Path], args) -> dict[Path, Path]:
    """Where each page is written (itself with --in-place); an --out that would overwrite an input is refused."""
    if args.in_place or args.dry_run:
        return {p: p for p in pages}
    out = Path(args.out)
    if not path.is_dir():
        if out.exists() and out.resolve() == path.resolve():
            raise CapgenError(f"--out {out} is the page itself; use --in-place (it keeps a backup)")
        if out.is_dir():
            raise CapgenError(f"--out {out}: is a folder; give the new page's file name")
        return {path: out}
    if out.exists() and not out.is_dir():
        raise CapgenError(f"--out {out}: a SITE_DIR needs an output folder, and this is a file")
    if out.resolve() == path.resolve() or path.resolve() in out.resolve().parents:
        raise CapgenError(f"--out {out} is inside {path}; choose a folder outside the site (or --in-place)")
    return {p: out / p.relative_to(path) for p in pages}


def _write(page: Path, target: Path, new: str, old: str, in_place: bool) -> None:
    """Atomically; in place only when something changed, after a backup (PAGE.bak, as sed -i.bak)."""
    import os

    from capgen.io import atomic_path

    if in_place:
        if new == old:
            return
        with atomic_path(page.with_name(page.name + ".bak")) as tmp:
            shutil.copyfile(page, tmp)
        mode = page.stat().st_mode
    with atomic_path(target) as tmp:
        tmp.write_bytes(new.encode("utf-8"))
    if in_place:
        os.chmod(page, mode)  # atomic_path writes 0644; the page keeps its own permissions
