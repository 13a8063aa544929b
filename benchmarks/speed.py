"""Captioning speed of the bundled model: single-photo latency, batch throughput, and a load test.

    python benchmarks/caption_speed.py [--data ../shared/data/flickr8k] [--json out.json]

1. Latency: `Captioner.caption` on one ordinary 500x375 JPEG (made from scikit-image's coffee photo),
   beam 3, model loading excluded: p50 / p95 over 50 calls (each reads, decodes, encodes, decodes).
2. Batch: images/s captioning the 1,000 Flickr8k test images (batch 32, beam 3, files read and
   decoded in the loop), beside the encoder-only rate on the same images.
3. Load: `capgen serve` in a subprocess on 127.0.0.1, 200 POST /caption requests (one photo each),
   8 concurrent clients: throughput, p50 / p95 latency, errors. Loopback only, bounded, stops itself.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _percentiles(xs: list[float]) -> tuple[float, float]:
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 95))


def latency(cap, tmp: Path, n: int = 50) -> dict:
    from PIL import Image
    from skimage import data

    photo = tmp / "photo_500x375.jpg"
    Image.fromarray(data.coffee()).resize((500, 375), Image.BICUBIC).save(photo, quality=90)
    for _ in range(3):
        cap.caption(photo, beam_size=3)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        cap.caption(photo, beam_size=3)
        times.append((time.perf_counter() - t) * 1000)
    p50, p95 = _percentiles(times)
    return {"p50_ms": p50, "p95_ms": p95, "calls": n}


def batch(cap, data_dir: Path, bs: int = 32) -> dict:
    from capgen.images import load_image

    names = [x.strip() for x in (data_dir / "Flickr_8k.testImages.txt").read_text().split() if x.strip()]
    paths = [data_dir / "Images" / n for n in names]
    t = time.perf_counter()
    for i in range(0, len(paths), bs):
        cap.caption(paths[i : i + bs], beam_size=3, batch_size=bs)
    full = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(paths), bs):
        x = np.stack([cap.encoder.preprocess(load_image(p)).numpy() for p in paths[i : i + bs]])
        cap.runner(x)
    enc = len(paths) / (time.perf_counter() - t)
    return {"images": len(paths), "caption_images_per_s": full, "encoder_only_images_per_s": enc}


def load_test(tmp: Path, requests: int = 200, concurrency: int = 8) -> dict:
    import httpx
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((500, 375)).save(buf, "JPEG", quality=90)
    body = buf.getvalue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "capgen", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start")

        def one(_):
            t = time.perf_counter()
            try:
                r = httpx.post(f"{url}/caption", files={"files": ("p.jpg", body, "image/jpeg")}, timeout=60)
                ok = r.status_code == 200 and r.json()["results"][0]["caption"]
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - t, bool(ok)

        one(0)
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            res = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = [r[0] * 1000 for r in res]
    p50, p95 = _percentiles(lat)
    return {"requests": requests, "concurrency": concurrency, "requests_per_s": requests / wall,
            "p50_ms": p50, "p95_ms": p95, "errors": sum(not r[1] for r in res)}


def main(argv=None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from capgen import Captioner

    t = time.perf_counter()
    cap = Captioner.from_pretrained()
    out = {"date": time.strftime("%Y-%m-%d"), "model": cap.name, "load_s": time.perf_counter() - t}
    with tempfile.TemporaryDirectory() as tmp:
        out["latency"] = latency(cap, Path(tmp))
        print(f"latency (500x375 JPEG, beam 3): p50 {out['latency']['p50_ms']:.1f} ms, "
              f"p95 {out['latency']['p95_ms']:.1f} ms", flush=True)
        data_dir = Path(args.data)
        if (data_dir / "Flickr_8k.testImages.txt").is_file():
            out["batch"] = batch(cap, data_dir)
            print(f"batch: {out['batch']['caption_images_per_s']:.1f} images/s captioned (beam 3), encoder only "
                  f"{out['batch']['encoder_only_images_per_s']:.1f} images/s", flush=True)
        else:
            print(f"{data_dir}: Flickr8k not found; batch figure skipped", file=sys.stderr)
        out["load"] = load_test(Path(tmp))
        print(f"load: {out['load']['requests']} requests, {out['load']['concurrency']} concurrent: "
              f"{out['load']['requests_per_s']:.1f} req/s, p50 {out['load']['p50_ms']:.0f} ms, "
              f"p95 {out['load']['p95_ms']:.0f} ms, errors {out['load']['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
