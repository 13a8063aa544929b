"""Datasets: readers for the common caption formats, text normalisation, vocabulary, prepared folders."""

from capgen.data.prepared import ImageRecord, PreparedDataset, prepare_dataset
from capgen.data.text import normalize_caption
from capgen.data.vocab import Vocabulary

__all__ = ["ImageRecord", "PreparedDataset", "Vocabulary", "normalize_caption", "prepare_dataset"]
