"""`Captioner`: photos in, captions out, as a pipeline preprocess -> forward -> postprocess.

It is built from one checkpoint file. The encoder is rebuilt from the checkpoint's encoder spec and
checked against it, and images go through the same loader and the same transform as feature
extraction, so captions are computed on exactly the features the model was trained on.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from capgen.encoder_spec import EncoderSpec
from capgen.errors import CapgenError
from capgen.images import MAX_PIXELS, ImageSource, load_image
from capgen.result import CaptionResult, from_hypotheses
from capgen.tags import DEFAULT_THRESHOLD, Guidance, GuideConfig, Tag, TagConfig
from capgen.tags.corpus_captions import CorpusCaptions
from capgen.tags.guide import plan_images

# Where the model shipped with the package lives (package data; may be absent in an install): the
# checkpoint (torch) and the same model exported (ONNX Runtime alone), made with
# `capgen export src/capgen/assets/captioner.pt --out src/capgen/assets/captioner`; the tests check
# that its manifest names the checkpoint's weights_sha256.
BUNDLED_MODEL = "assets/captioner.pt"
BUNDLED_EXPORT = "assets/captioner"


def bundled_model_path() -> Path:
    """Path of the bundled checkpoint; CapgenError when this install has none."""
    path = Path(str(resources.files("capgen").joinpath(BUNDLED_MODEL)))
    if not path.is_file():
        raise CapgenError("no bundled model in this install; pass a checkpoint path (e.g. runs/NAME/best.pt)")
    return path


def bundled_export_path() -> Path:
    """Path of the bundled exported folder; CapgenError when this install has none."""
    path = Path(str(resources.files("capgen").joinpath(BUNDLED_EXPORT)))
    if not path.is_dir():
        raise CapgenError("no bundled model in this install; pass an exported folder (capgen export)")
    return path


class Captioner:
    """Caption images with a trained checkpoint.

        cap = Captioner.from_pretrained("runs/transformer/best.pt")
        cap.caption("photo.jpg").caption             # 'a dog runs on the grass'
        cap.caption(["a.jpg", "b.jpg"], n_best=3)     # list of CaptionResult
        cap.caption("photo.jpg", tags=5).tags         # [Tag('cat', 0.85), ...] from the encoder's head
        cap.caption("photo.jpg", guide=None)          # no tag guidance (on by default; see capgen.tags.guide)

    Not thread-safe: the model and encoder runner hold shared state; the server runs one Captioner
    in a single worker thread.
    """

    def __init__(
        self,
        model,
        vocab,
        encoder,
        runner,
        name: str = "",
        max_pixels: int = MAX_PIXELS,
        tagger=None,
        tags_error: str | None = None,
        precision: str = "fp32",
        fast_decoder=None,
    ):
        """tagger: a capgen.tags.Tagger, or None with `tags_error` saying why there are no tags.
        precision: the decoder's, "fp32" or "bf16" (autocast; fp32 with a warning on a CPU without
        native bf16); the encoder's is the runner's own (`runner.precision`).
        fast_decoder: `model`'s decoder in ONNX Runtime (capgen.inference.onnx_step.OnnxStepModel),
        used for every decode but attention maps (which need `model`); None = `model` always."""
        from capgen.decoding import TokenIds
        from capgen.encoders.precision import resolve_bf16

        if precision == "int8":
            precision = "fp32"  # the torch decoder has no int8; the ONNX one (fast_decoder) may
        self.precision = resolve_bf16(precision)
        self.model = model.eval()
        self.vocab = vocab
        self.ids = TokenIds.from_vocab(vocab)
        self.encoder = encoder
        self.runner = runner
        self.name = name or model.name
        self.max_pixels = max_pixels
        self.tagger = tagger
        self.tags_error = None if tagger is not None else (tags_error or "tags unavailable: no tagger given")
        self._guide = None  # built on first use: it reads GloVe vectors for the words the model lacks
        self.corpus = CorpusCaptions(tagger)
        self.fast_decoder = fast_decoder if self.precision == "fp32" else None  # bf16 is a torch autocast

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | Sequence[str | Path] | None = None,
        encoder: str | None = None,
        backend: str = "auto",
        max_pixels: int = MAX_PIXELS,
        tag_words: str | Path | None = None,
        precision: str = "fp32",
        calibration: Sequence[ImageSource] | None = None,
        threads: int | None = None,
    ) -> "Captioner":
        """Load a checkpoint (None = the bundled model; several paths = an ensemble) and rebuild its encoder.

        encoder: build the encoder with this name or 'package.module:factory' instead of the name in the
          checkpoint (for your own encoders; its spec must still match). Only this argument imports code.
        tag_words: a class -> word file for tags (None = the bundled one); without a head or with a bad
          file captioning still works, and `tags_error` says why there are no tags.
        precision: "fp32", "bf16" (decoder under bf16 autocast) or "int8" (encoder quantized in ONNX
          Runtime, calibrated once on `calibration` photos); see capgen.encoders.precision.
        threads: compute threads (default: all cores; 1 on a machine busy with other work).
        backend: "auto" runs the encoder and the decoder's steps in ONNX Runtime where they export (else
          torch, with a warning); "onnx" requires it; "torch" uses torch for both.
        An export folder (and the bundled model without torch) gives an ExportedCaptioner (no torch).
        """
        from capgen.extras import available
        from capgen.inference.exported import ExportedCaptioner, is_export, needs_checkpoint

        if path is None and not available("torch"):  # `pip install capgen`: the bundled model as exported
            path = bundled_export_path()
        if is_export(path):
            first = path if isinstance(path, (str, Path)) else path[0]
            options = {"encoder": encoder, "backend": backend, "max_pixels": max_pixels, "tag_words": tag_words}
            options.update(precision=precision, calibration=calibration, threads=threads)
            return ExportedCaptioner.from_folder(first, **options)
        if not available("torch"):
            first = Path(path if isinstance(path, (str, Path)) else path[0])
            raise needs_checkpoint(f"{first.name}: a checkpoint", first)
        from capgen.checkpoint import load_checkpoints
        from capgen.encoders import make_runner

        paths = (
            [bundled_model_path()]
            if path is None
            else [Path(p) for p in ([path] if isinstance(path, (str, Path)) else path)]
        )
        ck = load_checkpoints(paths)
        enc = _encoder_of(ck, encoder, paths[0])
        model = with_checkpoint_encoder(enc, ck, paths[0])
        tagger, tags_error = _tagger_of(enc, tag_words)
        calib = None
        if calibration is not None:
            calib = np.stack([enc.preprocess.array(load_image(i, max_pixels=max_pixels)) for i in calibration])
        runner = make_runner(enc, backend=backend, precision=precision, calibration=calib, threads=threads)
        onnx = runner.backend == "onnx" and precision != "bf16"  # the decoder's steps too, where they export
        fast = _fast_decoder(model, backend, threads, precision) if onnx else None
        name = f"{ck.model.name} ({', '.join(p.name for p in paths)})"
        extra = {"tagger": tagger, "tags_error": tags_error, "precision": precision, "fast_decoder": fast}
        return cls(model, ck.vocab, enc, runner, name=name, max_pixels=max_pixels, **extra)

    # ---- properties the CLI and the server ask about ------------------------------------------------
    @property
    def supports_attention(self) -> bool:
        return bool(self.model.supports_attention)

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.encoder.grid_hw

    def info(self) -> dict:
        """What /health reports."""
        return {
            "model": self.name,
            "architecture": self.model.name,
            "encoder": self.encoder.name,
            "vocab_size": len(self.vocab),
            "supports_attention": self.supports_attention,
            "grid": list(self.grid_hw),
            "tags": self.tagger is not None,
            "precision": {
                "encoder": getattr(self.runner, "precision", "fp32"),
                "decoder": getattr(self.fast_decoder, "precision", self.precision),
            },
            "decoder": "onnx" if self.fast_decoder is not None else "torch",
            **({"tags_error": self.tags_error} if self.tags_error else {}),
        }

    def warm_up(self) -> None:
        """Load now what the first guided caption would load (the tag guide reads GloVe, the scene
        scorer its graphs), so that a server does it at start; a failure is left for that caption
        to retry and report."""
        from capgen.runtime.scene_scorer import bundled

        if self.tagger is not None:
            try:
                if self._guide is None:
                    self._guide_for_vocab()
                bundled()
            except CapgenError:
                pass

    def _guide_for_vocab(self):
        from capgen.tags import Guide

        if self._guide is None:  # only a built guide is kept: a failed build is tried again next time
            self._guide = Guide.build(self.vocab, self.tagger.words)
        return self._guide

    # ---- the pipeline -----------------------------------------------------------------------------
    def load(self, image: ImageSource, name: str | None = None) -> Image.Image:
        """The one loader (EXIF, RGB, size limit); raises ImageLoadError naming the image."""
        return load_image(image, max_pixels=self.max_pixels, name=name)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """RGB images -> (B, 3, S, S) float32 with the encoder's own transform (as in extraction)."""
        return np.stack([self.encoder.preprocess.array(img) for img in images])

    def encode(self, images: Sequence[ImageSource]) -> tuple[np.ndarray, np.ndarray]:
        """Images -> pooled (B, dim), grid (B, H*W, dim) float32: the features a feature cache holds."""
        return self.encode_loaded([self.load(i) for i in images])

    def forward(
        self, pooled: np.ndarray, grid: np.ndarray, config, guidance: Sequence[Guidance | None] = (), references=None
    ) -> list:
        """Features -> per image, a list of Hypothesis (best first); one batched decode call
        (references: see capgen.decoding.search)."""
        from capgen.decoding import decode
        from capgen.encoders.precision import autocast

        include = [g.include if g else None for g in guidance] if any(guidance) else None
        model = self.model if self.fast_decoder is None or config.return_attention else self.fast_decoder
        with autocast(self.precision):
            return decode(model, pooled, grid, self.ids, config, include=include, references=references)

    def scorer(self, pooled: np.ndarray, grid: np.ndarray):
        """Scores captions of similar scenes for CorpusCaptions: for images (indices into the batch)
        and their captions (token tuples), the mean log-probability per word of each
        (capgen.decoding.score) under the bundled scene scorer where it fits this encoder, else
        under the decoder that captions (capgen.runtime.scene_scorer)."""
        from capgen.decoding.torch_step import score
        from capgen.encoders.precision import autocast
        from capgen.runtime.scene_scorer import preferred

        model = self.model if self.fast_decoder is None else self.fast_decoder

        def own(images: list[int], captions, word_probs) -> list:  # reads no tags
            ids = [[self.vocab.encode(c, add_special=False) for c in caps] for caps in captions]
            with autocast(self.precision):
                return score(model, pooled[images], grid[images], self.ids, ids)

        return preferred(self.encoder.spec(), self.tagger, own, pooled, grid)

    def guidance(
        self, pooled: np.ndarray, config, guide: GuideConfig | float | None = GuideConfig()
    ) -> list[Guidance | None]:
        """Per image, the confident tag its caption must contain, or None (no tagger, guide None,
        sampling, or no tag confident enough)."""
        return plan_images(self._guide_for_vocab, self.tagger, pooled, guide, config.method)

    def postprocess(self, hyps: list, image: Image.Image, guided: Guidance | None = None) -> CaptionResult:
        """One image's hypotheses -> CaptionResult with words and (words, H, W) attention; a guided
        caption's stand-in word is written as its tag word."""
        return from_hypotheses(hyps, self.vocab.decode, guided, image.size, self.grid_hw)

    def caption(
        self,
        images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        tags: int = 0,
        tag_threshold: float = DEFAULT_THRESHOLD,
        guide: GuideConfig | float | None = GuideConfig(),
        **options,
    ) -> CaptionResult | list[CaptionResult]:
        """Caption one image (path, bytes or PIL image) or a list of them.

        options: DecodeConfig fields (beam_size, method, n_best, max_len, no_repeat_ngram,
        temperature, seed, return_attention, ...), with DecodeConfig's defaults.
        tags: also return up to this many object tags (`CaptionResult.tags`) with probability >=
          `tag_threshold`; without a tagger this warns once with `tags_error` and tags stay None.
        guide: when a tag is this confident (a GuideConfig, or one probability for every word), the
          caption must contain its word (a word the model never learned is placed through a
          stand-in; `CaptionResult.guided` says which). None turns guidance off; it is also off
          for sampling and without a tagger.
        Raises ImageLoadError for the first unreadable image; `caption_paths` skips bad files instead.
        """
        config = self.decode_config(**options)
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        tag_config = self.tag_config(tags, tag_threshold)
        if tag_config and self.tags_error:
            warnings.warn(self.tags_error, RuntimeWarning, stacklevel=2)
        results = self.caption_loaded([self.load(i) for i in items], config, batch_size, tags=tag_config, guide=guide)
        return results[0] if single else results

    def tag_config(self, tags: int = 0, tag_threshold: float = DEFAULT_THRESHOLD) -> TagConfig | None:
        """None when no tags are asked for (tags == 0); TagsError for bad values."""
        return TagConfig(top_k=tags, threshold=tag_threshold) if tags else None

    def tag(self, images: Sequence[ImageSource], config: TagConfig | None = None) -> list[list[Tag]]:
        """Images -> per image, the confident tag words with probabilities (no captioning).
        Raises TagsError when this captioner has no tagger."""
        from capgen.errors import TagsError

        if self.tagger is None:
            raise TagsError(self.tags_error)
        pooled, _ = self.encode(images)
        return self.tagger(pooled, config)

    def caption_paths(self, paths: Sequence[str | Path], batch_size: int = 16, **options):
        """Files, folders (recursive) and globs -> iterator of (path, CaptionResult or ImageLoadError),
        in input order; bad or missing files are yielded as errors and the rest still captioned.
        `options` are those of `caption` (beam_size, n_best, return_attention, tags, ...)."""
        from capgen.inference.files import caption_paths, expand_paths

        tags = self.tag_config(options.pop("tags", 0), options.pop("tag_threshold", DEFAULT_THRESHOLD))
        guide = options.pop("guide", GuideConfig())
        return caption_paths(
            self, expand_paths(paths), self.decode_config(**options), batch_size=batch_size, tags=tags, guide=guide
        )

    def decode_config(self, **options):
        """`DecodeConfig(**options)`, the one builder every caller shares; attention on a model without
        attention is an error, not silently None."""
        from capgen.decoding import DecodeConfig

        if options.get("return_attention") and not self.supports_attention:
            raise CapgenError(
                f"model {self.model.name} has no attention; attention maps need an attention "
                "model (show_attend_tell or transformer)"
            )
        return DecodeConfig(**options)

    def caption_loaded(
        self,
        images: Sequence[Image.Image],
        config,
        batch_size: int = 16,
        tags: TagConfig | None = None,
        guide: GuideConfig | float | None = GuideConfig(),
    ) -> list[CaptionResult]:
        """Already loaded RGB images -> results, encoded and decoded `batch_size` images at a time.
        With `tags` and a tagger, each result also carries its tags (from the same pooled features);
        `guide`: when tags guide the caption (see `caption`)."""
        if batch_size < 1:
            raise CapgenError(f"batch_size must be >= 1, got {batch_size}")
        results: list[CaptionResult] = []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            results.extend(self.caption_encoded(chunk, *self.encode_loaded(chunk), config, tags=tags, guide=guide))
        return results

    # The two halves of caption_loaded: the server runs them in two threads, so the encoder of one
    # batch overlaps the decoder of the one before (they use separate sessions and models).
    def encode_loaded(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Loaded RGB images -> pooled (B, dim), grid (B, H*W, dim)."""
        return self.runner(self.preprocess(images))

    def caption_encoded(
        self,
        images: Sequence[Image.Image],
        pooled: np.ndarray,
        grid: np.ndarray,
        config,
        tags: TagConfig | None = None,
        guide: GuideConfig | float | None = GuideConfig(),
    ) -> list[CaptionResult]:
        """Images with their features -> results (guidance, one batched decode, tags)."""
        guidance = self.guidance(pooled, config, guide)
        wide, references = self.corpus.search(pooled, config, guide, self.vocab.decode, guidance)
        hyps = self.forward(pooled, grid, wide, guidance, references)
        results = [self.postprocess(h, img, g) for h, img, g in zip(hyps, images, guidance)]
        self.corpus.apply(results, pooled, config, guide, self.scorer(pooled, grid))
        if tags is not None and self.tagger is not None:
            for res, image_tags in zip(results, self.tagger(pooled, tags)):
                res.tags = image_tags
        return results


def _fast_decoder(model, backend: str, threads: int | None, precision: str):
    """The decoder's steps in ONNX Runtime, or None (with a warning under backend "auto") when the
    model does not export."""
    import os

    from capgen.errors import ExportError
    from capgen.inference.onnx_step import OnnxStepModel

    try:
        return OnnxStepModel(model, threads=threads or os.cpu_count() or 1, precision=precision)
    except (ExportError, OSError) as e:  # OSError: the cache folder cannot be written
        if backend == "onnx":
            raise ExportError(f"decoder of {model.name} in ONNX Runtime: {e}") from None
        warnings.warn(
            f"decoder of {model.name} in ONNX Runtime: {e}; decoding with torch", RuntimeWarning, stacklevel=3
        )
        return None


def with_checkpoint_encoder(enc, ck, path: Path):
    """Check `enc` against checkpoint `ck` and give it the checkpoint's fine-tuned encoder blocks, if
    any; returns the model that decodes `enc`'s features. This is the one place a checkpoint's
    encoder weights reach the encoder, so every runner built from `enc` afterwards (the ONNX export
    included: its cache file is keyed by the weights) computes the fine-tuned features."""
    from capgen.models.ensemble import EnsembleModel
    from capgen.models.finetuned import FinetunedModel

    model = ck.model
    if isinstance(model, EnsembleModel) and any(isinstance(m, FinetunedModel) for m in model.members):
        raise CapgenError(
            f"{path}: an ensemble with fine-tuned encoder blocks decodes from a feature cache only "
            f"(capgen evaluate); caption photos with one fine-tuned checkpoint at a time"
        )
    if not isinstance(model, FinetunedModel):
        check_encoder_spec(enc.spec(), ck.encoder, path)
        check_tagger(model, enc, path)
        return model
    stem, top = enc.split(model.split_at)
    check_encoder_spec(stem.spec(), ck.encoder, path)
    top.load_state_dict(model.top.state_dict())  # into enc's own modules (shared with `top`)
    enc.eval()
    return model.decoder


def check_tagger(model, enc, path: Path) -> None:
    """A model that reads tags runs only with the tagger it was trained with (the encoder's head and
    the class -> word mapping its buffers hold): one line naming both otherwise."""
    from capgen.tags.head import tagger_id
    from capgen.tags.words import WordMap

    members = getattr(model, "members", [model])
    for m in members:
        if not getattr(m, "reads_tags", False):
            continue
        head = enc.classifier()
        built = (
            tagger_id(enc.name, head.weight, head.bias, WordMap.load(None).class_words)
            if head is not None
            else f"{enc.name} (no classifier head)"
        )
        if built != m.config.tagger:
            raise CapgenError(
                f"{path}: trained with tagger {m.config.tagger}, but this encoder's is {built}; "
                "caption with the encoder the model was trained with"
            )


def _encoder_of(ck, encoder: str | None, path: Path):
    """The encoder to rebuild: the caller's `encoder` (which may import code), else the checkpoint's
    own name, which must be a registered encoder (a file never makes capgen import code)."""
    from capgen.encoders import create_encoder

    if encoder is not None:
        return create_encoder(encoder, allow_import=True)
    try:
        return create_encoder(ck.encoder.get("name"))
    except CapgenError as e:
        raise CapgenError(f"{path}: {e}") from None


def _tagger_of(enc, tag_words):
    """(tagger, None), or (None, why there are no tags): captioning works without them."""
    from capgen.errors import TagsError
    from capgen.tags import make_tagger

    try:
        return make_tagger(enc, tag_words), None
    except TagsError as e:
        return None, str(e)


def check_encoder_spec(built: dict, stored: dict, path: Path) -> None:
    """The encoder must be the one the model was trained with: same name, transform, dim and grid.

    This is the guard against train/inference preprocessing drift (a different resize or
    normalisation at inference gives plausible-looking but wrong captions).
    """
    detail = EncoderSpec.of(stored).differences(built, "checkpoint", "encoder")
    if detail:
        raise CapgenError(f"{path}: the encoder does not match the one the model was trained with ({detail})")
