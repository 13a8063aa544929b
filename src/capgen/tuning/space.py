"""The search space: a small YAML file of run-config keys, each a range, a list of choices or a value.

    model: transformer                              # fixed, or {choices: [transformer, show_tell]}
    train.lr: {low: 1.0e-4, high: 3.0e-3, log: true}
    train.batch_size: {choices: [16, 32]}
    model_config.dropout: {low: 0.1, high: 0.5}     # a key every possible model has
    transformer.d_model: {choices: [128, 256]}      # only when that model is drawn
    train.epochs: 3                                  # fixed value

Keys are checked against the typed configs (TrainConfig, each model's config class), and every bound
and choice is coerced by the same parser as a config file, so a space that loads only draws valid
values. A trial's config is the base run config updated by the drawn and fixed values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capgen.config import ConfigError, config_from_dict, config_to_dict
from capgen.errors import CapgenError
from capgen.training.config import RunConfig, TrainConfig


@dataclass(frozen=True)
class Fixed:
    value: Any

    def draw(self, trial, name: str) -> Any:
        return self.value


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def draw(self, trial, name: str) -> Any:
        if self.integer:
            return trial.suggest_int(name, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value: Any) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    choices: tuple

    def draw(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return value in self.choices


Dim = Fixed | Range | Choice


@dataclass(frozen=True)
class Space:
    """Parsed space: `dims` maps "model", "train.KEY", "model_config.KEY" or "MODEL.KEY" to a Dim."""

    dims: dict[str, Dim]
    source: str = "space"

    @property
    def models(self) -> tuple[str, ...]:
        d = self.dims.get("model")
        return d.choices if isinstance(d, Choice) else (d.value,) if isinstance(d, Fixed) else ()

    def searched(self) -> list[str]:
        return [k for k, d in self.dims.items() if not isinstance(d, Fixed)]

    def sample(self, trial) -> dict[str, Any]:
        """Draw one point (define-by-run: a MODEL.KEY is drawn only when that model was drawn)."""
        values = {}
        if "model" in self.dims:
            values["model"] = self.dims["model"].draw(trial, "model")
        for key, dim in self.dims.items():
            scope = key.split(".", 1)[0]
            if key != "model" and (scope in ("train", "model_config") or scope == values.get("model")):
                values[key] = dim.draw(trial, key)
        return values

    def fingerprint(self) -> str:
        text = json.dumps(
            {k: dataclasses.asdict(d) | {"kind": type(d).__name__} for k, d in self.dims.items()},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def trial_config(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """`base` updated by a point of the space. A model other than the base's starts from its defaults."""
    from capgen.models import model_config_class

    model = values.get("model", base.model)
    model_cfg = dict(base.model_config) if model == base.model else {}
    train_cfg = dataclasses.asdict(base.train)
    for key, value in values.items():
        scope, _, name = key.partition(".")
        if scope == "train":
            train_cfg[name] = value
        elif scope in ("model_config", model):
            model_cfg[name] = value
    model_cfg = config_to_dict(config_from_dict(model_config_class(model), model_cfg))
    return RunConfig(model, model_cfg, config_from_dict(TrainConfig, train_cfg))


def load_space(path: str | Path, base_model: str) -> Space:
    """Read and fully check a space file; `base_model` is the model when the space does not set one."""
    path = Path(path)
    from capgen.io import read_yaml

    raw = read_yaml(path, "space file", ConfigError)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{path}: expected a mapping of config keys (train.lr, model_config.d_model, model) "
            f"to ranges, choices or values"
        )
    try:
        return parse_space(raw, base_model, str(path))
    except CapgenError as e:
        raise ConfigError(f"{path}: {e}") from None


def fixed_model(path: str | Path) -> str | None:
    """The model a space file fixes, if any (a peek: `load_space` reports what is wrong with the file)."""
    from capgen.io import read_yaml

    try:
        raw = read_yaml(path, "space file", ConfigError)
    except ConfigError:
        return None
    from capgen.models import list_models

    model = raw.get("model") if isinstance(raw, dict) else None
    return model if model in list_models() else None


