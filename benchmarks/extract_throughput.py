"""Feature-extraction throughput over all Flickr8k images, beside this machine's matmul limit.

    python benchmarks/extract_throughput.py [--data ../shared/data/flickr8k] \\
        [--encoders efficientnet-lite2 efficientnet-lite0]

For each encoder: FLOPs per image (FlopCounterMode), end-to-end `extract_features` images/s over
every image file (JPEG decoding, resizing and encoding; ONNX Runtime backend), the PyTorch backend
on a subset for reference, and the max |ONNX - torch| feature difference on real photos. The limit
is the peak fp32 matmul FLOP/s torch reaches here; share = FLOPs/image x images/s / limit.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def peak_matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def all_images_dataset(data: Path, root: Path):
    """A prepared dataset holding every image file of Flickr8k (8,091), captions from the token file."""
    from capgen.data import prepare_dataset

    caps: dict[str, list[str]] = {}
    for line in (data / "Flickr8k.token.txt").read_text().splitlines():
        key, _, cap = line.partition("\t")
        caps.setdefault(key.rsplit("#", 1)[0], []).append(cap)
    images = sorted(p.name for p in (data / "Images").glob("*.jpg"))
    with open(root / "all.jsonl", "w") as f:
        for name in images:
            f.write(json.dumps({"image": f"Images/{name}", "captions": caps.get(name, ["a photo"])}) + "\n")
    (root / "Images").symlink_to((data / "Images").resolve())
    return prepare_dataset(root / "all.jsonl", root / "prepared", min_count=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/flickr8k")
    ap.add_argument("--encoders", nargs="+", default=["efficientnet-lite2", "efficientnet-lite0"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--torch-subset", type=int, default=256, help="images for the torch-backend reference")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from capgen.encoders import count_flops, create_encoder, make_runner
    from capgen.features import FeatureCache, extract_features

    data = Path(args.data)
    if not (data / "Flickr8k.token.txt").is_file():
        print(f"{data}: Flickr8k not found (needs Flickr8k.token.txt and Images/)", file=sys.stderr)
        return 2
    torch.set_num_threads(torch.get_num_threads())
    peak32, peak16 = peak_matmul_gflops(torch.float32), peak_matmul_gflops(torch.bfloat16)
    print(f"peak matmul: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "peak_fp32_gflops": peak32,
        "peak_bf16_gflops": peak16,
        "encoders": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = all_images_dataset(data, tmp)
        n = len(ds.records())
        for name in args.encoders:
            enc = create_encoder(name, allow_import=True)  # names from this script's own flags
            gflop = count_flops(enc) / 1e9
            make_runner(enc, backend="onnx")  # export once, outside the timing
            t = time.perf_counter()
            res = extract_features(
                ds, tmp / name, encoder=name, backend="onnx", batch_size=args.batch_size, workers=args.workers
            )
            wall = time.perf_counter() - t
            ips = n / wall
            # Reference: the PyTorch backend on a subset, and how far the ONNX features are from it.
            sub = ds.records()[: args.torch_subset]
            from capgen.images import load_image

            x = np.stack([enc.preprocess(load_image(r.path)).numpy() for r in sub])
            torch_runner = make_runner(enc, backend="torch")
            t = time.perf_counter()
            ref_pooled, ref_grid = [], []
            for i in range(0, len(x), args.batch_size):
                p, g = torch_runner(x[i : i + args.batch_size])
                ref_pooled.append(p)
                ref_grid.append(g)
            torch_ips = len(x) / (time.perf_counter() - t)
            ref_grid = np.concatenate(ref_grid)
            onnx_runner = make_runner(enc, backend="onnx")
            onnx_grid = np.concatenate(
                [onnx_runner(x[i : i + args.batch_size])[1] for i in range(0, len(x), args.batch_size)]
            )
            cached = FeatureCache.open(tmp / name).grid([r.image for r in sub])
            row = {
                "gflop_per_image": gflop,
                "images": n,
                "failed": len(res.failed),
                "seconds": wall,
                "images_per_s": ips,
                "share_of_fp32_peak": gflop * ips / peak32,
                "torch_images_per_s_encoder_only": torch_ips,
                "max_abs_diff_onnx_vs_torch_fp32": float(np.abs(onnx_grid - ref_grid).max()),
                "max_abs_diff_cache_fp16_vs_torch": float(np.abs(cached - ref_grid).max()),
            }
            results["encoders"][name] = row
            print(
                f"{name}: {n} images in {wall:.1f} s = {ips:.1f} img/s end to end (onnx), "
                f"{gflop:.2f} GFLOP/img -> {gflop * ips:.0f} GFLOP/s = {row['share_of_fp32_peak']:.0%} "
                f"of fp32 peak; torch encoder-only {torch_ips:.1f} img/s; max |onnx-torch| "
                f"{row['max_abs_diff_onnx_vs_torch_fp32']:.1e}, fp16 cache vs torch "
                f"{row['max_abs_diff_cache_fp16_vs_torch']:.1e}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
