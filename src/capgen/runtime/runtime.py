"""`Runtime`: caption photos with an exported folder, using only onnxruntime, numpy and pillow.

Same pipeline as capgen's Captioner (the one image loader, the encoder's own transform, the
encoder, then the one search of capgen.decoding under the same rules), with no torch anywhere.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from capgen.data.vocab import Vocabulary
from capgen.decoding.config import DecodeConfig, Hypothesis, TokenIds
from capgen.decoding.score import caption_scores
from capgen.decoding.search import search
from capgen.decoding.steps import ArrayStep
from capgen.errors import CapgenError, ExportError
from capgen.images import MAX_PIXELS, ImageSource, load_image
from capgen.ort import open_session
from capgen.preprocess import Preprocess
from capgen.result import CaptionResult, from_hypotheses
from capgen.runtime import folder as fmt
from capgen.runtime import scene_scorer
from capgen.runtime.graphs import DecoderGraphs
from capgen.tags.corpus_captions import CorpusCaptions
from capgen.tags.guide import Guidance, Guide, GuideConfig, plan_images
from capgen.tags.head import LinearHead
from capgen.tags.tagger import Tagger
from capgen.tags.words import WordMap


class Runtime:
    """An exported captioner (`capgen export CHECKPOINT --out DIR`).

        rt = Runtime("exported/")
        rt.caption(["a.jpg", "b.jpg"])            # [CaptionResult('a dog runs on the grass', ...), ...]
        rt.caption("a.jpg", beam_size=1).caption  # greedy

    threads: ONNX Runtime threads for the encoder (default: all cores); the decoder step is a few
      small matrices per word, for which one thread is fastest.
    """

    def __init__(
        self,
        folder: str | Path,
        threads: int | None = None,
        decoder_threads: int = 1,
        verify: bool = True,
        max_pixels: int = MAX_PIXELS,
    ):
        self.folder = fmt.check_folder(folder, verify=verify)
        d = self.folder
        self.vocab = self._vocab(d / fmt.VOCAB)
        info, path = fmt.read_json(d / fmt.MODEL, "the exported model description"), d / fmt.MODEL
        self.architecture = fmt.field(info, "architecture", str, path)
        self.memory_keys = fmt.names_field(info, "memory", path)
        self.state_keys = fmt.names_field(info, "state", path)
        self.max_len_limit = fmt.count_field(info, "max_len_limit", path, optional=True)
        # absent in older exports: one row per beam
        self.shared_memory = fmt.field(info, "shared_memory", bool, path) if "shared_memory" in info else False
        # what it was exported from: the Captioner's name, the checkpoints' weights_sha256
        self.source = info["source"][:200] if isinstance(info.get("source"), str) else f"{self.architecture} ({d.name})"
        self.weights_sha256 = fmt.weights_of(d)
        self.encoder_spec = encoder = fmt.field(info, "encoder", dict, path)
        fmt.field(encoder, "name", str, path)
        fmt.count_field(encoder, "dim", path)
        fmt.count_field(encoder, "grid", path, optional=True, length=2)
        if info.get("vocab_size", len(self.vocab)) != len(self.vocab):
            raise ExportError(
                f"{path}: field 'vocab_size' must be the vocabulary's size ({len(self.vocab)}), got "
                f"{str(info['vocab_size'])[:40]}"
            )
        try:
            self.preprocess = Preprocess.from_dict(encoder.get("preprocess"))
        except CapgenError as e:
            raise ExportError(f"{d / fmt.MODEL}: encoder {e}") from None
        self.defaults = self._decoding(d / fmt.DECODING)
        self.ids = TokenIds.from_vocab(self.vocab)
        self.max_pixels = max_pixels
        threads = threads or os.cpu_count() or 1
        self.encoder = open_session(d / fmt.ENCODER, threads)
        self.graphs = DecoderGraphs(d / fmt.INIT, d / fmt.STEP, self.memory_keys, self.state_keys, decoder_threads)
        self.step = ArrayStep(self.graphs.step, len(self.vocab), self.shared_memory)
        self._check_graphs(encoder)
        self.tagger, self.guide = self._tags(encoder.get("dim")) if fmt.has_tags(d) else (None, None)
        self.corpus = CorpusCaptions(self.tagger)

    # ---- loading, with checks that name the file ---------------------------------------------------
    @staticmethod
    def _vocab(path: Path) -> Vocabulary:
        try:
            return Vocabulary.from_dict(fmt.read_json(path, "a vocabulary"))
        except CapgenError as e:
            raise ExportError(f"{path}: {e}") from None

    @staticmethod
    def _decoding(path: Path) -> dict:
        saved = fmt.read_json(path, "the decoding settings")
        known = {f.name for f in fields(DecodeConfig)}
        if not isinstance(saved, dict) or set(saved) - known:
            raise ExportError(
                f"{path}: expected an object of DecodeConfig fields, got "
                f"{sorted(set(saved) - known) if isinstance(saved, dict) else type(saved).__name__}"
            )
        try:
            DecodeConfig(**saved)
        except (CapgenError, TypeError) as e:
            raise ExportError(f"{path}: {e}") from None
        return saved

    def _tags(self, dim) -> tuple[Tagger, Guide]:
        d = self.folder
        info = fmt.read_json(d / fmt.TAG_WORDS, "the tag words")
        labels = fmt.field(info, "labels", str, d / fmt.TAG_WORDS)
        class_words = fmt.field(info, "class_words", list, d / fmt.TAG_WORDS)
        if not all(isinstance(w, str) for w in class_words):
            raise ExportError(f"{d / fmt.TAG_WORDS}: field 'class_words' must be a list of words")
        C = len(class_words)
        # The words first: they give the shapes the head's archive must declare before it is read.
        head = fmt.read_npz(d / fmt.TAG_HEAD, {"weight": ((C, dim), "float32"), "bias": ((C,), "float32")})
        weight, bias = head["weight"], head["bias"]
        words = WordMap(tuple(class_words), tuple(dict.fromkeys(w for w in class_words if w)), str(d / fmt.TAG_WORDS))
        try:
            guide = Guide.from_dict(
                fmt.read_json(d / fmt.GUIDE, "the guidance plans"), len(self.vocab), str(d / fmt.GUIDE)
            )
            return Tagger(LinearHead(weight, bias, labels), words), guide
        except CapgenError as e:
            raise ExportError(str(e)) from None

    def _check_graphs(self, encoder: dict) -> None:
        d = self.folder
        step = self.graphs.step_session
        meta = step.get_modelmeta().custom_metadata_map
        if meta.get(fmt.VOCAB_HASH_KEY) != fmt.sha256_file(d / fmt.VOCAB):
            raise ExportError(
                f"{d / fmt.VOCAB}: not the vocabulary {fmt.STEP} was exported with "
                f"({len(self.vocab)} words); export again"
            )
        V = step.get_outputs()[0].shape[-1]
        if V != len(self.vocab):
            raise ExportError(f"{d / fmt.VOCAB}: {len(self.vocab)} words, but {fmt.STEP} predicts {V}")
        # The exporter drops inputs a graph never reads (show_tell's step ignores its memory).
        names = self.graphs.step_inputs
        wanted = {"tokens"} | {f"state.{k}" for k in self.state_keys} | {f"memory.{k}" for k in self.memory_keys}
        if "tokens" not in names or not names <= wanted:
            raise ExportError(f"{d / fmt.STEP}: its inputs do not match {fmt.MODEL} (another model's graph?)")
        outs = {o.name: o.shape for o in self.encoder.get_outputs()}
        x = self.encoder.get_inputs()[0].shape
        grid = encoder.get("grid") or [0, 0]
        # The exporter leaves some output dims symbolic; compare the ones it fixed.
        expected = {
            "x": [3, self.preprocess.size, self.preprocess.size],
            "grid": [grid[0] * grid[1], encoder.get("dim")],
        }
        got = {"x": list(x[1:]), "grid": list(outs.get("grid", [None] * 3)[1:])}
        if set(outs) != {"pooled", "grid"} or any(
            isinstance(g, int) and g != e for k in expected for g, e in zip(got[k], expected[k])
        ):
            raise ExportError(
                f"{d / fmt.ENCODER}: not the encoder {fmt.MODEL} describes "
                f"({encoder.get('name')}, input {expected['x']}, dim {encoder.get('dim')}, grid {grid})"
            )
        if not set(self.graphs.init_inputs) <= {"pooled", "grid"}:
            raise ExportError(f"{d / fmt.INIT}: expected inputs pooled and grid, got {sorted(self.graphs.init_inputs)}")
        # Every memory and state key model.json names must come out of the graphs (an extra one
        # failed at the first photo with KeyError).
        made = {f"memory.{k}" for k in self.memory_keys} | {f"state.{k}" for k in self.state_keys}
        if set(self.graphs.init_outputs) != made:
            raise ExportError(f"{d / fmt.INIT}: its outputs do not match the memory and state {fmt.MODEL} names")
        if {o.name for o in step.get_outputs()} != {"logp"} | {f"new_state.{k}" for k in self.state_keys}:
            raise ExportError(f"{d / fmt.STEP}: its outputs do not match the state {fmt.MODEL} names")

    # ---- the pipeline ------------------------------------------------------------------------------
    def decode_config(self, **options) -> DecodeConfig:
        """The export's decoding settings updated by `options` (DecodeConfig fields)."""
        if options.get("return_attention"):
            raise ExportError("the runtime returns captions only; attention maps need capgen caption --attention")
        merged = {**self.defaults, "return_attention": False, **options}
        if "method" not in options and ("beam_size" in options or "n_best" in options):
            merged["method"] = None  # picked again from beam_size / n_best, as DecodeConfig does
        cfg = DecodeConfig(**merged)
        if self.max_len_limit is not None and cfg.length_limit > self.max_len_limit:
            which = "max_words" if cfg.max_words else "max_len"
            raise ExportError(
                f"{which} {cfg.length_limit}: this {self.architecture} model has learned positions for "
                f"at most {self.max_len_limit} words"
            )
        return cfg

    def encode(self, images: Sequence[ImageSource]) -> tuple[np.ndarray, np.ndarray]:
        """Images -> pooled (B, D), grid (B, N, D) float32."""
        return self.encode_loaded([load_image(i, max_pixels=self.max_pixels) for i in images])

    def encode_loaded(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Loaded RGB images (capgen.images.load_image) -> pooled (B, D), grid (B, N, D) float32."""
        x = np.stack([self.preprocess.array(img) for img in images])
        pooled, grid = self.encoder.run(["pooled", "grid"], {"x": x})
        return pooled, grid

    def guidance(
        self, pooled: np.ndarray, config: DecodeConfig, guide: GuideConfig | float | None = GuideConfig()
    ) -> list[Guidance | None]:
        """Per image, the confident tag its caption must contain, or None (as Captioner.guidance)."""
        return plan_images(self.guide, self.tagger, pooled, guide, config.method)

    def decode(
        self,
        pooled: np.ndarray,
        grid: np.ndarray,
        config: DecodeConfig,
        guidance: Sequence[Guidance | None] = (),
        references=None,
    ) -> list[list[Hypothesis]]:
        """Features -> per image, hypotheses best first (the one search, capgen.decoding.search,
        which says what `references` do)."""
        memory, state = self.graphs.start(pooled, grid)
        include = [None if g is None else g.include for g in guidance] if guidance else None
        return search(self.step, memory, state, self.ids, config, include, references=references)

    def caption(
        self,
        images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        guide: GuideConfig | float | None = GuideConfig(),
        **options,
    ) -> CaptionResult | list[CaptionResult]:
        """Caption one image (path, bytes or PIL image) or a list; options are DecodeConfig fields.
        guide: tag guidance as in Captioner.caption (on by default when the export has a tagger;
        None turns it off)."""
        if batch_size < 1:
            raise ExportError(f"batch_size must be >= 1, got {batch_size}")
        config = self.decode_config(**options)
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results = []
        for i in range(0, len(items), batch_size):
            pooled, grid = self.encode(items[i : i + batch_size])
            guidance = self.guidance(pooled, config, guide)
            wide, references = self.corpus.search(pooled, config, guide, self.vocab.decode, guidance)
            hyps = self.decode(pooled, grid, wide, guidance, references)
            batch = [self._result(h, g) for h, g in zip(hyps, guidance)]
            self.corpus.apply(batch, pooled, config, guide, self.scorer(pooled, grid))
            results.extend(batch)
        return results[0] if single else results

    def scorer(self, pooled: np.ndarray, grid: np.ndarray):
        """As Captioner.scorer: the scene scorer where it fits, else the exported decoder."""

        def own(images: list[int], captions, word_probs) -> list:  # reads no tags
            memory, state = self.graphs.start(pooled[images], grid[images])
            ids = [[self.vocab.encode(c, add_special=False) for c in caps] for caps in captions]
            return caption_scores(self.step, memory, state, self.ids, ids)

        return scene_scorer.preferred(self.encoder_spec, self.tagger, own, pooled, grid)

    def _result(self, hyps: list[Hypothesis], guided: Guidance | None) -> CaptionResult:
        return from_hypotheses(hyps, self.vocab.decode, guided)
