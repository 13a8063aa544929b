"""capgen: an image-captioning toolkit.

Library layout (the file list is the architecture):
  capgen.data      datasets -> prepared folder (splits, captions, vocabulary)
  capgen.images    the one image loader used everywhere
  capgen.encoders  image encoders by name (registry), preprocessing, ONNX Runtime backend
  capgen.features  the feature cache (extract once, load with checks)
  capgen.inference caption your own photos (`Captioner`), attention figures
  capgen.tags      object tags: the encoder's classifier head -> plain caption words
  capgen.serve     the HTTP server and web page over a Captioner
  capgen.cli       the `capgen` command, a thin layer over the above
"""

__version__ = "0.10.1"

__all__ = ["Captioner", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import capgen` (and `capgen --help`) stay light: torch loads only when used.
    if name == "Captioner":
        from capgen.inference import Captioner

        return Captioner
    raise AttributeError(f"module 'capgen' has no attribute {name!r}")
