"""A captioning model that also owns the last blocks of its image encoder (fine-tuned with it).

It reads the activation that enters those blocks (a feature cache extracted with `--split-at N`),
finishes the encoder's forward with the blocks (BatchNorm frozen, eval mode), and hands the
resulting pooled/grid features to an ordinary decoder. It has the same one-step interface as every
CaptionModel, so decoding, validation, self-critical training and `capgen evaluate` need no
special case. For photos, the Captioner instead loads the blocks back into the full encoder (and
its ONNX export) and decodes with `decoder` alone.
"""

from __future__ import annotations

from torch import Tensor, nn

from capgen.encoders import pool_grid
from capgen.models.base import CaptionModel, ModelError, State


class FinetunedModel(CaptionModel):
    """top: block input (B, C, h, w) -> encoder grid map (B, D, H, W) (e.g. encoders' LiteTop);
    decoder: a CaptionModel over D-dim features of H*W regions; split_at: how many blocks `top` has."""

    name = "finetuned"

    def __init__(self, top: nn.Module, decoder: CaptionModel, split_at: int, input_dim: int, input_hw: tuple[int, int]):
        super().__init__(decoder.config, decoder.vocab_size, input_dim, input_hw[0] * input_hw[1])
        self.top, self.decoder = top, decoder
        self.split_at, self.input_hw = int(split_at), (int(input_hw[0]), int(input_hw[1]))
        self.supports_attention = decoder.supports_attention

    def encoder_features(self, pooled: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
        """Block input as a cache stores it (its pooled mean is unused; grid (B, h*w, C)) -> the
        encoder's pooled (B, D) and grid (B, H*W, D) after the fine-tuned blocks."""
        self.check_features(pooled, grid)
        h, w = self.input_hw
        if grid.shape[1] != h * w:
            raise ModelError(
                f"fine-tuned model expects the block input on a {h}x{w} grid, got {grid.shape[1]} "
                f"regions; features from another encoder?"
            )
        x = grid.transpose(1, 2).reshape(grid.shape[0], grid.shape[2], h, w)  # (B, C, h, w)
        return pool_grid(self.top(x))  # (B, D), (B, H*W, D)

    def forward(
        self, pooled: Tensor, grid: Tensor, captions: Tensor, image_index: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        return self.decoder(*self.encoder_features(pooled, grid), captions, image_index)

    def init_memory(self, pooled: Tensor, grid: Tensor) -> State:
        return self.decoder.init_memory(*self.encoder_features(pooled, grid))

    def init_state(self, memory: State) -> State:
        return self.decoder.init_state(memory)

    def step(self, tokens: Tensor, state: State, memory: State) -> tuple[Tensor, State, Tensor | None]:
        return self.decoder.step(tokens, state, memory)

    def train(self, mode: bool = True) -> "FinetunedModel":
        super().train(mode)
        self.top.eval()  # BatchNorm frozen: its running statistics stay ImageNet's
        return self

    def freeze_top(self) -> None:
        """Train the decoder only (e.g. self-critical training after fine-tuning)."""
        self.top.requires_grad_(False)


def decoder_of(model: CaptionModel) -> CaptionModel:
    """The ordinary caption model inside (itself when not fine-tuned)."""
    return model.decoder if isinstance(model, FinetunedModel) else model


def attach_top(decoder: CaptionModel, encoder, split_at: int) -> tuple[FinetunedModel, dict]:
    """`decoder` behind the last `split_at` blocks of `encoder` (an ImageEncoder, or a registered name
    to build with its pretrained weights), and the spec of the block input the result takes (what
    its feature cache and checkpoint record). The blocks are shared with `encoder`, not copied.

    Only registered encoder names are built: a name may come from a file (checkpoint, cache).
    """
    from capgen.encoders import create_encoder

    full = create_encoder(encoder) if isinstance(encoder, str) else encoder
    stem, top = full.split(split_at)
    regions = full.grid_hw[0] * full.grid_hw[1]
    if (decoder.feature_dim, decoder.num_regions) != (full.dim, regions):
        raise ModelError(
            f"{decoder.name}: takes {decoder.feature_dim}-dim features of {decoder.num_regions} "
            f"regions, but {full.name} gives {full.dim} x {regions}"
        )
    return FinetunedModel(top, decoder, split_at, stem.dim, stem.grid_hw), stem.spec()
