"""Typed run configuration. YAML files and `--set key=value` only supply values; unknown keys fail.

A run config has three parts:
  model: NAME            registered model name
  model_config: {...}    that model's dataclass fields (checked by the model registry)
  train: {...}           TrainConfig fields
`--set` keys: `model.KEY=V` for the model config, `train.KEY=V` (or a bare `KEY=V`) for training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from capgen.config import ConfigError, config_from_dict, config_to_dict
from capgen.decoding.config import DecodeConfig, DecodeError
from capgen.errors import CapgenError

OBJECTIVES = ("xe", "scst")
# A run's config.yaml (and a tuner's best_config.yaml) says which format wrote it. Files without the
# key (capgen 0.1 runs, configs people write) read as this version; any other version is refused.
FORMAT_KEY, FORMAT_VERSION = "capgen_run", 1


@dataclass
class TrainConfig:
    objective: str = "xe"  # "xe" (cross-entropy) | "scst" (self-critical CIDEr-D; needs init)
    init: str | None = None  # start from this checkpoint's weights and architecture (a best.pt)
    scst_samples: int = 5  # sampled captions per image; each one's baseline is the others' mean
    scst_max_len: int = 20  # words per sampled caption
    epochs: int = 20
    batch_size: int = 16  # images per batch, each with all its captions (~80 captions)
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 300  # linear warmup, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    max_caption_len: int = 22  # words kept per training caption (longer ones are cut, without <end>)
    seed: int = 0
    patience: int = 5  # epochs without a better val CIDEr before stopping (0 = never)
    # Per-epoch validation decodes with DecodeConfig(beam_size=val_beam_size, max_len=val_max_len),
    # every other setting at DecodeConfig's defaults; beam 1 (greedy) keeps validation fast.
    val_beam_size: int = 1
    val_max_len: int = DecodeConfig.max_len
    val_images: int = 0  # 0 = the whole val split
    threads: int = 0  # torch threads (0 = torch's default)
    save_every_steps: int = 0  # also checkpoint mid-epoch (0 = at epoch ends and on Ctrl-C)
    finetune_blocks: int = 0  # also train the encoder's last N blocks (needs capgen extract --split-at N)
    encoder_lr: float = 5e-5  # peak lr of those blocks (the decoder's is lr)
    feature_memory_mb: int = 2048  # per split: larger float16 features stream from disk (0 = always stream)
    # A tag-reading model (model.tag_tokens > 0) learns from caption text too (training/text_batches.py):
    text_batch: int = 0  # text-only photos (prepare --text) added to each batch (0 = none)
    image_dropout: float = 0.0  # share of paired images captioned from their tags alone
    tag_dropout: float = 0.0  # share of paired images whose tags are hidden
    warm_start: str | None = None  # copy the weights this model shares with a checkpoint (rows by word)

    # ---- range checks (types and finiteness are config_from_dict's) --------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the first setting out of range: a run that cannot train (epochs=0,
        batch_size=-3) must fail before it starts, not claim success with a checkpoint never written."""
        ranges = {  # key: (test, expected)
            "epochs": (lambda v: v >= 1, "an integer >= 1"),
            "batch_size": (lambda v: v >= 1, "an integer >= 1"),
            "lr": (lambda v: v > 0, "a number > 0"),
            "weight_decay": (lambda v: v >= 0, "a number >= 0"),
            "warmup_steps": (lambda v: v >= 0, "an integer >= 0"),
            "min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            "grad_clip": (lambda v: v >= 0, "a number >= 0 (0 = off)"),
            "label_smoothing": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
            "max_caption_len": (lambda v: v >= 1, "an integer >= 1"),
            "patience": (lambda v: v >= 0, "an integer >= 0 (0 = never stop early)"),
            "val_images": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
            "threads": (lambda v: v >= 0, "an integer >= 0 (0 = torch's default)"),
            "save_every_steps": (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
            "scst_samples": (lambda v: v >= 2, "an integer >= 2 (the baseline is the other samples' mean)"),
            "scst_max_len": (lambda v: v >= 1, "an integer >= 1"),
            "finetune_blocks": (lambda v: v >= 0, "an integer >= 0 (0 = encoder frozen)"),
            "encoder_lr": (lambda v: v > 0, "a number > 0"),
            "text_batch": (lambda v: v >= 0, "an integer >= 0 (0 = no text-only photos)"),
            "image_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
            "tag_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        }
        for key, (ok, expected) in ranges.items():
            value = getattr(self, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
                raise ConfigError(f"train config {key}: expected {expected}, got {value!r}")
        self.val_decode_config()
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"train config objective: expected one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.objective == "scst" and (self.text_batch or self.image_dropout or self.tag_dropout):
            raise ConfigError(
                "objective scst rewards captions of real images: set text_batch, image_dropout and tag_dropout to 0"
            )
        if self.init and self.warm_start:
            raise ConfigError("init and warm_start both name a starting checkpoint: give one")
        if self.objective == "scst" and not self.init:
            raise ConfigError(
                "objective scst starts from a trained model: pass --init RUN/best.pt (a cross-entropy checkpoint)"
            )

    def val_decode_config(self) -> DecodeConfig:
        """The validation's decoding settings; DecodeConfig's own checks (MAX_BEAM, max_len range)."""
        try:
            return DecodeConfig(beam_size=self.val_beam_size, max_len=self.val_max_len)
        except DecodeError as e:
            raise ConfigError(f"train config val_beam_size / val_max_len: {str(e).removeprefix('decode: ')}") from None


@dataclass
class RunConfig:
    model: str = "show_attend_tell"
    model_config: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": self.model, "model_config": dict(self.model_config), "train": asdict(self.train)}

    def to_file_dict(self) -> dict:
        """What config.yaml holds: the format version, then to_dict()."""
        return config_file_dict(self.to_dict())


def config_file_dict(config: dict) -> dict:
    """A run config's dict (RunConfig.to_dict()) as a config file holds it: its format version first."""
    return {FORMAT_KEY: FORMAT_VERSION, **config}


def _train_config(values: dict, where: str) -> TrainConfig:
    try:
        return config_from_dict(TrainConfig, values)
    except CapgenError as e:
        raise ConfigError(f"{where}: {e}") from None


def _parse_value(text: str):
    """`--set` values are YAML scalars: 3, 0.5, true, null, strings."""
    from capgen.io import parse_yaml

    try:
        return parse_yaml(text, "--set", "value", ConfigError)
    except ConfigError:
        return text


def load_run_config(
    path: str | Path | None = None, sets: list[str] | None = None, model: str | None = None
) -> RunConfig:
    """Defaults <- YAML file <- --model <- --set overrides, validated against the dataclasses."""
    from capgen.models import model_config_class

    data: dict = {}
    if path is not None:
        path = Path(path)
        from capgen.io import read_yaml

        data = read_yaml(path, "config", ConfigError) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with model, model_config, train")
        version = data.pop(FORMAT_KEY, FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{path}: {FORMAT_KEY} {version!r} is not a run config format this capgen reads "
                f"(it reads {FORMAT_VERSION}); upgrade capgen or start a new run"
            )
        unknown = set(data) - {"model", "model_config", "train"}
        if unknown:
            raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; expected model, model_config, train")
    where = str(path) if path else "config"
    for key, kind in (("model", str), ("model_config", dict), ("train", dict)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            what = "a model name" if kind is str else "a mapping of key: value"
            raise ConfigError(f"{where}: '{key}' must be {what}, got {data[key]!r}")
    name = model or data.get("model") or RunConfig.model
    model_cfg = dict(data.get("model_config") or {})
    train_cfg = dict(data.get("train") or {})
    train_keys = {f.name for f in fields(TrainConfig)}
    for item in sets or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected key=value")
        if key.startswith("model."):
            model_cfg[key[6:]] = _parse_value(value)
        elif key.startswith("train.") or key in train_keys:
            train_cfg[key.removeprefix("train.")] = _parse_value(value)
        else:
            raise ConfigError(
                f"--set {key}: unknown key; use model.KEY for model settings or one of {', '.join(sorted(train_keys))}"
            )
    model_cfg = config_from_dict(model_config_class(name), model_cfg)  # unknown model, keys, types raise
    return RunConfig(name, config_to_dict(model_cfg), _train_config(train_cfg, where))
