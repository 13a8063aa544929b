"""Copy a trained checkpoint into the package as the bundled model, with float16 weights.

    python scripts/bundle_model.py runs/transformer/best.pt [--out src/capgen/assets/captioner.pt]

The bundled file is what `capgen caption` and `Captioner.from_pretrained()` use by default.
Loading converts the weights back to float32; float16 storage halves the file (kept <= 30 MB).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from capgen.checkpoint import load_checkpoint, model_payload, save_checkpoint
from capgen.errors import run_script

LIMIT_MB = 30


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/capgen/assets/captioner.pt"))
    args = ap.parse_args(argv)
    ck = load_checkpoint(args.checkpoint)
    meta = {k: v for k, v in ck.meta.items() if k in ("run_config", "epoch", "val")}
    meta["source"] = Path(args.checkpoint).name
    save_checkpoint(args.out, model_payload(ck.model, ck.vocab, ck.encoder, meta, half=True))
    size = Path(args.out).stat().st_size / 2**20
    print(
        f"bundled {ck.model.name} ({sum(p.numel() for p in ck.model.parameters()) / 1e6:.1f}M params) -> "
        f"{args.out} ({size:.1f} MB)"
    )
    if size > LIMIT_MB:
        print(f"warning: over the {LIMIT_MB} MB limit for the bundled model", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_script(main)
