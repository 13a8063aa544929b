"""The one image transform per encoder: whole image -> square array, normalised.

No torch here: capgen.runtime (onnxruntime + numpy + pillow only) applies the very same transform."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from PIL import Image

from capgen.errors import EncoderError

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Preprocess:
    """Resize the WHOLE image to `size` x `size` (no crop, aspect not kept, as in our training data),
    then scale to [0, 1] and normalise per channel: ((x / 255) - mean) / std."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise EncoderError(f"preprocess size: expected a positive integer, got {self.size!r}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            try:
                value = tuple(float(v) for v in value)
            except (TypeError, ValueError):
                value = ()
            if len(value) != 3:
                raise EncoderError(f"preprocess {key}: expected 3 numbers (R, G, B), got {getattr(self, key)!r}")
            # Accept lists (e.g. from JSON) but store tuples so the dataclass stays hashable and comparable.
            object.__setattr__(self, key, value)
        if any(s == 0 for s in self.std):
            raise EncoderError(f"preprocess std: expected non-zero values, got {self.std!r}")
        if self.resample not in _RESAMPLE:
            raise EncoderError(
                f"preprocess resample: unknown filter {self.resample!r}, expected one of {sorted(_RESAMPLE)}"
            )

    def array(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 array (3, size, size)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = img.resize((self.size, self.size), resample=_RESAMPLE[self.resample])
        arr = np.asarray(img, dtype=np.float32)  # (size, size, 3) in [0, 255]
        # One fused multiply-add instead of three passes: x * (1 / (255 std)) - mean / std.
        scale = np.asarray([1.0 / (255.0 * s) for s in self.std], dtype=np.float32)
        shift = np.asarray([-m / s for m, s in zip(self.mean, self.std)], dtype=np.float32)
        arr = arr * scale + shift  # (size, size, 3)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, size, size)

    def __call__(self, img: Image.Image):
        """RGB PIL image -> float32 torch tensor (3, size, size)."""
        import torch

        return torch.from_numpy(self.array(img))

    def to_dict(self) -> dict:
        """JSON-ready dict; `from_dict` rebuilds an equal Preprocess."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        """Rebuild from `to_dict` output; unknown or missing keys raise EncoderError."""
        if not isinstance(d, dict):
            raise EncoderError(f"preprocess: expected a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EncoderError(f"preprocess: unknown keys {unknown}, expected some of {sorted(known)}")
        if "size" not in d:
            raise EncoderError("preprocess: missing key 'size'")
        return cls(**d)
