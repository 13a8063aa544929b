"""capgen: an image-captioning toolkit.

Library layout (the file list is the architecture):
  capgen.data      datasets -> prepared folder (splits, captions, vocabulary)
  capgen.images    the one image loader used everywhere
  capgen.encoders  image encoders by name (registry), preprocessing, ONNX Runtime backend
  capgen.features  the feature cache (extract once, load with checks)
  capgen.cli       the `capgen` command, a thin layer over the above
"""

__version__ = "0.1.0"
