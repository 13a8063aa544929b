"""Image encoders: pretrained CNNs that turn images into pooled and grid features.

enc = create_encoder("efficientnet-lite2")
x = torch.stack([enc.preprocess(load_image(p)) for p in paths])  # (B, 3, S, S)
pooled, grid = enc(x)                                             # (B, dim), (B, H*W, dim)
logits = enc.classifier().logits(pooled.numpy())                  # (B, 1000) ImageNet; None: no head
runner = make_runner(enc)                                          # fast numpy inference (ONNX)
"""

from capgen.encoders.base import GridEncoder, ImageEncoder, LinearHead, pool_grid
from capgen.encoders.registry import create_encoder, list_encoders, register_encoder
from capgen.preprocess import Preprocess

# Imported for its @register_encoder side effect; keep after the registry import.
from capgen.encoders import efficientnet  # noqa: E402,F401  isort: skip
from capgen.encoders.efficientnet import EfficientNetLite  # noqa: E402
from capgen.encoders.flops import count_flops  # noqa: E402
from capgen.encoders.onnx import EncoderRunner, make_runner  # noqa: E402

__all__ = [
    "EfficientNetLite",
    "EncoderRunner",
    "GridEncoder",
    "ImageEncoder",
    "LinearHead",
    "Preprocess",
    "count_flops",
    "create_encoder",
    "list_encoders",
    "make_runner",
    "pool_grid",
    "register_encoder",
]
