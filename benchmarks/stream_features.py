"""Training speed with the split's features in RAM vs streamed from the cache (issue 11).

    python benchmarks/stream_features.py --data runs/flickr8k --features runs/flickr8k-lite2 \
        --mode ram|stream [--cold] [--steps 60] [--json out.json]

Runs `--steps` training steps of the model in `--config` (default configs/flickr8k_transformer.yaml) over the
first batches of epoch 0, exactly as `capgen train` builds them (CaptionPairs.epoch_batches, Features.load,
the cross-entropy objective, AdamW), one torch thread. Reports captions/s over the steps (after one warm-up
step; also per CPU second of this process, which a busy shared machine disturbs less than wall time), the
seconds to load the features and to the first step, the time spent reading features, and the process's peak
RSS (VmHWM). Run one mode per process so RSS figures are its own.

--cold evicts the cache files from the OS page cache first (posix_fadvise DONTNEED on each file:
works without root and touches no other file; the kernel may still read ahead within the file).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from capgen.data import PreparedDataset
from capgen.features import FeatureCache, Features
from capgen.models import create_model
from capgen.training import load_run_config
from capgen.training.data import CaptionPairs
from capgen.training.objectives import Batch, CrossEntropy
from capgen.training.trainer import param_groups

ROOT = Path(__file__).resolve().parents[1]


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "flickr8k_transformer.yaml"))
    ap.add_argument("--mode", choices=["ram", "stream"], required=True)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    cfg = load_run_config(a.config)
    tc = cfg.train
    data, cache = PreparedDataset.load(a.data), FeatureCache.open(a.features)
    if a.cold:
        for name in ("grid.npy", "pooled.npy"):
            evict(cache.root / name)
    torch.manual_seed(tc.seed)
    enc = cache.encoder_spec
    model = create_model(
        cfg.model,
        vocab_size=len(data.vocab),
        feature_dim=enc["dim"],
        num_regions=enc["grid"][0] * enc["grid"][1],
        overrides=cfg.model_config,
    )
    pairs = CaptionPairs(data.split("train"), data.vocab, tc.max_caption_len)
    optim = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr)
    objective = CrossEntropy(data.vocab, tc.label_smoothing)
    t0 = time.perf_counter()
    feats = Features.load(cache, data.split("train"), memory_mb=None if a.mode == "ram" else 0)
    load_s = time.perf_counter() - t0
    batches = pairs.epoch_batches(0, tc.seed, tc.batch_size)[: a.steps + 1]
    read_s, caps, first_step_s = 0.0, 0, None
    model.train()
    for i, idx in enumerate(batches):
        if i == 1:
            t_steps, cpu_steps, read_s, caps = time.perf_counter(), time.process_time(), 0.0, 0
        rows, image_index, cap = pairs.batch(idx)
        t = time.perf_counter()
        pooled, grid = feats.batch(rows)
        read_s += time.perf_counter() - t
        loss, _ = objective(model, model, Batch(pooled, grid, image_index, cap, []))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optim.step()
        caps += len(idx)
        if first_step_s is None:
            first_step_s = time.perf_counter() - t_start
    steps_s, cpu_s = time.perf_counter() - t_steps, time.process_time() - cpu_steps
    res = {
        "mode": a.mode,
        "cold": a.cold,
        "steps": len(batches) - 1,
        "captions_per_s": caps / steps_s,
        "captions_per_cpu_s": caps / cpu_s,
        "load_features_s": load_s,
        "first_step_s": first_step_s,
        "feature_read_s": read_s,
        "steps_s": steps_s,
        "peak_rss_mb": peak_rss_mb(),
        "final_loss": loss.item(),
    }
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
