"""The scene scorer: a second decoder, trained on COCO caption text, that judges captions of similar
scenes (capgen.tags.scenes) for the photo; torch-free, so the Captioner and the runtime rerank alike.

The decoder that captions learned Flickr8k's people and dogs: asked how likely "a kitchen with a
stove and a refrigerator" is for a kitchen photo, it prefers its own sentence about a man. A decoder
that reads the encoder's object tags and was trained on COCO caption text beside the Flickr8k pairs
(configs/flickr8k_transformer_tags.yaml with COCO text only) knows how such scenes are described.
It only scores: its own captions lost to the bundled model's (BENCHMARKS.md). Used when it was
trained on features and tags of the captioner's encoder (same spec, classifier head and tag words);
otherwise the captioner's own decoder scores, as before.

DIR/ (assets/scene_scorer, written by capgen.export.scene_scorer)
  scorer.onnx   pooled, grid, word_probs (the tagger's), captions, image_index -> token_logp: whole
                captions scored in one call (capgen.models.onnx_score; version 1 held the search's
                init and step graphs, a call per word: twice the time)
  vocab.json    its vocabulary (COCO words are its own, not <unk>)
  scorer.json   format, version, encoder spec, tagger (capgen.tags.head.tagger_id), every file's
                sha256 and size; written last, so it marks the folder complete
"""

from __future__ import annotations

from functools import lru_cache, partial
from importlib import resources
from pathlib import Path

import numpy as np

from capgen.data.vocab import Vocabulary
from capgen.decoding.config import TokenIds
from capgen.decoding.score import sequence_scores
from capgen.encoder_spec import EncoderSpec
from capgen.errors import CapgenError, ExportError
from capgen.runtime import folder as fmt
from capgen.runtime.graphs import ScoreGraph
from capgen.tags.corpus_captions import Scorer

FOLDER = "assets/scene_scorer"
FORMAT, VERSION = "capgen-scene-scorer", 2
INDEX, GRAPH = "scorer.json", "scorer.onnx"
FILES = (GRAPH, fmt.VOCAB)


class SceneScorer:
    """A scene scorer folder, checked file by file against its index (ExportError naming the file)."""

    def __init__(self, folder: str | Path, threads: int = 1):
        self.folder = d = Path(folder)
        info = fmt.read_json(d / INDEX, "a capgen scene scorer index")
        path = d / INDEX
        if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
            raise ExportError(f"{path}: not a capgen scene scorer ({FORMAT} version {VERSION})")
        files = fmt.field(info, "files", dict, path)
        fmt.check_listed(d, path, files, FILES, True, "the scene scorer", "build it again")
        self.encoder_spec = fmt.field(info, "encoder", dict, path)
        self.tagger = fmt.field(info, "tagger", str, path)
        self.source = str(info.get("source", ""))[:200]
        try:
            self.vocab = Vocabulary.from_dict(fmt.read_json(d / fmt.VOCAB, "a vocabulary"))
        except CapgenError as e:
            raise ExportError(f"{d / fmt.VOCAB}: {e}") from None
        self.graph = ScoreGraph(d / GRAPH, threads)
        self.ids = TokenIds.from_vocab(self.vocab)

    def fits(self, encoder_spec: dict, tagger) -> bool:
        """Trained on this encoder's features and this tagger's words (capgen.tags.Tagger)."""
        return (
            tagger is not None
            and EncoderSpec.of(encoder_spec) == EncoderSpec.of(self.encoder_spec)
            and tagger.tagger_id(str(encoder_spec.get("name"))) == self.tagger
        )

    def scores(self, pooled: np.ndarray, grid: np.ndarray, word_probs: np.ndarray, captions) -> list[np.ndarray]:
        """Images' features and tag word probabilities, per image captions (token tuples) -> per
        image, each caption's mean log-probability per word. One call per image: the int8 graph
        quantizes its activations with one scale per call, so photos scored together would move
        each other's scores (a photo's caption changed with the photos beside it in a batch)."""
        probs = np.asarray(word_probs, dtype=np.float32)
        out = []
        for i, caps in enumerate(captions):
            image = partial(self.graph.token_logp, pooled[i : i + 1], grid[i : i + 1], probs[i : i + 1])
            out += sequence_scores(image, self.ids, [[self.vocab.encode(c, add_special=False) for c in caps]])
        return out


@lru_cache(maxsize=1)
def bundled() -> SceneScorer | None:
    """The package's scene scorer (loaded once per process, on first use), or None when absent."""
    folder = Path(str(resources.files("capgen").joinpath(FOLDER)))
    if not (folder / INDEX).is_file():
        return None
    try:
        return SceneScorer(folder)
    except ExportError as e:  # the install is damaged: "build it again" is not the user's fix
        raise ExportError(f"{e} (the scene scorer capgen ships: reinstall capgen)") from None


def preferred(encoder_spec: dict, tagger, own: Scorer, pooled: np.ndarray, grid: np.ndarray) -> Scorer:
    """The scorer of captions of similar scenes for a batch: the bundled scene scorer where it fits
    the captioner's encoder, else `own` (the captioner's decoder). Nothing loads until a photo is
    reranked."""

    def scorer(images: list[int], captions, word_probs: np.ndarray) -> list:
        scene = bundled()
        if scene is None or not scene.fits(encoder_spec, tagger):
            return own(images, captions, word_probs)
        return scene.scores(pooled[images], grid[images], word_probs, captions)

    return scorer
