"""Training state: RNG states, the settings fingerprint, what a checkpoint holds and what resume reads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from casd.checkpoints import load_checkpoint
from casd.data.layout import PreparedLayout
from casd.errors import ConfigError
from casd.train.job import TrainJob

CHECKPOINT_FORMAT = "casd-train"
CHECKPOINT_VERSION = 1

# train.* keys that do not change what is computed: a checkpoint written with other values is resumable
RUN_CONTROL_KEYS = {"resume", "save_every", "checkpoint_every_steps", "log_every", "sample_every", "workers",
                    "preload", "compile", "device", "threads", "channels_last"}


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states, as tensors / plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def fingerprint(job: TrainJob, data_root: str | Path) -> str:
    """Hash of everything that decides the trained weights (settings and training data).

    A checkpoint is only resumed from when its fingerprint equals the current one.
    """
    train = {k: v for k, v in dataclasses.asdict(job.train).items() if k not in RUN_CONTROL_KEYS}
    settings = {"train": train, "model": dataclasses.asdict(job.model), "loss": dataclasses.asdict(job.loss),
                "image_size": list(job.image_size), "pose": [job.pose.mode, job.pose.sigma]}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    layout = PreparedLayout(Path(data_root))
    for path in (layout.pairs("train"), layout.keypoints("train")):
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def resume_state(spec: str, checkpoint_dir: Path, current_fingerprint: str, announce: bool,
                 params_file: str | Path = "params.yaml") -> tuple[dict, Path] | None:
    """The checkpoint ``train.resume`` (of ``params_file``) asks for, as (state, path); None to start from scratch.

    ``auto``: ``latest.pt`` when it exists and was written with the same settings and data (otherwise the
    run starts over and, if ``announce``, says so); a path: that checkpoint (other settings only warn).
    """
    if spec == "never":
        return None
    path = checkpoint_dir / "latest.pt" if spec == "auto" else Path(spec)
    if not path.is_file():
        if spec != "auto":
            raise ConfigError(f"{params_file} [train]: resume {spec!r}: no such checkpoint")
        return None
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"{path}: not a training checkpoint of this project (format {found!r})")
    if state.get("fingerprint") != current_fingerprint:
        message = (f"{path} was written with other settings or data (fingerprint {state.get('fingerprint')} "
                   f"!= {current_fingerprint})")
        if spec == "auto":
            if announce:
                print(f"train: {message}; starting from scratch", file=sys.stderr)
            return None
        warnings.warn(f"{message}; resuming anyway because train.resume names it explicitly")
    return state, path


@dataclasses.dataclass
class Progress:
    """Where a training is: counters, the running sums of the epoch, the per-epoch history, the MLflow run.

    Its :meth:`state_dict` keys are those of the training checkpoint (``mlflow_run_id`` for ``run_id``).
    """

    epoch: int = 0                  # epochs done
    step_in_epoch: int = 0          # steps done in the current epoch
    global_step: int = 0
    epoch_sums: dict[str, float] = dataclasses.field(default_factory=dict)  # term -> sum; "steps" -> count
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)  # one record per epoch
    train_seconds: float = 0.0
    run_id: str | None = None

    def add_step(self, terms: dict[str, float]) -> None:
        self.step_in_epoch += 1
        self.global_step += 1
        self.epoch_sums["steps"] = self.epoch_sums.get("steps", 0.0) + 1
        for k, v in terms.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v

    def end_epoch(self, lr: float, samples_per_s: float) -> dict[str, float]:
        """Close the epoch: its record (epoch, step, lr, mean of every term, samples/s), kept in the history."""
        steps = self.epoch_sums.pop("steps", 0.0) or 1.0
        record = {"epoch": self.epoch + 1, "step": self.global_step, "lr": lr,
                  **{k: v / steps for k, v in self.epoch_sums.items()}, "samples_per_s": samples_per_s}
        self.history.append(record)
        self.epoch, self.step_in_epoch, self.epoch_sums = self.epoch + 1, 0, {}
        return record

    def state_dict(self) -> dict:
        state = dataclasses.asdict(self)
        state["mlflow_run_id"] = state.pop("run_id")
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.epoch_sums, self.history = dict(state["epoch_sums"]), list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.run_id = state.get("mlflow_run_id")