def parse_space(raw: dict, base_model: str, source: str = "space") -> Space:
    from capgen.models import list_models, model_config_class

    raw = dict(raw)
    dims: dict[str, Dim] = {}
    if isinstance(raw.get("model"), dict) and "choices" not in raw["model"]:
        raise ConfigError("model: expected a model name or {choices: [...]}")
    if "model" in raw:
        dims["model"] = _dim("model", raw.pop("model"), str, lambda v: _model_name(v, list_models()))
    models = Space(dims).models or (base_model,)
    for key, spec in raw.items():
        scope, dot, name = str(key).partition(".")
        if not dot or not name:
            raise ConfigError(f"unknown key {key!r}; expected model, train.KEY, model_config.KEY or MODEL.KEY")
        if scope == "train":
            owners = [TrainConfig]
        elif scope == "model_config":
            owners = [model_config_class(m) for m in models]
        elif scope in list_models():
            if scope not in models:
                raise ConfigError(f"{key}: model {scope!r} is not among the space's models ({', '.join(models)})")
            owners = [model_config_class(scope)]
        else:
            raise ConfigError(
                f"unknown key {key!r}; expected model, train.KEY, model_config.KEY or MODEL.KEY "
                f"(MODEL one of {', '.join(list_models())})"
            )
        for cls in owners:
            names = {f.name for f in dataclasses.fields(cls)}
            if name not in names:
                raise ConfigError(
                    f"unknown key {key!r}: {cls.__name__} has no {name!r}; valid keys: {', '.join(sorted(names))}"
                )
        dims[str(key)] = _dim(str(key), spec, typing.get_type_hints(owners[0])[name], _coercer(owners, name))
    return Space(dims, source)


def _model_name(value: Any, names: list[str]) -> str:
    if value not in names:
        raise ConfigError(f"unknown model {value!r}; expected one of {', '.join(names)}")
    return value


def _coercer(owners: list[type], name: str):
    """Checks a value for field `name` of every config class in `owners` with the config parser."""

    def coerce(value: Any) -> Any:
        return [getattr(config_from_dict(cls, {name: value}), name) for cls in owners][0]

    return coerce


def _dim(key: str, spec: Any, tp: Any, coerce) -> Dim:
    try:
        return _parse_dim(key, spec, tp, coerce)
    except CapgenError as e:
        raise ConfigError(str(e) if str(e).startswith(key) else f"{key}: {e}") from None


def _parse_dim(key: str, spec: Any, tp: Any, coerce) -> Dim:
    if not isinstance(spec, dict):
        if isinstance(spec, list):
            raise ConfigError(f"{key}: a list is not a value; write {{choices: {spec}}} to search over it")
        return Fixed(coerce(spec))
    kinds = set(spec)
    if kinds == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}: choices must be a non-empty list, got {choices!r}")
        values = tuple(coerce(c) for c in choices)
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}: choices repeat a value ({list(values)})")
        return Choice(values)
    if "low" in kinds and "high" in kinds and kinds <= {"low", "high", "log", "step"}:
        if tp not in (int, float):
            raise ConfigError(f"{key}: a {{low, high}} range needs a number setting; use {{choices: [...]}}")
        low, high = coerce(spec["low"]), coerce(spec["high"])
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise ConfigError(f"{key}: log must be true or false, got {log!r}")
        if low > high:
            raise ConfigError(f"{key}: low ({low}) is greater than high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log range needs low > 0, got {low}")
        if step is not None:
            step = coerce(step)
            if step <= 0 or log:
                raise ConfigError(f"{key}: step must be > 0 and cannot be combined with log, got step {step}")
        return Range(low, high, log, step, integer=tp is int)
    raise ConfigError(
        f"{key}: expected a value, {{low, high[, log][, step]}} or {{choices: [...]}}, got keys {sorted(kinds)}"
    )


def base_point(space: Space, base: RunConfig) -> dict[str, Any]:
    """The base config's value of each searched key, to run the base config as a trial (enqueue).

    The base is `base` with the space's fixed values applied, as every trial's config is.
    """
    base = trial_config(base, {k: d.value for k, d in space.dims.items() if isinstance(d, Fixed)})
    point = {}
    for key in space.searched():
        scope, _, name = key.partition(".")
        if key == "model":
            value = base.model
        elif scope == "train":
            value = getattr(base.train, name)
        elif scope == "model_config" or scope == base.model:
            value = base.model_config[name]
        else:
            continue  # a key of another model: not drawn for the base model
        if not space.dims[key].contains(value):
            raise ConfigError(
                f"--baseline: the base config's {key} ({value!r}) is outside the space's "
                f"{_describe(space.dims[key])}; widen the space to include it"
            )
        point[key] = value
    return point


def _describe(dim: Dim) -> str:
    return f"choices {list(dim.choices)}" if isinstance(dim, Choice) else f"range [{dim.low}, {dim.high}]"
