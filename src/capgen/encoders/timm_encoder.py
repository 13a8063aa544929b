"""Any timm model as an encoder ("timm:MODEL"): optional extra `capgen[timm]`, needs network for weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from capgen.encoders.base import GridEncoder, ImageEncoder
from capgen.errors import EncoderError
from capgen.preprocess import Preprocess

_OFFLINE_HINT = "use the offline encoder 'efficientnet-lite2' instead"


class _TimmFeatures(nn.Module):
    """timm `forward_features` as a grid map (B, C, H, W); ViT tokens are reshaped to their grid."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_features(x)
        if out.dim() == 3:  # (B, prefix + H*W, C) from transformers
            tokens = out[:, self.num_prefix_tokens :]  # (B, H*W, C)
            side = math.isqrt(tokens.shape[1])
            if side * side != tokens.shape[1]:
                raise EncoderError(f"timm model: {tokens.shape[1]} tokens do not form a square grid")
            out = tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)  # (B, C, H, W)
        return out


def create_timm_encoder(model_name: str) -> ImageEncoder:
    """Pretrained timm model -> GridEncoder with timm's own input size and normalisation."""
    try:
        import timm
    except ImportError:
        raise EncoderError(
            f"encoder timm:{model_name}: timm is not installed; run `pip install 'capgen[timm]'` or {_OFFLINE_HINT}"
        ) from None
    if not timm.is_model(model_name):
        raise EncoderError(f"encoder timm:{model_name}: unknown timm model; see timm.list_models()")
    try:
        model = timm.create_model(model_name, pretrained=True)
    except Exception as e:  # hub/HTTP/OS errors differ by timm version; all mean "could not fetch weights"
        raise EncoderError(
            f"encoder timm:{model_name}: could not download pretrained weights, which needs network "
            f"access ({type(e).__name__}); {_OFFLINE_HINT}"
        ) from None
    cfg = timm.data.resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bicubic")
    preprocess = Preprocess(
        size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resample=interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic",
    )
    features = _TimmFeatures(model)
    features.eval()
    return GridEncoder(features, preprocess, name=f"timm:{model_name}")
