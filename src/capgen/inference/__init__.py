"""Caption your own photos with a trained checkpoint (the inference library; no training code).

from capgen import Captioner
cap = Captioner.from_pretrained("runs/transformer/best.pt")
res = cap.caption("photo.jpg", beam_size=3, return_attention=True)
print(res.caption, res.score)             # res.attention: (words, H, W)
save_attention_figure(load_image("photo.jpg"), res, "photo-attention.png")
"""

from capgen.inference.captioner import Captioner, bundled_model_path, check_encoder_spec
from capgen.inference.figures import save_annotated, save_attention_figure
from capgen.inference.files import UniqueNames, caption_paths, expand_paths
from capgen.result import CaptionResult

__all__ = [
    "CaptionResult",
    "Captioner",
    "UniqueNames",
    "bundled_model_path",
    "caption_paths",
    "check_encoder_spec",
    "expand_paths",
    "save_annotated",
    "save_attention_figure",
]
