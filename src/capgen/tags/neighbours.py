"""Captions of the nearest training photos: the evidence of nearest-neighbour consensus reranking.

Devlin et al. 2015 ("Exploring nearest neighbor approaches for image captioning") and Mao et al.
2015 (m-RNN) rerank a decoder's candidates by their agreement with the human captions of the
training images that look most like the photo. The index (assets/neighbour_captions.json,
scripts/build_neighbour_index.py) holds, for the decoder's training photos, their pooled encoder
features projected onto their top principal directions (PROJECTED_DIM, unit length, float16), and
their captions. For a photo, the K nearest by cosine give K x 5 references, each weighted
exp(SHARPNESS x cosine); the beam's candidates are then ordered by their tf-idf n-gram agreement
with them (capgen.decoding.consensus; capgen.data.ngram_table, document frequencies over the
index's photos).

A photo unlike every training photo (mean cosine of its K nearest below GATE: a kitchen in a
Flickr8k index) gets no references and keeps the model's order: its neighbours would be other
scenes. Torch-free: the Captioner and the runtime rerank alike (through tags.corpus_captions).
The features mean nothing for another encoder: the index records the classifier head's fingerprint
(LinearHead.sha256) of the encoder it was built with, and is used only with that encoder.
"""

from __future__ import annotations

import base64
import math
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from capgen.data.ngram_table import NgramTable, ranges
from capgen.errors import TagsError
from capgen.io import read_json
from capgen.tags.words import caption_groups

INDEX_FILE = "assets/neighbour_captions.json"
FORMAT = "capgen-neighbour-captions/1"
# Chosen on Flickr8k val and coco_dev (BENCHMARKS.md, "Captions of the nearest training photos"):
# candidates drawn (the beam widened to this; 5 did as well as 10 for half the decoding time),
# neighbours per photo, how sharply the nearer ones count, and the gate.
CANDIDATES = 5
NEIGHBOURS = 30
SHARPNESS = 10.0
GATE = 0.42
PROJECTED_DIM = 128
# A guided photo is reranked only if this share of its references' weight names the tag. Chosen on
# Flickr8k val and coco_dev (BENCHMARKS.md): 0 (all reranked) 52.9 / 53.9 CIDEr but scikit-image's
# cat becomes "a man is sitting on a cat"; 0.1 52.4 / 53.7; 0.2 52.3 / 53.6; no guided photo 51.6 / 53.6.
TAG_SHARE = 0.1


