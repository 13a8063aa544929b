"""Hyperparameter search over run configs with Optuna (`capgen tune`).

Application-side, like capgen.training: every trial is an ordinary training run.
"""

from capgen.tuning.space import Space, load_space, parse_space, trial_config
from capgen.tuning.storage import StudyError
from capgen.tuning.study import TuneOptions, open_study, run_worker

__all__ = [
    "Space",
    "StudyError",
    "TuneOptions",
    "load_space",
    "open_study",
    "parse_space",
    "run_worker",
    "trial_config",
]
