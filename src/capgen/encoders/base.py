"""The encoder interface: a batch of preprocessed images -> (pooled, grid) features."""

from __future__ import annotations

import torch
from torch import nn

from capgen.errors import EncoderError
from capgen.preprocess import Preprocess
from capgen.tags.head import LinearHead


class ImageEncoder(nn.Module):
    """Maps a batch of preprocessed images to (pooled, grid).

    Subclasses implement `forward_grid` (the feature map); pooling and flattening live here so
    every encoder agrees on them.
    """

    name: str
    preprocess: Preprocess
    dim: int
    grid_hw: tuple[int, int]
    # Whether `make_runner(backend="auto")` tries ONNX Runtime; only encoders checked to export set it.
    onnx_exportable: bool = False

    def __init__(self, name: str, preprocess: Preprocess, dim: int, grid_hw: tuple[int, int]):
        super().__init__()
        self.name = name
        self.preprocess = preprocess
        self.dim = int(dim)
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> feature map (B, dim, H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> pooled (B, dim) = spatial mean of grid, grid (B, H*W, dim)."""
        s = self.preprocess.size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise EncoderError(f"encoder {self.name}: expected input (B, 3, {s}, {s}), got {tuple(x.shape)}")
        return pool_grid(self.forward_grid(x))

    def spec(self) -> dict:
        """What feature caches and checkpoints store to rebuild and check the encoder."""
        return {
            "name": self.name,
            "preprocess": self.preprocess.to_dict(),
            "dim": self.dim,
            "grid": list(self.grid_hw),
        }

    def classifier(self) -> LinearHead | None:
        """The pretrained classification head over the pooled vector, or None when there is none.

        Object tags (capgen.tags) need it; encoders without one still caption, without tags.
        """
        return None

    def split(self, n: int) -> tuple["ImageEncoder", nn.Module]:
        """(stem, top) for fine-tuning the last `n` blocks from cached activations.

        stem: an ImageEncoder whose grid is the activation entering the last `n` blocks (what a
          `--split-at n` feature cache holds); its spec() adds "split_at": n.
        top: maps that activation (B, C, h, w) to this encoder's feature map (B, dim, H, W), always
          in eval mode (BatchNorm frozen). Both share this encoder's modules: loading weights into
          `top` changes this encoder, which is how a fine-tuned checkpoint reaches ONNX export.
        """
        raise EncoderError(
            f"encoder {self.name} cannot be split into blocks; fine-tuning the top of the "
            f"encoder needs an EfficientNet-Lite encoder"
        )

    def features_module(self) -> nn.Module:
        """A module mapping x (B, 3, S, S) -> grid map (B, dim, H, W), e.g. for export."""
        return _GridMap(self)


def pool_grid(fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature map (B, C, H, W) -> pooled (B, C), grid (B, H*W, C)."""
    grid = fmap.flatten(2).transpose(1, 2)  # (B, H*W, C)
    return grid.mean(dim=1), grid  # (B, C), (B, H*W, C)


class _GridMap(nn.Module):
    def __init__(self, encoder: ImageEncoder):
        super().__init__()
        self.encoder = encoder
        # A fresh module starts in training mode; mirror the encoder so export/eval keep its mode.
        self.train(encoder.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_grid(x)  # (B, C, H, W)


class GridEncoder(ImageEncoder):
    """Wraps a user's own module that maps images (B, 3, S, S) to a grid (B, C, H, W); pooled = spatial mean.

    head: optionally the backbone's classifier over that pooled vector (a LinearHead, or an
      nn.Linear with `labels` naming its classes), which gives object tags; without it, no tags.
    """

    def __init__(
        self,
        module: nn.Module,
        preprocess: Preprocess,
        name: str,
        dim: int | None = None,
        grid_hw: tuple[int, int] | None = None,
        head: LinearHead | nn.Linear | None = None,
        labels: str = "imagenet-1k",
    ):
        if dim is None or grid_hw is None:
            shape = _probe_output_shape(module, preprocess.size, name)
            dim = shape[1] if dim is None else dim
            grid_hw = (shape[2], shape[3]) if grid_hw is None else grid_hw
        super().__init__(name, preprocess, dim, grid_hw)
        self.module = module
        self.head = linear_head(head, labels) if isinstance(head, nn.Linear) else head
        if self.head is not None and self.head.weight.shape[1] != self.dim:
            raise EncoderError(
                f"encoder {name}: head takes {self.head.weight.shape[1]} features, the grid has {self.dim}"
            )

    def classifier(self) -> LinearHead | None:
        return self.head

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)  # (B, C, H, W)


def _probe_output_shape(module: nn.Module, size: int, name: str) -> tuple[int, ...]:
    """Run one zero image through `module` to learn its output shape."""
    was_training = module.training
    module.eval()  # in train mode the probe would update BatchNorm running statistics
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, size, size))
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EncoderError(f"encoder {name}: module must return a grid (B, C, H, W), got {got}")
    return tuple(out.shape)


def linear_head(fc: nn.Linear, labels: str) -> LinearHead:
    """A torch Linear layer as a LinearHead (numpy copies of its weights)."""
    bias = fc.bias if fc.bias is not None else torch.zeros(fc.out_features)
    return LinearHead(
        fc.weight.detach().cpu().float().numpy().copy(), bias.detach().cpu().float().numpy().copy(), labels
    )
