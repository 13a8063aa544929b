"""Contact sheets for reading captions beside their photos, and the verdict file to fill in.

A metric says how many n-grams a caption shares with references; only a person can say whether
the caption is one they would accept. This draws the first N photos (by file name) of a set with
their captions, 20 to a sheet, and writes a TSV with one row per photo and empty `acceptable` /
`why not` columns to fill in while looking at the sheets (the files in benchmarks/readings/ were
read this way). With --compare, a second system's caption is drawn in blue under each photo where
it differs, and gets its own columns.

    capgen evaluate src/capgen/assets/captioner.pt --images ../shared/data/coco_dev/images \\
        --references ../shared/data/coco_dev/captions.json --out runs/eval/now-coco
    python benchmarks/reading_sheets.py runs/eval/now-coco/predictions.json \\
        --images ../shared/data/coco_dev/images --out runs/read/coco [--compare OTHER.json] [--first 100]
    python benchmarks/reading_sheets.py --tally benchmarks/readings/coco_dev_first100_0.10.0.tsv

Predictions: `capgen evaluate`'s predictions.json (a list of {"image_id", "caption"}) or `capgen
caption --format jsonl` output (one {"image", "caption"} per line); either is keyed by file name.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from capgen.errors import CapgenError, run_script

PER_SHEET, COLUMNS = 20, 5
CELL_W, CELL_H, TEXT_H = 320, 220, 64  # pixels: photo box and caption band per cell
WRAP = 44  # characters per caption line at the font size below


def read_predictions(path: str | Path) -> dict[str, str]:
    """File name -> caption, from predictions.json (a JSON list) or JSON lines."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CapgenError(f"{path}: expected predictions.json or caption JSON lines ({e})") from None
    out = {}
    for i, row in enumerate(rows, 1):
        key = row.get("image_id", row.get("image")) if isinstance(row, dict) else None
        if not isinstance(key, str) or not isinstance(row.get("caption"), str):
            raise CapgenError(f"{path}, row {i}: expected an 'image_id' or 'image' and a 'caption'")
        out[Path(key).name] = row["caption"]
    return out


def draw_sheets(files, captions, other, images: Path, out: str, start: int = 1) -> list[Path]:
    """One PNG per PER_SHEET photos: each photo with its number and caption (black) and, where it
    differs, the other system's caption (blue)."""
    font = ImageFont.load_default(size=13)
    rows = -(-PER_SHEET // COLUMNS)
    written = []
    for s in range(0, len(files), PER_SHEET):
        sheet = Image.new("RGB", (COLUMNS * CELL_W, rows * (CELL_H + TEXT_H)), "white")
        draw = ImageDraw.Draw(sheet)
        for k, name in enumerate(files[s : s + PER_SHEET]):
            x, y = (k % COLUMNS) * CELL_W, (k // COLUMNS) * (CELL_H + TEXT_H)
            with Image.open(images / name) as im:
                photo = im.convert("RGB")
            photo.thumbnail((CELL_W - 6, CELL_H))
            sheet.paste(photo, (x + (CELL_W - photo.width) // 2, y))
            lines = [(line, "black") for line in textwrap.wrap(f"{start + s + k}. {captions[name]}", WRAP)[:2]]
            if other is not None and other.get(name) != captions[name]:
                lines += [(line, "blue") for line in textwrap.wrap(f"B: {other.get(name, '(none)')}", WRAP)[:2]]
            for j, (line, colour) in enumerate(lines):
                draw.text((x + 3, y + CELL_H + 2 + 15 * j), line, fill=colour, font=font)
        path = Path(f"{out}_{s // PER_SHEET}.png")
        sheet.save(path)
        written.append(path)
    return written


def verdict_template(files, captions, other) -> str:
    """The TSV to fill in: one row per photo, `acceptable` as yes/no, `why not` in a few words."""
    head = ["n", "file", "caption", "acceptable", "why not"]
    if other is not None:
        head += ["other_caption", "other_acceptable"]
    lines = ["\t".join(head)]
    for n, name in enumerate(files, 1):
        row = [str(n), name, captions[name], "", ""]
        if other is not None:
            row += [other.get(name, "") if other.get(name) != captions[name] else "(same)", ""]
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def tally(path: str | Path) -> dict[str, int]:
    """Counts of 'yes' in a filled verdict file's acceptable columns (lines starting '#' are notes)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CapgenError(f"{path}: expected a verdict file ({e})") from None
    rows = [x.split("\t") for x in text.splitlines() if x and not x.startswith("#")]
    if not rows:
        raise CapgenError(f"{path}: expected a header line and one line per photo, got none")
    head, body = rows[0], rows[1:]
    return {
        col: sum(r[i] == "yes" for r in body if len(r) > i) for i, col in enumerate(head) if "acceptable" in col
    } | {"photos": len(body)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", nargs="?", help="predictions.json or caption jsonl")
    ap.add_argument("--images", type=Path, help="the photos' folder")
    ap.add_argument("--out", help="output prefix: PREFIX_0.png, ..., PREFIX.tsv")
    ap.add_argument("--compare", help="a second system's predictions, drawn where they differ")
    ap.add_argument("--first", type=int, default=100, help="how many photos, by file name (default 100)")
    ap.add_argument("--tally", metavar="TSV", help="count the yes verdicts of a filled file instead")
    args = ap.parse_args()
    if args.tally:
        print(json.dumps(tally(args.tally)))
        return
    if not (args.predictions and args.images and args.out):
        ap.error("predictions, --images and --out are needed (or --tally TSV)")
    captions = read_predictions(args.predictions)
    other = read_predictions(args.compare) if args.compare else None
    files = sorted(captions)[: args.first]
    missing = [name for name in files if not (args.images / name).is_file()]
    if missing:  # before any sheet is written: no partial set of sheets is left behind
        raise CapgenError(f"{args.images}: {len(missing)} of the {len(files)} photos are missing (e.g. {missing[0]})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheets = draw_sheets(files, captions, other, args.images, args.out)
    Path(f"{args.out}.tsv").write_text(verdict_template(files, captions, other), encoding="utf-8")
    print(f"{len(sheets)} sheets ({len(files)} photos): {sheets[0]} ...; fill in {args.out}.tsv")


if __name__ == "__main__":
    run_script(main)
