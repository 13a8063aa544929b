"""Feature cache: encode every image once, then train and evaluate from the cache."""

from capgen.features.cache import FeatureCache
from capgen.features.extract import ExtractResult, extract_features

__all__ = ["ExtractResult", "FeatureCache", "extract_features"]
