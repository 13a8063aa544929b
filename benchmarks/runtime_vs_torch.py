"""The exported runtime (capgen.runtime, no torch) against `capgen caption` (the Captioner): same
captions? how fast?

    python benchmarks/runtime_vs_torch.py EXPORT_DIR [--model CKPT] [--data runs/flickr8k] [--threads 1]
        [--no-guide] [--torch-decoder] [--json out.json] [--captions out.jsonl]

1. Agreement: both caption every test image of the prepared dataset (beam 3 and tag guidance, the
   CLI defaults, batches of 16) from the same features: each batch is loaded, preprocessed and
   encoded once by the runtime (the export's encoder.onnx is the Captioner's own ONNX file, and the
   transform is the same code), then tagged, guided and decoded by the Captioner (capgen.decoding
   over its ONNX Runtime decoder steps; with --torch-decoder over the torch model) and by the
   runtime (numpy search + ONNX Runtime). The first batch also goes through the Captioner's own
   encoder, to check that the features are identical. % identical text, and each difference.
2. Latency: one 500x375 JPEG (scikit-image's coffee photo), beam 3, model loading excluded: p50 /
   p95 over 30 calls of each path (read, decode, encode, caption).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def _latency(caption, photo: Path, n: int = 30) -> dict:
    for _ in range(3):
        caption(photo)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        caption(photo)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)), "calls": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path)
    p.add_argument("--model", help="checkpoint for the torch path (default: the bundled model)")
    p.add_argument("--data", default="runs/flickr8k", help="prepared dataset; its test split is captioned")
    p.add_argument("--split", default="test")
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, default=0, help="caption only the first N images (0 = all)")
    p.add_argument("--no-guide", action="store_true", help="both without tag guidance")
    p.add_argument("--torch-decoder", action="store_true", help="the Captioner decodes with the torch model")
    p.add_argument("--json", type=Path)
    p.add_argument("--captions", type=Path, help="write both captions per image here (jsonl)")
    args = p.parse_args()

    import torch
    from PIL import Image
    from skimage import data as skdata

    from capgen import Captioner
    from capgen.data import PreparedDataset
    from capgen.runtime import Runtime

    torch.set_num_threads(args.threads)
    from capgen.tags import Guide, GuideConfig

    captioner = Captioner.from_pretrained(args.model, threads=args.threads)
    if args.torch_decoder:
        captioner.fast_decoder = None
    rt = Runtime(args.export, threads=args.threads)
    guide = None if args.no_guide else GuideConfig()
    paths = [str(r.path) for r in PreparedDataset.load(args.data).split(args.split)]
    paths = paths[: args.limit] if args.limit else paths

    config = captioner.decode_config(beam_size=args.beam_size)
    ref, got, torch_s, runtime_s, feature_diff = [], [], 0.0, 0.0, None
    for i in range(0, len(paths), 16):
        chunk = paths[i : i + 16]
        pooled, grid = rt.encode(chunk)  # (B, D), (B, N, D)
        if feature_diff is None:
            _, grid_torch_path = captioner.encode(chunk)
            feature_diff = float(np.abs(grid_torch_path - grid).max())
        t0 = time.perf_counter()
        g = captioner.guidance(pooled, config, guide)
        ref += [(h[0], gi) for h, gi in zip(captioner.forward(pooled, grid, config, g), g)]
        torch_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        rt_config = rt.decode_config(beam_size=args.beam_size)
        g = rt.guidance(pooled, rt_config, guide)
        got += [(h[0], gi) for h, gi in zip(rt.decode(pooled, grid, rt_config, g), g)]
        runtime_s += time.perf_counter() - t0

    def text(h, g) -> str:
        return " ".join(Guide.render(captioner.vocab.decode(h.tokens), g)[0])

    ref = [SimpleNamespace(caption=text(h, g), score=h.score) for h, g in ref]
    got = [SimpleNamespace(caption=text(h, g), score=h.score) for h, g in got]
    diffs = [
        {"image": path, "torch": a.caption, "torch_score": a.score, "runtime": b.caption, "runtime_score": b.score}
        for path, a, b in zip(paths, ref, got)
        if a.caption != b.caption
    ]
    if args.captions:
        with open(args.captions, "w") as f:
            for path, a, b in zip(paths, ref, got):
                f.write(
                    json.dumps(
                        {
                            "image": path,
                            "torch": a.caption,
                            "runtime": b.caption,
                            "torch_score": a.score,
                            "runtime_score": b.score,
                        }
                    )
                    + "\n"
                )

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo_500x375.jpg"
        Image.fromarray(skdata.coffee()).resize((500, 375), Image.BICUBIC).save(photo, quality=90)
        lat_torch = _latency(lambda x: captioner.caption(x, beam_size=args.beam_size, guide=guide), photo)
        lat_rt = _latency(lambda x: rt.caption(x, beam_size=args.beam_size, guide=guide), photo)

    out = {
        "images": len(paths),
        "identical": len(paths) - len(diffs),
        "identical_pct": 100.0 * (len(paths) - len(diffs)) / max(len(paths), 1),
        "differences": diffs,
        "decode_only_batch16_images_per_s": {"captioner": len(paths) / torch_s, "runtime": len(paths) / runtime_s},
        "first_batch_grid_max_abs_diff_runtime_vs_captioner_encoder": feature_diff,
        "latency_beam3_one_photo": {"captioner": lat_torch, "runtime": lat_rt},
        "guide": guide is not None,
        "captioner_decoder": "torch" if args.torch_decoder else "onnx",
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({k: v for k, v in out.items() if k != "differences"}, indent=1))
    for d in diffs:
        print(
            f"DIFF {Path(d['image']).name}: torch '{d['torch']}' ({d['torch_score']:.4f}) | runtime "
            f"'{d['runtime']}' ({d['runtime_score']:.4f})"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
