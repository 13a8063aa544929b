"""What fine-tuning the last N encoder blocks adds to a training step (issue 8, section 3).

    python benchmarks/finetune_cost.py [--encoder efficientnet-lite2] [--blocks 1 2 3] [--steps 20]

Times forward + backward + AdamW of the blocks (BatchNorm frozen) on batches of 16 block inputs,
one torch thread, as `capgen train` with train.finetune_blocks=N runs them before the decoder.
Reports CPU seconds of this process (robust on a shared machine) and wall seconds, per batch and
per Flickr8k epoch (6,000 images), and the block input's float16 size per image.
"""

from __future__ import annotations

import argparse
import time

import torch

from capgen.encoders import create_encoder, pool_grid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="efficientnet-lite2")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| blocks | block input | KB/image fp16 | CPU s/batch | wall s/batch | CPU s per 6,000-image epoch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in a.blocks:
        enc = create_encoder(a.encoder)
        stem, top = enc.split(n)
        params = [p for p in top.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=1e-5)
        c, (h, w) = stem.dim, stem.grid_hw
        x = torch.randn(a.batch, c, h, w)
        cpu = wall = 0.0
        for i in range(a.steps + 3):  # 3 warm-up steps
            c0, w0 = time.process_time(), time.perf_counter()
            pooled, grid = pool_grid(top(x))  # (B, D), (B, H*W, D)
            (pooled.square().mean() + grid.square().mean()).backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            if i >= 3:
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
        per_cpu, per_wall = cpu / a.steps, wall / a.steps
        print(
            f"| {n} | {c}x{h}x{w} | {c * h * w * 2 / 1024:.0f} | {per_cpu:.3f} | {per_wall:.3f} | "
            f"{per_cpu * 6000 / a.batch:.0f} |"
        )


if __name__ == "__main__":
    main()
