"""kill -9 at random points of sidecar, metadata and Ray jobs, then a rerun: is anything lost or torn?

    python benchmarks/kill_resume.py --images ../shared/data/flickr8k/Images --photos 60 --kills 10 \\
        [--modes sidecar metadata ray] [--json out.json]

For each mode, a fresh copy of the first --photos photos (the metadata copies get camera and GPS EXIF
written by ExifTool first), then --kills runs of `capgen caption` each stopped with SIGKILL after a
random 1..--max-wait seconds (seeded), then one rerun to the end. After every kill and at the end:
every photo still decodes to the pixels it had (metadata: its camera and GPS tags kept), no file is
torn (a sidecar is one whole caption line; every Parquet part reads), and the final rerun leaves every
photo captioned exactly once (one sidecar; one description; one Parquet row).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run(cmd: list[str], kill_after: float | None) -> int | None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if kill_after is None:
        return proc.wait()
    try:
        return proc.wait(timeout=kill_after)  # finished before the kill
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if "--engine" in cmd:  # Ray's own processes outlive a killed driver; stop them like a user would
            subprocess.run(["ray", "stop", "--force"], capture_output=True)
        return None


def check(mode: str, folder: Path, out: Path, originals: dict[str, np.ndarray]) -> dict:
    photos = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    damaged = sum(not np.array_equal(pixels(p), originals[p.name]) for p in photos)
    torn, captioned, dupes = 0, 0, 0
    if mode == "sidecar":
        for p in photos:
            side = p.with_suffix(".txt")
            if side.exists():
                text = side.read_text()
                torn += not (text.endswith("\n") and len(text.strip().splitlines()) == 1)
                captioned += 1
        torn += len(list(folder.glob(".*.tmp")))
    elif mode == "metadata":
        tags = json.loads(
            subprocess.run(
                ["exiftool", "-json", "-Make", "-GPSLatitude", "-XMP-dc:Description", *map(str, photos)],
                capture_output=True,
                text=True,
            ).stdout
        )
        torn += sum(not (t.get("Make") == "Canon" and t.get("GPSLatitude")) for t in tags)  # lost camera/GPS
        captioned = sum(bool(t.get("Description")) for t in tags)
    else:
        import pyarrow.parquet as pq

        rows = []
        for part in out.glob("part-*.parquet"):
            try:
                rows += pq.read_table(part, columns=["image"]).column("image").to_pylist()
            except Exception:  # noqa: BLE001
                torn += 1
        captioned, dupes = len(set(rows)), len(rows) - len(set(rows))
    return {"damaged": damaged, "torn": torn, "captioned": captioned, "duplicates": dupes, "photos": len(photos)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--photos", type=int, default=60)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--max-wait", type=float, default=12.0)
    ap.add_argument("--modes", nargs="+", default=["sidecar", "metadata", "ray"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    report = {}
    for mode in args.modes:
        work = Path(tempfile.mkdtemp(prefix=f"kill-{mode}-"))
        folder, out = work / "photos", work / "ray"
        folder.mkdir()
        for p in sorted(args.images.glob("*.jpg"))[: args.photos]:
            shutil.copy(p, folder / p.name)
            (folder / p.name).chmod(0o644)  # the shared data is read-only, and so would be the copies
        if mode == "metadata":
            subprocess.run(
                [
                    "exiftool",
                    "-q",
                    "-overwrite_original",
                    "-Make=Canon",
                    "-Model=EOS R6",
                    "-GPSLatitude=48.85",
                    "-GPSLatitudeRef=N",
                    "-GPSLongitude=2.35",
                    "-GPSLongitudeRef=E",
                    str(folder),
                ],
                check=True,
            )
        originals = {p.name: pixels(p) for p in folder.glob("*.jpg")}
        flag = {
            "sidecar": ["--sidecar"],
            "metadata": ["--write-metadata"],
            "ray": ["--out", str(out), "--engine", "ray"],
        }
        cmd = [sys.executable, "-m", "capgen", "caption", str(folder), *flag[mode], "--batch-size", "8"]
        kills = []
        for _ in range(args.kills):
            wait = rng.uniform(1.0, args.max_wait)
            code = run(cmd, wait)
            kills.append(
                {"after_s": round(wait, 1), "finished": code is not None, **check(mode, folder, out, originals)}
            )
        start = time.perf_counter()
        code = run(cmd, None)
        final = {
            "exit": code,
            "seconds": round(time.perf_counter() - start, 1),
            **check(mode, folder, out, originals),
        }
        report[mode] = {"kills": kills, "final": final}
        bad = sum(k["damaged"] + k["torn"] + k["duplicates"] for k in kills)
        print(
            f"{mode}: {args.kills} kills ({sum(not k['finished'] for k in kills)} mid-job), damaged/torn/duplicate "
            f"after a kill: {bad}; final rerun: exit {code}, {final['captioned']}/{final['photos']} captioned, "
            f"{final['damaged']} damaged, {final['torn']} torn, {final['duplicates']} duplicates",
            flush=True,
        )
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
