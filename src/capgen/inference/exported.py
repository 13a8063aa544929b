"""`ExportedCaptioner`: the Captioner's pipeline over a folder written by `capgen export`, run by
capgen.runtime with onnxruntime, numpy and pillow only: no torch.

`Captioner.from_pretrained` returns one for an exported folder, and for the bundled model when torch
is not installed (`pip install capgen`): the same captions, the same CaptionResult and JSON, the same
server. What needs the checkpoint (attention maps, bf16, int8, another encoder) says so in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from capgen.errors import CapgenError
from capgen.extras import MissingExtra, available, install_hint
from capgen.images import MAX_PIXELS, ImageSource
from capgen.inference.captioner import Captioner
from capgen.runtime import folder as fmt


def is_export(path) -> bool:
    """`path` (or a list of one path) is a folder written by `capgen export`."""
    if isinstance(path, (list, tuple)):
        return len(path) == 1 and is_export(path[0])
    return isinstance(path, (str, Path)) and (Path(path) / fmt.MANIFEST).is_file()


def needs_checkpoint(what: str, folder) -> CapgenError:
    """The one-line error for something only the torch Captioner does."""
    if not available("torch"):
        return MissingExtra(f"{what} needs torch, which is not installed: {install_hint('train')}")
    return CapgenError(
        f"{what} needs a .pt checkpoint (--model runs/NAME/best.pt); {Path(folder).name} is an "
        "exported folder, run by ONNX Runtime alone"
    )


class ExportedCaptioner(Captioner):
    """A Captioner whose encoder and decoder are an exported folder's ONNX graphs (capgen.runtime.Runtime).

    The pipeline (loading, guidance, results, tags, corpus captions, `caption_paths`) is Captioner's;
    this class supplies its engine: encode, decode and the decoding settings.
    """

    def __init__(self, runtime, max_pixels: int = MAX_PIXELS):
        # Captioner.__init__ builds the torch parts; the pipeline reads only what is set here.
        self.runtime = runtime
        self.vocab, self.ids = runtime.vocab, runtime.ids
        self.name = runtime.source
        self.max_pixels = max_pixels
        self.tagger = runtime.tagger
        self.tags_error = (
            None
            if runtime.tagger is not None
            else f"tags unavailable: {Path(runtime.folder).name} was exported without a tagger"
        )
        self._guide = runtime.guide  # the guidance plans the export carries (no GloVe needed)
        self.corpus = runtime.corpus
        self.precision = "fp32"
        self.model = self.encoder = self.runner = self.fast_decoder = None

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        encoder: str | None = None,
        backend: str = "auto",
        max_pixels: int = MAX_PIXELS,
        tag_words: str | Path | None = None,
        precision: str = "fp32",
        calibration: Sequence[ImageSource] | None = None,
        threads: int | None = None,
    ) -> "ExportedCaptioner":
        """Load an exported folder; the arguments are Captioner.from_pretrained's, and those only a
        checkpoint can honour are refused by name."""
        from capgen.runtime import Runtime

        for what, asked in (
            (f"--encoder {encoder}", encoder is not None),
            ("--backend torch", backend == "torch"),
            (f"--precision {precision}", precision != "fp32"),
            ("--calibration", calibration),
            ("--tag-words", tag_words is not None),
        ):
            if asked:
                raise needs_checkpoint(what, folder)
        if backend not in ("auto", "onnx"):
            raise CapgenError(f"backend must be auto, onnx or torch, got {backend!r}")
        return cls(Runtime(folder, threads=threads, max_pixels=max_pixels), max_pixels=max_pixels)

    # ---- what the CLI and the server ask about ----------------------------------------------------
    @property
    def supports_attention(self) -> bool:
        return False

    @property
    def grid_hw(self) -> tuple[int, int]:
        grid = self.runtime.encoder_spec.get("grid") or (0, 0)
        return int(grid[0]), int(grid[1])

    def info(self) -> dict:
        """What /health reports: the Captioner's fields, and the weights the export was made from."""
        return {
            "model": self.name,
            "architecture": self.runtime.architecture,
            "encoder": self.runtime.encoder_spec["name"],
            "vocab_size": len(self.vocab),
            "supports_attention": False,
            "grid": list(self.grid_hw),
            "tags": self.tagger is not None,
            "precision": {"encoder": "fp32", "decoder": "fp32"},
            "decoder": "onnx",
            "weights_sha256": list(self.runtime.weights_sha256),
            **({"tags_error": self.tags_error} if self.tags_error else {}),
        }

    # ---- the engine -------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self.runtime.preprocess.array(img) for img in images])

    def encode_loaded(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        return self.runtime.encode_loaded(images)

    def forward(self, pooled: np.ndarray, grid: np.ndarray, config, guidance=(), references=None) -> list:
        return self.runtime.decode(pooled, grid, config, guidance, references)

    def scorer(self, pooled: np.ndarray, grid: np.ndarray):
        return self.runtime.scorer(pooled, grid)

    def decode_config(self, **options):
        """The export's decoding settings updated by `options` (DecodeConfig fields)."""
        if options.get("return_attention"):
            raise needs_checkpoint("an attention map", self.runtime.folder)
        return self.runtime.decode_config(**options)