def encode_array(a: np.ndarray) -> str:
    """A float16 array as base64 text (the index is JSON: data, never code)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f2").tobytes()).decode("ascii")


def _decode_array(text, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if not isinstance(text, str):
        raise TagsError(f"{path}: '{name}' must be base64 text of float16 {shape}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise TagsError(f"{path}: '{name}' is not base64 text") from None
    if len(raw) != 2 * math.prod(shape):
        raise TagsError(f"{path}: '{name}' must hold float16 {shape} ({2 * math.prod(shape)} bytes), got {len(raw)}")
    a = np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(shape)
    if not np.all(np.isfinite(a)):
        raise TagsError(f"{path}: '{name}' holds a non-finite number")
    return a


class NeighbourCaptions:
    """The training photos' projected features and captions, for one encoder."""

    def __init__(self, mean: np.ndarray, projection: np.ndarray, features: np.ndarray, captions, tagger_head: str):
        self.mean, self.projection, self.tagger_head = mean, projection, tagger_head
        self.features = features  # (N, d) unit rows
        self.captions = [[tuple(c.split()) for c in caps] for caps in captions]
        flat = [c for caps in self.captions for c in caps]
        self.table = NgramTable(flat, [i for i, caps in enumerate(self.captions) for _ in caps])  # df per photo
        self._first = np.cumsum([0] + [len(caps) for caps in self.captions])  # photo -> its first caption row
        self._words = [frozenset(c) for c in flat]  # per caption row: the words it names

    @classmethod
    def load(cls, path: str | Path | None = None) -> "NeighbourCaptions":
        path = Path(str(resources.files("capgen").joinpath(INDEX_FILE))) if path is None else Path(path)
        data = read_json(path, "neighbour captions", TagsError)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TagsError(f"{path}: not capgen neighbour captions ({FORMAT})")
        captions = caption_groups(data, "captions", path, " (one per photo)")
        dim, tagger_head = data.get("dim"), data.get("tagger_head")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 65536:
            raise TagsError(f"{path}: 'dim' must be the encoder's feature size, a whole number in [1, 65536]")
        if not isinstance(tagger_head, str):
            raise TagsError(f"{path}: 'tagger_head' must be the encoder's classifier head fingerprint (a string)")
        d = PROJECTED_DIM if dim >= PROJECTED_DIM else dim
        d = data.get("projected_dim", d)
        if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= dim:
            raise TagsError(f"{path}: 'projected_dim' must be a whole number in [1, dim = {dim}]")
        mean = _decode_array(data.get("mean"), (dim,), "mean", path)
        projection = _decode_array(data.get("projection"), (dim, d), "projection", path)
        features = _decode_array(data.get("features"), (len(captions), d), "features", path)
        return cls(mean, projection, features, captions, tagger_head)

    def fits(self, tagger_head) -> bool:
        """Whether the index was built with the encoder whose classifier head is `tagger_head`."""
        return tagger_head is not None and tagger_head.sha256 == self.tagger_head

    def project(self, pooled: np.ndarray) -> np.ndarray:
        """(B, dim) pooled features -> (B, d) unit rows, as the index's features were made."""
        x = (np.asarray(pooled, dtype=np.float32) - self.mean) @ self.projection
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    def references(
        self,
        pooled: np.ndarray,
        words_of: Callable[[Sequence[int]], Sequence[str]],
        required: Sequence[Sequence[int] | None] | None = None,
    ) -> list:
        """Per photo, a function from candidates (token id lists; words_of makes them words) to their
        weighted agreement with the captions of its nearest training photos, or None when the photo
        is unlike them all (below GATE): what capgen.decoding.consensus.rerank takes.

        required: per photo (None: for none), the word ids of which its caption must name one (a
        confident tag), or None. Such a photo is reranked only if at least TAG_SHARE of its references' weight names
        one of them: otherwise the neighbours (a Flickr8k index has almost no cats) would choose the
        sentence around the tag, "a man is sitting on a cat" over "a cat is sitting on a ramp"."""
        sims, nearest = self._nearest(pooled)
        out = []
        for row, near, tag_ids in zip(sims, nearest, [None] * len(sims) if required is None else required, strict=True):
            if float(row[near].mean()) < GATE:
                out.append(None)
                continue
            counts = self._first[near + 1] - self._first[near]
            rows = ranges(self._first[near], counts)
            weights = np.repeat(np.exp(SHARPNESS * row[near].astype(np.float64)), counts)
            if tag_ids and self._share_naming(set(words_of(tag_ids)), rows, weights) < TAG_SHARE:
                out.append(None)
                continue
            out.append(partial(self._agreement, words_of, rows, weights))
        return out

    def familiarity(self, pooled: np.ndarray) -> np.ndarray:
        """(B, dim) -> (B,) the mean cosine of each photo's NEIGHBOURS nearest training photos: how
        much it looks like the photos the decoder (and the person head) learned from."""
        sims, nearest = self._nearest(pooled)
        return np.take_along_axis(sims, nearest, axis=1).mean(axis=1)

    def _nearest(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, N) cosines to the training photos and (B, K) the K nearest's indices, nearest first
        (ties by index, so stable)."""
        sims = self.project(pooled) @ self.features.T
        k = min(NEIGHBOURS, sims.shape[1])
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.lexsort((near, -np.take_along_axis(sims, near, axis=1)), axis=-1)
        return sims, np.take_along_axis(near, order, axis=1)

    def _share_naming(self, words: set[str], rows: np.ndarray, weights: np.ndarray) -> float:
        names = np.array([not words.isdisjoint(self._words[r]) for r in rows])
        return float(weights[names].sum() / weights.sum())

    def _agreement(self, words_of, rows, weights, candidates) -> list[float]:
        return self.table.agreement([tuple(words_of(c)) for c in candidates], rows, weights)
