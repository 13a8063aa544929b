"""Training: typed run config, batches from the feature cache, the training loop with resume and DDP.

Application-side code: inference (capgen.models, capgen.decoding, capgen.checkpoint) never imports it.
"""

from capgen.training.config import RunConfig, TrainConfig, load_run_config
from capgen.training.trainer import TrainResult, train

__all__ = ["RunConfig", "TrainConfig", "TrainResult", "load_run_config", "train"]
