"""The train stage: CASD's full objective, exact resume, AMP, DDP, MLflow (README: "Training").

``job`` (what a run reads and writes), ``loop`` (build, step, loop), ``state`` (RNG, fingerprint, resume),
``distributed`` (process group, device; what the batch statistics span).
"""

from casd.train.job import Outputs, TrainConfig, TrainJob, lr_factor
from casd.train.loop import NonFiniteLossError, Trainer, train

__all__ = ["NonFiniteLossError", "Outputs", "TrainConfig", "TrainJob", "Trainer", "lr_factor", "train"]
