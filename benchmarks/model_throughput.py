"""Training and decoding throughput of every registered model, with the configs in configs/.

    python benchmarks/model_throughput.py [--json out.json]

Training: forward + backward + AdamW step on batch 64 of 16-token captions (captions/s), and the
FLOPs of one such step (FlopCounterMode) as a share of the peak fp32 matmul FLOP/s measured here.
Decoding: greedy and beam 3 (max 20 words) at batch 1 and batch 64 (images/s). Inputs are random
features of efficientnet-lite2 shape (pooled 1280, grid 81x1280), vocabulary 2,541 (Flickr8k).
Models decode to max length here (random weights rarely emit <end>): a worst case for decoding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from extract_throughput import peak_matmul_gflops  # noqa: E402

CONFIGS = {
    "show_tell": "flickr8k_show_tell.yaml",
    "show_attend_tell": "flickr8k_show_attend_tell.yaml",
    "transformer": "flickr8k_transformer.yaml",
}


def _time(fn, min_seconds: float = 3.0, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from capgen.decoding import DecodeConfig, decode
    from capgen.models import create_model
    from capgen.training import load_run_config
    from capgen.training.trainer import masked_loss

    torch.manual_seed(0)
    peak = peak_matmul_gflops(torch.float32)
    print(f"peak fp32 matmul: {peak:.0f} GFLOP/s, {torch.get_num_threads()} threads")
    V, D, R, B, T = 2541, 1280, 81, 64, 16
    results = {"date": time.strftime("%Y-%m-%d"), "peak_fp32_gflops": peak, "models": {}}
    for name, cfg_file in CONFIGS.items():
        cfg = load_run_config(ROOT / "configs" / cfg_file)
        cfg.model_config["glove"] = False  # same architecture; no need to read GloVe for timing
        model = create_model(name, V, D, R, overrides=cfg.model_config)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        pooled, grid = torch.randn(B, D), torch.randn(B, R, D).relu()
        caps = torch.randint(4, V, (B, T))

        # the loop's objects are bound as defaults: each closure times this iteration's model
        def step(model=model, pooled=pooled, grid=grid, caps=caps, opt=opt):
            out = model(pooled, grid, caps)
            loss = masked_loss(out["logits"], caps[:, 1:], 0, 0.1) + out["aux_loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()

        model.train()
        with FlopCounterMode(display=False) as fc:
            out = model(pooled, grid, caps)
            (masked_loss(out["logits"], caps[:, 1:], 0, 0.1) + out["aux_loss"]).backward()
        flops = fc.get_total_flops()
        t = _time(step)
        row = {
            "params": sum(p.numel() for p in model.parameters()),
            "train_captions_per_s": B / t,
            "train_gflop_per_step": flops / 1e9,
            "train_share_of_peak": flops / t / 1e9 / peak,
        }
        for method, beam in (("greedy", 1), ("beam", 3)):
            for bs in (1, 64):
                cfg_d = DecodeConfig(method=method, beam_size=beam, max_len=20)
                p, g = pooled[:bs], grid[:bs]
                t = _time(lambda m=model, p=p, g=g, c=cfg_d: decode(m, p, g, 1, 2, c), min_seconds=2.0)
                row[f"{method}{beam if method == 'beam' else ''}_batch{bs}_images_per_s"] = bs / t
        results["models"][name] = row
        print(
            f"{name}: {row['params'] / 1e6:.1f}M params; train {row['train_captions_per_s']:.0f} captions/s "
            f"({row['train_share_of_peak']:.0%} of peak); decode images/s: greedy b1 "
            f"{row['greedy_batch1_images_per_s']:.1f}, b64 {row['greedy_batch64_images_per_s']:.0f}; beam3 b1 "
            f"{row['beam3_batch1_images_per_s']:.1f}, b64 {row['beam3_batch64_images_per_s']:.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
