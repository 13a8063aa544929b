"""Every speed figure of the captioning pipeline in one run, per precision, beside this machine's peaks.

    python benchmarks/speed.py --data /work/runs/flickr8k --images /work/shared/data/flickr8k/Images \\
        [--precisions fp32 bf16 int8] [--clients 1 8 32] [--json out.json]

In this order, all in one process (the server in a subprocess):
0. Peaks: torch fp32 and bf16 matmul (2048^3) GFLOP/s, measured now.
Then for each precision (the bundled model, beam 3, trigram blocking: the CLI defaults):
1. Latency: `Captioner.caption` on one 500x375 JPEG (scikit-image's coffee photo), p50 / p95 over
   `--calls` calls, model loading excluded; with tag guidance (the default: its "coffee" tag is
   confident, so the search keeps three beam groups) and without.
2. Batch: images/s captioning the 1,000 test images (files read and decoded in the loop, batch 32),
   beside the encoder-only rate on the same images and batches; test BLEU-4 and CIDEr of those
   captions (PTB tokenizer, no METEOR) and the features' relative L2 error against fp32; how many
   captions the torch decoder (the reference) gives otherwise than the ONNX Runtime steps.
3. Extraction: `extract_features` end to end over the test split (2 decoding threads, float16 cache),
   images/s and the share of the fp32 and bf16 peaks (FLOPs counted with torch's FlopCounterMode).
4. Server: `capgen serve --precision P` on 127.0.0.1; at each client count, `--requests` POST /caption,
   one Flickr8k test JPEG each (the test images in turn, as the batch figure captions them):
   requests/s, p50 / p95, errors (503s counted apart). Loopback only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_throughput import peak_matmul_gflops  # noqa: E402  one definition of the peak


def _percentiles(xs: list[float]) -> tuple[float, float]:
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 95))


def _photo_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.coffee()).resize((500, 375), Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def latency(cap, photo: bytes, n: int, **options) -> dict:
    for _ in range(3):
        res = cap.caption(photo, beam_size=3, **options)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        cap.caption(photo, beam_size=3, **options)
        times.append((time.perf_counter() - t) * 1000)
    p50, p95 = _percentiles(times)
    return {"p50_ms": p50, "p95_ms": p95, "calls": n, "caption": res.caption}


def batch(cap, records, images: Path, bs: int = 32, keep: int = 200) -> tuple[dict, np.ndarray, dict]:
    """Caption the records' images end to end, then encode them alone. Returns the figures, the grid
    features of the first `keep` images (for the error against fp32) and the captions by image."""
    from capgen.images import load_image

    paths = [images / r.image for r in records]
    captions, t = {}, time.perf_counter()
    for i in range(0, len(paths), bs):
        for r, res in zip(records[i : i + bs], cap.caption(paths[i : i + bs], beam_size=3, batch_size=bs)):
            captions[r.image] = res.caption
    full = len(paths) / (time.perf_counter() - t)
    agreement = reference_agreement(cap, paths, captions, records, bs) if cap.fast_decoder is not None else None
    grids, t = [], time.perf_counter()
    for i in range(0, len(paths), bs):
        x = np.stack([cap.encoder.preprocess(load_image(p)).numpy() for p in paths[i : i + bs]])
        _, grid = cap.runner(x)
        if i < keep:
            grids.append(grid)
    enc = len(paths) / (time.perf_counter() - t)
    return (
        {
            "images": len(paths),
            "caption_images_per_s": full,
            "encoder_only_images_per_s": enc,
            "ratio": full / enc,
            **(agreement or {}),
        },
        np.concatenate(grids)[:keep],
        captions,
    )


def reference_agreement(cap, paths, captions: dict, records, bs: int) -> dict:
    """The same images decoded by the torch model (the reference) instead of the ONNX Runtime steps:
    how many captions differ. Not timed."""
    fast, cap.fast_decoder = cap.fast_decoder, None
    try:
        differ = []
        for i in range(0, len(paths), bs):
            for r, res in zip(records[i : i + bs], cap.caption(paths[i : i + bs], beam_size=3, batch_size=bs)):
                if res.caption != captions[r.image]:
                    differ.append({"image": r.image, "onnx": captions[r.image], "torch": res.caption})
    finally:
        cap.fast_decoder = fast
    return {"torch_reference_identical": len(paths) - len(differ), "torch_reference_differ": differ}


def quality(captions: dict, records) -> dict:
    from capgen.evaluation.metrics import score_captions

    s = score_captions(captions, {r.image: list(r.raw) for r in records}, official=True, meteor=False)
    return {"BLEU-4": 100 * s["BLEU-4"], "CIDEr": 100 * s["CIDEr"], "tokenizer": s.get("tokenizer")}


def extraction(ds, precision: str, tmp: Path, gflop: float, peaks: dict, threads: int | None) -> dict:
    from capgen.features import extract_features

    res = extract_features(
        ds,
        tmp / f"feats-{precision}",
        encoder="efficientnet-lite2",
        split="test",
        backend="onnx",
        workers=2,
        precision=precision,
        progress=False,
        threads=threads,
    )
    ips = res.images_per_s
    return {
        "images": res.images,
        "images_per_s": ips,
        "gflop_per_s": gflop * ips,
        "share_fp32_peak": gflop * ips / peaks["fp32"],
        "share_bf16_peak": gflop * ips / peaks["bf16"],
    }


def serve(
    precision: str, bodies: list[bytes], clients: list[int], requests: int, max_batch: int, threads: int | None
) -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "capgen",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--precision",
            precision,
            "--max-batch",
            str(max_batch),
            *(["--threads", str(threads)] if threads else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url, out = f"http://127.0.0.1:{port}", {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("server did not start")

        local = threading.local()

        def one(i):
            # One keep-alive connection per client thread, as a real client keeps: a new httpx client
            # per request costs ~80 ms of its own (its SSL context), which is not the server's time.
            if not hasattr(local, "client"):
                local.client = httpx.Client(timeout=120)
            t = time.perf_counter()
            try:
                r = local.client.post(
                    f"{url}/caption", files={"files": ("p.jpg", bodies[i % len(bodies)], "image/jpeg")}
                )
                status = r.status_code if r.status_code != 200 or r.json()["results"][0]["caption"] else -1
            except httpx.HTTPError:
                status = -2
            return time.perf_counter() - t, status

        for _ in range(3):
            one(0)
        for c in clients:
            start = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                res = list(pool.map(one, range(max(requests, c))))
            wall = time.perf_counter() - start
            ok = [r[0] * 1000 for r in res if r[1] == 200]
            p50, p95 = _percentiles(ok) if ok else (float("nan"), float("nan"))
            out[c] = {
                "requests": len(res),
                "requests_per_s": len(ok) / wall,
                "p50_ms": p50,
                "p95_ms": p95,
                "busy_503": sum(r[1] == 503 for r in res),
                "errors": sum(r[1] not in (200, 503) for r in res),
            }
            print(
                f"  serve {precision} {c:>2} clients: {out[c]['requests_per_s']:.1f} req/s, p50 {p50:.0f} ms, "
                f"p95 {p95:.0f} ms, 503 {out[c]['busy_503']}, errors {out[c]['errors']}",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/flickr8k", help="prepared Flickr8k (capgen prepare)")
    ap.add_argument("--images", default="../shared/data/flickr8k/Images")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    ap.add_argument("--serve-precisions", nargs="*", default=None, help="server runs (default: --precisions)")
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=96, help="requests per client count")
    ap.add_argument("--max-batch", type=int, default=8, help="server micro-batch (capgen serve --max-batch)")
    ap.add_argument("--calls", type=int, default=30, help="latency calls")
    ap.add_argument("--limit", type=int, default=None, help="only the first N test images (a quick check)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["latency", "batch", "extract", "serve"])
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="compute threads everywhere, peaks included (default: all cores; 1 on a busy machine)",
    )
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from capgen import Captioner
    from capgen.data import PreparedDataset
    from capgen.encoders import count_flops, create_encoder

    ds, images = PreparedDataset.load(args.data), Path(args.images)
    records = ds.split("test")[: args.limit]
    peaks = {"fp32": peak_matmul_gflops(torch.float32), "bf16": peak_matmul_gflops(torch.bfloat16)}
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(sys.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at start",
        "torch": torch.__version__,
        "peaks_gflops": peaks,
        "runs": {},
    }
    out["git_commit"] = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    print(
        f"{out['date']}: peak matmul fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s; {out['machine']}",
        flush=True,
    )
    gflop = count_flops(create_encoder("efficientnet-lite2")) / 1e9
    photo = _photo_jpeg()
    # int8 calibrates on 64 training images spread over the split, as `capgen extract --precision int8` does
    train = ds.split("train")
    calibration = [images / r.image for r in train[:: max(1, len(train) // 64)][:64]]
    ref_grid = None
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.precisions:
            row: dict = {}
            cap = Captioner.from_pretrained(
                precision=p, calibration=calibration if p == "int8" else None, threads=args.threads
            )
            row["precision"] = cap.info()["precision"]
            if "latency" not in args.skip:
                row["latency"] = latency(cap, photo, args.calls)
                row["latency_no_guide"] = latency(cap, photo, args.calls, guide=None)
                for key, label in (("latency", "guided"), ("latency_no_guide", "no guidance")):
                    print(
                        f"{p}: latency ({label}) p50 {row[key]['p50_ms']:.1f} ms, p95 {row[key]['p95_ms']:.1f} ms: "
                        f"{row[key]['caption']!r}",
                        flush=True,
                    )
            if "batch" not in args.skip:
                row["batch"], grid, captions = batch(cap, records, images)
                ref_grid = grid if p == "fp32" else ref_grid
                if ref_grid is not None:
                    row["batch"]["feature_rel_error_vs_fp32"] = float(
                        np.linalg.norm(grid - ref_grid) / np.linalg.norm(ref_grid)
                    )
                row["quality"] = quality(captions, records)
                print(
                    f"{p}: batch {row['batch']['caption_images_per_s']:.1f} img/s captioned vs encoder only "
                    f"{row['batch']['encoder_only_images_per_s']:.1f} ({row['batch']['ratio']:.2f}x); "
                    f"BLEU-4 {row['quality']['BLEU-4']:.2f}, CIDEr {row['quality']['CIDEr']:.2f}; feature error "
                    f"{row['batch'].get('feature_rel_error_vs_fp32', float('nan')):.4f}; same caption as the "
                    f"torch decoder: {row['batch'].get('torch_reference_identical', '-')}",
                    flush=True,
                )
            if "extract" not in args.skip and p != "bf16":  # bf16 leaves the ONNX encoder in fp32: as fp32
                row["extract"] = extraction(ds, p, Path(tmp), gflop, peaks, args.threads)
                e = row["extract"]
                print(
                    f"{p}: extraction {e['images_per_s']:.1f} img/s = {e['gflop_per_s']:.0f} GFLOP/s, "
                    f"{e['share_fp32_peak']:.0%} of fp32 peak, {e['share_bf16_peak']:.0%} of bf16 peak",
                    flush=True,
                )
            del cap
            if "serve" not in args.skip and p in (args.serve_precisions or args.precisions):
                bodies = [(images / r.image).read_bytes() for r in records[: max(args.requests, max(args.clients))]]
                row["serve"] = serve(p, bodies, args.clients, args.requests, args.max_batch, args.threads)
            out["runs"][p] = row
            if args.json:  # after every precision: a long run that is stopped keeps what it measured
                Path(args.json).write_text(json.dumps(out, indent=1))
    out["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
