"""Bulk captioning throughput, one thread per process (issue 11).

    python benchmarks/bulk_caption.py PHOTOS/ --out caps.jsonl [--model CKPT]
    torchrun --nproc-per-node 2 benchmarks/bulk_caption.py PHOTOS/ --out caps.jsonl

What `capgen caption PHOTOS/ --out caps.jsonl` does (inference/bulk.py), with the encoder's ONNX Runtime
session and torch both held to one thread per process (the CLI lets ONNX Runtime use every core).
Resumable like the CLI: kill it and run it again. Prints images/s of this run on rank 0.
"""

from __future__ import annotations

import argparse
import os

import torch

from capgen.checkpoint import load_checkpoint
from capgen.encoders import create_encoder, make_runner
from capgen.inference import Captioner, bundled_model_path
from capgen.inference.bulk import caption_to_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model")
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(1)
    path = a.model or bundled_model_path()
    ck = load_checkpoint(path)
    enc = create_encoder(ck.encoder["name"])
    cap = Captioner(ck.model, ck.vocab, enc, make_runner(enc, threads=1), name=f"{ck.model.name} ({os.fspath(path)})")
    res = caption_to_file(cap, a.paths, a.out, batch_size=a.batch_size)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{res.captioned} captioned in {res.seconds:.0f} s = {res.images_per_s:.2f} images/s "
            f"(world {os.environ.get('WORLD_SIZE', '1')}), {res.skipped} skipped, {len(res.failed)} failed"
        )


if __name__ == "__main__":
    main()
