"""Build capgen's scene scorer (capgen/runtime/scene_scorer.py) from a trained checkpoint.

    python scripts/build_scene_scorer.py runs/tags-coco/best.pt --out src/capgen/assets/scene_scorer

The bundled one is the tag-reading Transformer trained on Flickr8k pairs and COCO caption text
(BENCHMARKS.md, "Everyday photos: a tag-reading decoder on COCO text only" has its commands).
Its weights are rounded to float16 (as the bundled checkpoint's) and stored in half the bytes.
"""

from __future__ import annotations

import argparse

from capgen.errors import run_script
from capgen.export.scene_scorer import write_scene_scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--full-precision", action="store_true", help="keep float32 weights (no float16, no int8)")
    ap.add_argument("--no-int8", action="store_true", help="keep the MatMul weights in floating point")
    args = ap.parse_args()
    full = args.full_precision
    summary = write_scene_scorer(args.checkpoint, args.out, half=not full, int8=not (full or args.no_int8))
    total = sum(summary["files"].values())
    print(f"{args.out}: {total / 1e6:.1f} MB ({summary['files']}), ONNX vs torch {summary['max_diff']:.2g}")


if __name__ == "__main__":
    run_script(main)
