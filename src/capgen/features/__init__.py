"""Feature cache: encode every image once, then train and evaluate from the cache."""

from capgen.features.cache import FeatureCache
from capgen.features.extract import ExtractResult, extract_features
from capgen.features.split import Features

__all__ = ["ExtractResult", "FeatureCache", "Features", "extract_features"]
