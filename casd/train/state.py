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


def checkpoint_state(trainer) -> dict:
    """Everything the next step of ``trainer`` (a :class:`casd.train.loop.Trainer`) depends on."""
    nets = trainer.nets
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "generator": nets.generator.state_dict(),
        "model_config": dataclasses.asdict(trainer.job.model),
        "vgg_pretrained": bool(nets.generator.vgg_pretrained),
        "image_size": list(trainer.job.image_size), "pose_mode": trainer.job.pose.mode,
        "pose_sigma": trainer.job.pose.sigma,
        "discriminators": {"d_pb": nets.d_pb.state_dict(), "d_pp": nets.d_pp.state_dict()},
        "optimizers": {k: o.state_dict() for k, o in trainer.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in trainer.schedulers.items()},
        "scaler": trainer.scaler.state_dict(),
        "epoch": trainer.epoch, "step_in_epoch": trainer.step_in_epoch, "global_step": trainer.global_step,
        "epoch_sums": dict(trainer.epoch_sums), "history": list(trainer.history),
        "train_seconds": trainer.train_seconds, "rng": rng_state(), "fingerprint": trainer.fingerprint,
        "mlflow_run_id": trainer.run_id, "train_config": dataclasses.asdict(trainer.cfg),
    }


def restore(trainer, state: dict, path: Path) -> None:
    """Put ``trainer`` where :func:`checkpoint_state` ``state`` (read from ``path``) left off."""
    g = trainer.nets.generator
    g.load_state_dict(state["generator"])
    g.vgg_pretrained = state.get("vgg_pretrained", g.vgg_pretrained)
    trainer.nets.d_pb.load_state_dict(state["discriminators"]["d_pb"])
    trainer.nets.d_pp.load_state_dict(state["discriminators"]["d_pp"])
    for key, optimizer in trainer.optimizers.items():
        optimizer.load_state_dict(state["optimizers"][key])
    for key, scheduler in trainer.schedulers.items():
        scheduler.load_state_dict(state["schedulers"][key])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
    trainer.global_step = int(state["global_step"])
    trainer.epoch_sums = dict(state["epoch_sums"])
    trainer.history = list(state["history"])
    trainer.train_seconds = float(state["train_seconds"])
    trainer.run_id = state.get("mlflow_run_id")
    set_rng_state(state["rng"])
    trainer.resumed_from = path
