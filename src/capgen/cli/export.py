"""capgen export CHECKPOINT --out DIR: the whole captioner as ONNX, for capgen.runtime (no torch)."""

from __future__ import annotations

from capgen.argtypes import out_dir
from capgen.decoding.flags import add_decode_args, decode_options
from capgen.errors import say


def register(sub, parents) -> None:
    p = sub.add_parser(
        "export",
        parents=parents,
        help="export a checkpoint to ONNX for the torch-free runtime",
        description="Write the encoder, the decoder (init and one step, with its K/V cache or "
        "RNN state as inputs and outputs), the vocabulary and the decoding settings "
        "into DIR, with a manifest of file hashes. Run it with `python -m "
        "capgen.runtime DIR photo.jpg` or capgen.runtime.Runtime: onnxruntime, "
        "numpy and pillow only. The decoding flags set the runtime's defaults.",
    )
    p.add_argument(
        "checkpoint",
        nargs="+",
        metavar="CHECKPOINT",
        help="a best.pt (several: an ensemble sharing vocabulary and encoder)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=out_dir,
        metavar="DIR",
        help="output folder (replaced only if it holds an earlier export)",
    )
    p.add_argument(
        "--encoder",
        metavar="NAME",
        help="build the encoder as NAME or 'module:factory' (it must match the checkpoint's)",
    )
    add_decode_args(p)
    p.set_defaults(func=run, needs=("torch", "onnx"))


def run(args) -> int:
    from capgen.decoding import DecodeConfig
    from capgen.export import export_checkpoint

    summary = export_checkpoint(args.checkpoint, args.out, DecodeConfig(**decode_options(args)), encoder=args.encoder)
    size = sum(summary["files"].values()) / 2**20
    say(
        f"capgen export: wrote {args.out} ({size:.1f} MB; decoder step matches torch to {summary['step_max_diff']:.1e})"
    )
    return 0
