"""The train stage: CASD's full objective, exact resume, AMP, DDP, MLflow (README: "Training").

``job`` (what a run reads and writes), ``loop`` (build, step, loop), ``state`` (RNG, fingerprint, resume),
``distributed`` (process group, device; what the batch statistics span).
"""

from casd.train.job import Outputs, TrainConfig, TrainJob, lr_factor
from casd.train.loop import NonFiniteLossError, Trainer, cli_main, run_from_params, train

__all__ = ["NonFiniteLossError", "Outputs", "TrainConfig", "TrainJob", "Trainer", "cli_main", "lr_factor",
           "run_from_params", "train"]
