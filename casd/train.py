"""The train stage: CASD's full objective, exact resume, AMP, DDP, MLflow.

Run it::

    python stages/train.py                              # one process: CUDA if available, else CPU
    torchrun --nproc_per_node=N stages/train.py         # N GPUs (or N CPU processes, gloo) on one machine
    torchrun --nnodes=M --node_rank=R --nproc_per_node=N \\
             --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT stages/train.py   # M machines

Under torchrun every process trains a DistributedDataParallel replica on
``train.batch_size / world_size`` samples per step and draws its own
``train.pairs_per_epoch / world_size`` pairs per epoch (seeded by
``(train.seed, epoch, rank)``), so an epoch is the same amount of data and a
step the same global batch whatever the number of processes; only rank 0
prints, logs to MLflow and writes files.

One iteration (upstream ``TransferModel.optimize_parameters``)::

    fake, attn = G(cat(BP2, BPD2), P1, SP1)
    G step:  L1 + perceptual + GAN (mean of D_PB, D_PP) + CX + AMCE + LPIPS + content + style
    D step:  LSGAN on D_PB(image, pose: 33 ch) and D_PP(image, source: 6 ch), real = P2, fake = fake.detach()

Every weight lives in params.yaml ``loss:``; a term whose weight is 0 is not
built and not computed. Adam (``train.lr``, betas ``(train.beta1,
train.beta2)``) for G, D_PB and D_PP; the learning rate is constant for
``train.epochs_constant`` epochs, then decays linearly over
``train.epochs_decay`` epochs (epoch ``e``, 0-based, uses
``lr * (1 - max(0, e + 1 - epochs_constant) / (epochs_decay + 1))``, the
pix2pix/upstream rule).

Checkpoints (``checkpoints/latest.pt`` after every epoch and every
``train.checkpoint_every_steps`` steps, ``checkpoints/epoch_NNNN.pt`` every
``train.save_every`` epochs) hold everything the next step depends on:
models, optimisers, schedulers, the AMP scaler, epoch / step counters, the
partial epoch's loss sums, RNG states. With ``train.resume: auto`` a restarted
run continues from ``latest.pt`` and -- with ``train.deterministic: true`` on
CPU -- ends with bit-identical weights to a run that was never interrupted. A
checkpoint written under different settings (model, loss, data, schedule...)
is not resumed from: the run starts over and says so.

A non-finite loss stops the run (:class:`NonFiniteLossError` names the step
and the term); the last good checkpoint stays as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from casd.config import flatten, from_dict, load_params
from casd.data.dataset import EpochPairSampler, PairDataset, add_pose_input, prepared_paths
from casd.errors import CasdError, ConfigError
from casd.fileio import atomic_path, write_json, write_text
from casd.tracking import RUN_FILE, Tracker, TrackingConfig

AMP_MODES = ("none", "bf16", "fp16")
CHECKPOINT_FORMAT = "casd-train"
CHECKPOINT_VERSION = 1

# train.* keys that do not change what is computed: a checkpoint written with other values is resumable
_RUN_CONTROL_KEYS = {"resume", "save_every", "checkpoint_every_steps", "log_every", "sample_every", "workers",
                     "preload", "compile", "device", "threads", "channels_last"}


class NonFiniteLossError(CasdError):
    """A loss term became NaN or infinite: training stopped, the last checkpoint is kept."""


@dataclass
class TrainConfig:
    """The ``train:`` section of params.yaml (defaults: the paper's DeepFashion settings)."""

    seed: int = 0
    epochs_constant: int = 500       # epochs at train.lr
    epochs_decay: int = 500          # then linear decay to 0 over this many epochs
    pairs_per_epoch: int = 4000      # random (source, target) pairs drawn per epoch, with replacement
    batch_size: int = 16             # global batch (split evenly across DDP processes)
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    grad_clip: float = 0.0           # max global grad norm of each network; 0 = off
    disc_width: int = 64             # first-layer width of D_PB and D_PP (upstream ndf)
    flip: bool = False               # random horizontal flip of a pair (images, keypoints, parsing)
    amp: str = "none"                # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False      # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False            # torch.compile the generator and discriminators
    device: str = "auto"             # auto (cuda if available) | cpu | cuda | cuda:N
    deterministic: bool = False      # torch.use_deterministic_algorithms: bit-exact resume
    threads: int = 0                 # torch CPU threads per process; 0 = torch's default
    workers: int = 0                 # DataLoader worker processes
    preload: bool = True             # decode every image once into memory
    save_every: int = 20             # also keep checkpoints/epoch_NNNN.pt every this many epochs
    checkpoint_every_steps: int = 0  # also refresh latest.pt every this many steps; 0 = at epoch ends only
    resume: str = "auto"             # auto (latest.pt if compatible) | never | <path of a checkpoint>
    log_every: int = 10              # steps between MLflow metric logs
    sample_every: int = 500          # steps between sample grids logged to MLflow; 0 = off

    def __post_init__(self):
        problems = []
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        for name in ("epochs_constant", "epochs_decay", "save_every", "checkpoint_every_steps", "log_every",
                     "sample_every", "workers", "threads"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0")
        for name in ("pairs_per_epoch", "batch_size", "disc_width"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1")
        if self.epochs_constant + self.epochs_decay < 1:
            problems.append("epochs_constant + epochs_decay must be >= 1")
        if not self.lr > 0:
            problems.append("lr must be > 0")
        if self.grad_clip < 0:
            problems.append("grad_clip must be >= 0")
        if problems:
            raise ConfigError("params.yaml [train]: " + "; ".join(problems))

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay


def lr_factor(epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """Multiplier of the base lr in epoch ``epoch`` (0-based): 1, then a linear decay towards 0."""
    return 1.0 - max(0, epoch + 1 - epochs_constant) / float(epochs_decay + 1)


# --------------------------------------------------------------------------- the job

@dataclass
class TrainJob:
    """Everything a training run reads from params.yaml, typed."""

    train: TrainConfig
    model: Any                        # casd.models.GeneratorConfig (model:)
    loss: Any                         # casd.losses.LossConfig (loss:)
    tracking: TrackingConfig
    image_size: tuple[int, int]       # data.image_size (H, W)
    pose_mode: str = "onehot"         # pose.mode
    pose_sigma: float = 6.0           # pose.sigma
    params: dict = field(default_factory=dict)  # the whole params.yaml, logged to MLflow

    @classmethod
    def from_params(cls, params: dict) -> "TrainJob":
        from casd.losses import LossConfig
        from casd.models import GeneratorConfig

        data = params.get("data") or {}
        if "image_size" not in data:
            raise ConfigError("params.yaml [data]: image_size (H, W) is required by the train stage")
        size = data["image_size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ConfigError(f"params.yaml [data]: image_size must be [H, W] positive integers, got {size!r}")
        if size[0] % 4 or size[1] % 4:
            raise ConfigError(f"params.yaml [data]: image_size {size} must be divisible by 4 (the generator's "
                              "two down-samplings)")
        pose = params.get("pose") or {}
        return cls(train=from_dict(TrainConfig, params.get("train"), "train"),
                   model=from_dict(GeneratorConfig, params.get("model"), "model"),
                   loss=from_dict(LossConfig, params.get("loss"), "loss"),
                   tracking=from_dict(TrackingConfig, params.get("tracking"), "tracking"),
                   image_size=(int(size[0]), int(size[1])),
                   pose_mode=str(pose.get("mode", "onehot")), pose_sigma=float(pose.get("sigma", 6.0)),
                   params=params)

    def logged_params(self) -> dict:
        """params.yaml with every default of the train / model / loss / tracking sections filled in."""
        resolved = {k: dict(v) if isinstance(v, dict) else v for k, v in self.params.items()}
        for section in ("train", "model", "loss", "tracking"):
            resolved[section] = dataclasses.asdict(getattr(self, section))
        resolved.setdefault("data", {})["image_size"] = list(self.image_size)
        return resolved

    def fingerprint(self, data_root: str | Path) -> str:
        """Hash of everything that decides the trained weights (settings and training data).

        A checkpoint is only resumed from when its fingerprint equals the current one.
        """
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in _RUN_CONTROL_KEYS}
        settings = {"train": train, "model": dataclasses.asdict(self.model), "loss": dataclasses.asdict(self.loss),
                    "image_size": list(self.image_size), "pose": [self.pose_mode, self.pose_sigma]}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        paths = prepared_paths(data_root, "train")
        for key in ("pairs", "keypoints"):
            if paths[key].is_file():
                h.update(hashlib.sha256(paths[key].read_bytes()).digest())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module created the process group (and ends it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun (or a test) described in the environment; single process otherwise.

    NCCL for CUDA, gloo for CPU (so that 2 CPU processes can test DDP anywhere).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    import torch.distributed as dist

    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owns)


def resolve_device(spec: str, dist_info: Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"params.yaml [train]: device {spec!r} but CUDA is not available")
        if spec == "cuda":
            spec = f"cuda:{dist_info.local_rank}"
        device = torch.device(spec)
        torch.cuda.set_device(device)
        return device
    if spec != "cpu":
        raise ConfigError(f"params.yaml [train]: device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return torch.device("cpu")


# --------------------------------------------------------------------------- RNG state

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


# --------------------------------------------------------------------------- models

class Networks(nn.Module):
    """G, D_PB and D_PP in one module (one state dict, one ``.to()``)."""

    def __init__(self, model_config, disc_width: int):
        super().__init__()
        from casd.models import Discriminator, Generator

        self.generator = Generator(model_config)
        self.d_pb = Discriminator(3 + model_config.pose_channels, width=disc_width)  # (image, target pose)
        self.d_pp = Discriminator(6, width=disc_width)                                # (image, source image)


def lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (prediction - 1)^2 for real, mean prediction^2 for fake (upstream GANLoss)."""
    target = torch.ones_like(prediction) if real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target.float())


class ConstantThenLinear:
    """LambdaLR rule of :func:`lr_factor` (a class, so that the scheduler state saves as plain values)."""

    def __init__(self, epochs_constant: int, epochs_decay: int):
        self.epochs_constant, self.epochs_decay = epochs_constant, epochs_decay

    def __call__(self, epoch: int) -> float:
        return lr_factor(epoch, self.epochs_constant, self.epochs_decay)


# --------------------------------------------------------------------------- pictures

POSE_COLOURS = np.array([[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
                         [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
                         [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]],
                        dtype=np.uint8)


def draw_pose(keypoints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Skeleton picture [H, W, 3] uint8 of keypoints [18, 2] (y, x; -1 missing): limbs as lines, joints as dots."""
    from PIL import Image, ImageDraw

    from casd.data.pose import LIMBS

    h, w = size
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    radius = max(1, round(min(h, w) / 64))
    present = (keypoints >= 0).all(axis=1)
    for i, (a, b) in enumerate(LIMBS):
        if present[a] and present[b]:
            colour = tuple(int(c) for c in POSE_COLOURS[i % len(POSE_COLOURS)])
            draw.line([(keypoints[a, 1], keypoints[a, 0]), (keypoints[b, 1], keypoints[b, 0])], fill=colour,
                      width=radius)
    for j in np.flatnonzero(present):
        y, x = keypoints[j]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=tuple(int(c) for c in POSE_COLOURS[j]))
    return np.asarray(canvas)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample_grid(source: torch.Tensor, target_keypoints: torch.Tensor, generated: torch.Tensor,
                target: torch.Tensor, rows: int = 4) -> np.ndarray:
    """One row per pair: source | target pose | generated | ground truth -> [rows*H, 4*W, 3] uint8."""
    rows = min(rows, source.shape[0])
    size = tuple(source.shape[-2:])
    src, gen, tgt = to_uint8(source[:rows]), to_uint8(generated[:rows]), to_uint8(target[:rows])
    kps = target_keypoints[:rows].cpu().numpy()
    lines = [np.concatenate([src[i], draw_pose(kps[i], size), gen[i], tgt[i]], axis=1) for i in range(rows)]
    return np.concatenate(lines, axis=0)


# --------------------------------------------------------------------------- the objective

GENERATOR_TERMS = ("l1", "perceptual", "gan", "cx", "amce", "lpips", "content", "style")
DISCRIMINATOR_TERMS = ("d_pb", "d_pp")


class Objective(nn.Module):
    """CASD's losses, weighted by params.yaml ``loss:``; a term of weight 0 is neither built nor computed.

    ``generator_terms`` and ``discriminator_terms`` return {term: weighted scalar}; the
    generator minimises the sum of its terms, the discriminators the sum of theirs.
    """

    def __init__(self, loss_config):
        super().__init__()
        from casd import losses

        self.config = loss_config
        self.weights = {name: float(getattr(loss_config, name)) for name in GENERATOR_TERMS}
        self.active = tuple(name for name in GENERATOR_TERMS if self.weights[name] != 0)
        self.terms = losses.build_losses(loss_config)  # {term name: nn.Module}, only those of non-zero weight
        for name, module in self.terms.items():
            self.add_module(f"term_{name}", module)

    def generator_terms(self, fake: torch.Tensor, attention: list[torch.Tensor], batch: dict,
                        d_pb: nn.Module, d_pp: nn.Module) -> dict[str, torch.Tensor]:
        """fake [B,3,H,W], attention 2 x [B,8,H/4,W/4]; d_pb / d_pp frozen for this step."""
        target, terms = batch["P2"], {}
        for name in self.active:
            if name == "gan":
                value = 0.5 * (self.terms["gan"](d_pb(torch.cat([fake, batch["BP2"]], 1)), True)
                               + self.terms["gan"](d_pp(torch.cat([fake, batch["P1"]], 1)), True))
            elif name == "amce":
                value = self.terms["amce"](attention, batch["SP2"])
            else:
                value = self.terms[name](fake, target)
            terms[name] = self.weights[name] * value.float()
        return terms

    def discriminator_terms(self, fake: torch.Tensor, batch: dict, d_pb: nn.Module,
                            d_pp: nn.Module) -> dict[str, torch.Tensor]:
        """LSGAN on real (P2) vs generated (detached), for D_PB (image, pose) and D_PP (image, source).

        Real and fake go through each discriminator as one batch (instance norm is
        per sample, so this equals two passes), one forward per DDP module and step.
        """
        if self.weights["gan"] == 0:
            return {}
        fake = fake.detach()
        n = fake.shape[0]
        gan = self.terms["gan"]
        terms = {}
        for name, net, condition in (("d_pb", d_pb, batch["BP2"]), ("d_pp", d_pp, batch["P1"])):
            both = net(torch.cat([torch.cat([batch["P2"], condition], 1), torch.cat([fake, condition], 1)], 0))
            terms[name] = self.weights["gan"] * 0.5 * (gan(both[:n], True) + gan(both[n:], False)).float()
        return terms


# --------------------------------------------------------------------------- the loop

@dataclass
class Outputs:
    """Where a training run writes (the train stage's DVC outputs)."""

    checkpoint_dir: Path = Path("checkpoints")          # latest.pt, epoch_NNNN.pt (full training state)
    model: Path = Path("models/generator.pt")           # the trained generator, for test / generate
    metrics: Path = Path("metrics/train.json")          # final losses, steps, throughput
    loss_csv: Path = Path("metrics/train_loss.csv")     # one row per epoch (DVC plot)
    run_file: Path = RUN_FILE                           # MLflow run id, for the evaluate stage
    samples: Path = Path("reports/train_samples.png")  # test pairs: source | pose | generated | truth

    @classmethod
    def under(cls, root: str | Path) -> "Outputs":
        """All outputs below ``root`` (tests)."""
        root = Path(root)
        return cls(**{f.name: root / getattr(cls, f.name) for f in dataclasses.fields(cls)})


class Trainer:
    """One training run; :meth:`run` trains to the end (or resumes and finishes) and writes the outputs."""

    def __init__(self, job: TrainJob, data_root: str | Path = "data", outputs: Outputs | None = None):
        self.job, self.cfg = job, job.train
        self.data_root = Path(data_root)
        self.out = outputs or Outputs()
        cfg = self.cfg
        if cfg.deterministic:
            set_deterministic(True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        kind = "cuda" if (cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())) \
            else "cpu"
        self.dist = init_distributed(kind)
        self.device = resolve_device(cfg.device, self.dist)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(f"params.yaml [train]: batch_size {cfg.batch_size} is not divisible by the "
                              f"{self.dist.world_size} processes")
        self.batch_per_rank = cfg.batch_size // self.dist.world_size
        if cfg.amp == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("params.yaml [train]: amp bf16 but this GPU does not support bfloat16; use fp16")
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

        # data
        self.dataset = PairDataset(self.data_root, "train", job.image_size, render_pose=False,
                                   pose_mode=job.pose_mode, pose_sigma=job.pose_sigma, preload=cfg.preload)
        self.sampler = EpochPairSampler(len(self.dataset), cfg.pairs_per_epoch, seed=cfg.seed, rank=self.dist.rank,
                                        world_size=self.dist.world_size, flip=cfg.flip)
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / self.batch_per_rank)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_per_rank, sampler=self.sampler, num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0,
            # its own generator: creating an iterator must not consume the global torch RNG
            generator=torch.Generator().manual_seed(cfg.seed))

        # networks (same seed on every rank -> same initial weights; DDP broadcasts rank 0's anyway)
        seed_everything(cfg.seed)
        self.nets = Networks(job.model, cfg.disc_width).to(self.device, memory_format=self.memory_format)
        self.objective = Objective(job.loss).to(self.device)
        g = self.nets.generator
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {
            "generator": torch.optim.Adam([p for p in g.parameters() if p.requires_grad], lr=cfg.lr, betas=betas),
        }
        if job.loss.gan > 0:  # the discriminators only train (and only need optimisers) with the GAN term on
            self.optimizers["d_pb"] = torch.optim.Adam(self.nets.d_pb.parameters(), lr=cfg.lr, betas=betas)
            self.optimizers["d_pp"] = torch.optim.Adam(self.nets.d_pp.parameters(), lr=cfg.lr, betas=betas)
        rule = ConstantThenLinear(cfg.epochs_constant, cfg.epochs_decay)
        self.schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, rule) for k, o in self.optimizers.items()}
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")

        # progress (restored by resume)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.epoch_sums: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.run_id: str | None = None
        self.fingerprint = job.fingerprint(self.data_root)
        self.resumed_from: Path | None = None
        self._maybe_resume()

        # wrappers: DDP for gradient averaging, torch.compile on top
        self.g_train, self.d_pb_train, self.d_pp_train = g, self.nets.d_pb, self.nets.d_pp
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: the cross attention's key convolutions get no gradient (upstream
            # detaches the key path), so the reducer must not wait for them
            self.g_train = DDP(g, device_ids=ids, find_unused_parameters=True)
            self.d_pb_train = DDP(self.nets.d_pb, device_ids=ids)
            self.d_pp_train = DDP(self.nets.d_pp, device_ids=ids)
        # frozen discriminators for the generator's GAN term: the bare modules, outside DDP's bookkeeping
        self.d_pb_frozen, self.d_pp_frozen = self.nets.d_pb, self.nets.d_pp
        if cfg.compile:
            self.g_train = torch.compile(self.g_train)
            self.d_pb_train, self.d_pp_train = torch.compile(self.d_pb_train), torch.compile(self.d_pp_train)
            self.d_pb_frozen, self.d_pp_frozen = torch.compile(self.d_pb_frozen), torch.compile(self.d_pp_frozen)
        self.tracker = Tracker.disabled()

    # ---- checkpoints

    def state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "generator": self.nets.generator.state_dict(),
            "model_config": dataclasses.asdict(self.job.model),
            "vgg_pretrained": bool(self.nets.generator.vgg_pretrained),
            "image_size": list(self.job.image_size), "pose_mode": self.job.pose_mode,
            "pose_sigma": self.job.pose_sigma,
            "discriminators": {"d_pb": self.nets.d_pb.state_dict(), "d_pp": self.nets.d_pp.state_dict()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "epoch_sums": dict(self.epoch_sums), "history": list(self.history),
            "train_seconds": self.train_seconds, "rng": rng_state(), "fingerprint": self.fingerprint,
            "mlflow_run_id": self.run_id, "train_config": dataclasses.asdict(self.cfg),
        }

    def save(self, epoch_copy: bool = False) -> None:
        """Write ``latest.pt`` (and ``epoch_NNNN.pt``), atomically; rank 0 only."""
        if not self.dist.main:
            return
        from casd.checkpoints import save_checkpoint

        state = self.state()
        save_checkpoint(self.out.checkpoint_dir / "latest.pt", state)
        if epoch_copy:
            save_checkpoint(self.out.checkpoint_dir / f"epoch_{self.epoch:04d}.pt", state)

    def _maybe_resume(self) -> None:
        from casd.checkpoints import load_checkpoint

        spec = self.cfg.resume
        if spec == "never":
            return
        path = self.out.checkpoint_dir / "latest.pt" if spec == "auto" else Path(spec)
        if not path.is_file():
            if spec != "auto":
                raise ConfigError(f"params.yaml [train]: resume {spec!r}: no such checkpoint")
            return
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path}: not a training checkpoint of this project (format {state.get('format')!r})")
        if state.get("fingerprint") != self.fingerprint:
            message = (f"{path} was written with other settings or data (fingerprint {state.get('fingerprint')} "
                       f"!= {self.fingerprint})")
            if spec == "auto":
                if self.dist.main:
                    print(f"train: {message}; starting from scratch", file=sys.stderr)
                return
            warnings.warn(f"{message}; resuming anyway because train.resume names it explicitly")
        self.nets.generator.load_state_dict(state["generator"])
        self.nets.generator.vgg_pretrained = state.get("vgg_pretrained", self.nets.generator.vgg_pretrained)
        self.nets.d_pb.load_state_dict(state["discriminators"]["d_pb"])
        self.nets.d_pp.load_state_dict(state["discriminators"]["d_pp"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        for key, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][key])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.epoch_sums = dict(state["epoch_sums"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])
        self.run_id = state.get("mlflow_run_id")
        set_rng_state(state["rng"])
        self.resumed_from = path

    # ---- one step

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batch_to_device(self, batch: dict) -> dict:
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, non_blocking=True)
                if value.dim() == 4:
                    value = value.contiguous(memory_format=self.memory_format)
            out[key] = value
        add_pose_input(out, self.job.image_size, self.job.pose_mode, self.job.pose_sigma)
        if self.memory_format is torch.channels_last:
            for key in ("BP1", "BP2"):
                out[key] = out[key].contiguous(memory_format=self.memory_format)
        return out

    def train_step(self, batch: dict) -> tuple[dict[str, float], torch.Tensor]:
        """One G step and one D step on ``batch``; returns ({term: value averaged over ranks}, generated images)."""
        with self._autocast():
            fake, attention = self.g_train(batch["BP2"], batch["P1"], batch["SP1"])
            for p in self.nets.d_pb.parameters():
                p.requires_grad_(False)
            for p in self.nets.d_pp.parameters():
                p.requires_grad_(False)
            g_terms = self.objective.generator_terms(fake, attention, batch, self.d_pb_frozen, self.d_pp_frozen)
            for p in self.nets.d_pb.parameters():
                p.requires_grad_(True)
            for p in self.nets.d_pp.parameters():
                p.requires_grad_(True)
            d_terms = self.objective.discriminator_terms(fake, batch, self.d_pb_train, self.d_pp_train)
        names = list(g_terms) + list(d_terms)
        values = torch.stack([t.detach() for t in (*g_terms.values(), *d_terms.values())])
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(values)  # a NaN on any rank reaches every rank: all stop together
            values /= self.dist.world_size
        logged = dict(zip(names, values.tolist()))
        bad = [name for name, v in logged.items() if not math.isfinite(v)]
        if bad:
            where = (f"the last good checkpoint {self.out.checkpoint_dir / 'latest.pt'} is kept"
                     if (self.out.checkpoint_dir / "latest.pt").is_file() else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step + 1} (epoch {self.epoch + 1}, batch "
                f"{self.step_in_epoch + 1}): " + ", ".join(f"{n} = {logged[n]}" for n in bad)
                + f"; training stopped, {where}. Try a lower train.lr, train.grad_clip, or train.amp: none")

        g_total = sum(g_terms.values())
        self.optimizers["generator"].zero_grad(set_to_none=True)
        self.scaler.scale(g_total).backward()
        self._step("generator", self.nets.generator)
        if d_terms:
            self.optimizers["d_pb"].zero_grad(set_to_none=True)
            self.optimizers["d_pp"].zero_grad(set_to_none=True)
            self.scaler.scale(sum(d_terms.values())).backward()
            self._step("d_pb", self.nets.d_pb)
            self._step("d_pp", self.nets.d_pp)
        self.scaler.update()
        logged["g_total"] = float(sum(logged[n] for n in g_terms))
        return logged, fake.detach()

    def _step(self, key: str, net: nn.Module) -> None:
        optimizer = self.optimizers[key]
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], self.cfg.grad_clip)
        self.scaler.step(optimizer)

    # ---- the run

    def _tags(self) -> dict[str, str]:
        tags = {"device": str(self.device), "world_size": str(self.dist.world_size), "amp": self.cfg.amp}
        if not self.nets.generator.vgg_pretrained:
            tags["degraded.random_vgg"] = "style encoder VGG19 has random weights (model.vgg_weights: none)"
        from casd.losses import random_backbones

        random_terms = random_backbones(self.objective.terms)
        if random_terms:
            tags["degraded.random_loss_networks"] = ",".join(random_terms)
        if self.device.type == "cpu":
            tags["degraded.cpu"] = "trained on CPU"
        off = [n for n in GENERATOR_TERMS if n not in self.objective.active]
        if off:
            tags["degraded.losses_off"] = ",".join(off)
        return tags

    def run(self) -> dict:
        """Train to ``train.epochs_constant + train.epochs_decay`` epochs; returns the metrics written."""
        cfg = self.cfg
        if self.dist.main:
            self.tracker = Tracker.start(self.job.tracking, self.job.logged_params(), tags=self._tags(),
                                         resume_run_id=self.run_id)
            self.run_id = self.tracker.run_id
            self.tracker.write_run_file(self.out.run_file, self.job.tracking)
            what = (f"resuming {self.resumed_from} at epoch {self.epoch + 1}, step {self.global_step}"
                    if self.resumed_from else "starting")
            print(f"train: {what}; {len(self.dataset)} pairs, {cfg.pairs_per_epoch} per epoch, "
                  f"{self.steps_per_epoch} steps of {cfg.batch_size} per epoch, {cfg.epochs} epochs, "
                  f"device {self.device} x {self.dist.world_size}, amp {cfg.amp}, "
                  f"losses {'+'.join(self.objective.active)}", flush=True)
        status = "FAILED"
        try:
            self._loop()
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if status != "FINISHED":
                self.tracker.end(status)
        summary = self._finish() if self.dist.main else {}
        self.tracker.end("FINISHED")
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()
            if self.dist.owns_group:
                dist.destroy_process_group()
        return summary

    def _loop(self) -> None:
        cfg = self.cfg
        self.nets.train()
        while self.epoch < cfg.epochs:
            lr = self.optimizers["generator"].param_groups[0]["lr"]
            self.sampler.set_epoch(self.epoch, start=self.step_in_epoch * self.batch_per_rank)
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch,
                       disable=None if self.dist.main else True,  # None: off when stderr is not a terminal
                       desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", leave=False, dynamic_ncols=True)
            window: dict[str, float] = {}
            window_steps, window_start = 0, time.perf_counter()
            epoch_start = epoch_clock = time.perf_counter()  # epoch_start restarts at each mid-epoch save
            epoch_samples = 0
            for batch in self.loader:
                batch = self._batch_to_device(batch)
                terms, fake = self.train_step(batch)
                n = batch["P1"].shape[0] * self.dist.world_size
                self.step_in_epoch += 1
                self.global_step += 1
                epoch_samples += n
                self.epoch_sums["steps"] = self.epoch_sums.get("steps", 0.0) + 1
                for k, v in terms.items():
                    self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                if self.dist.main:
                    rate = window_steps * n / max(time.perf_counter() - window_start, 1e-9)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items()} | {"samples/s": f"{rate:.1f}"},
                                    refresh=False)
                    bar.update()
                    if cfg.log_every and self.global_step % cfg.log_every == 0:
                        metrics = {f"train/{k}": v / window_steps for k, v in window.items()}
                        metrics.update({"train/lr": lr, "train/samples_per_s": rate, "train/epoch": self.epoch + 1})
                        self.tracker.log_metrics(metrics, self.global_step)
                        window, window_steps, window_start = {}, 0, time.perf_counter()
                    if cfg.sample_every and self.global_step % cfg.sample_every == 0:
                        grid = sample_grid(batch["P1"], batch["K2"], fake, batch["P2"])
                        self.tracker.log_image(grid, f"samples/step_{self.global_step:07d}.png")
                if (cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0
                        and self.step_in_epoch < self.steps_per_epoch):
                    self.train_seconds += time.perf_counter() - epoch_start
                    epoch_start = time.perf_counter()
                    self.save()
            bar.close()
            self.train_seconds += time.perf_counter() - epoch_start
            seconds = time.perf_counter() - epoch_clock
            self._end_epoch(lr, epoch_samples / max(seconds, 1e-9))

    def _end_epoch(self, lr: float, samples_per_s: float) -> None:
        steps = self.epoch_sums.pop("steps", 0.0) or 1.0
        record = {"epoch": self.epoch + 1, "step": self.global_step, "lr": lr,
                  **{k: v / steps for k, v in self.epoch_sums.items()}, "samples_per_s": samples_per_s}
        self.history.append(record)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_sums = {}
        self.save(epoch_copy=bool(self.cfg.save_every) and (self.epoch % self.cfg.save_every == 0
                                                            or self.epoch == self.cfg.epochs))
        if self.dist.main:
            self._write_loss_csv()
            self.tracker.log_metrics({f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")},
                                     self.global_step)
            losses = "  ".join(f"{k} {record[k]:.4g}" for k in (*GENERATOR_TERMS, "g_total", *DISCRIMINATOR_TERMS)
                               if k in record)
            tqdm.write(f"epoch {self.epoch}/{self.cfg.epochs}  step {self.global_step}  lr {lr:.3g}  {losses}  "
                       f"{samples_per_s:.1f} samples/s")

    def _write_loss_csv(self) -> None:
        if not self.history:
            return
        columns = ["epoch", "step", "lr", *[k for k in (*GENERATOR_TERMS, "g_total", *DISCRIMINATOR_TERMS)
                                            if k in self.history[-1]], "samples_per_s"]
        lines = [",".join(columns)]
        for row in self.history:
            lines.append(",".join(str(row[c]) if c in ("epoch", "step") else f"{row.get(c, float('nan')):.6g}"
                                  for c in columns))
        write_text(self.out.loss_csv, "\n".join(lines) + "\n")

    @torch.no_grad()
    def preview(self, rows: int = 6) -> np.ndarray:
        """Sample grid on the first ``rows`` test pairs (train pairs if there is no test split)."""
        phase = "test" if prepared_paths(self.data_root, "test")["pairs"].is_file() else "train"
        dataset = PairDataset(self.data_root, phase, self.job.image_size, render_pose=False,
                              pose_mode=self.job.pose_mode, pose_sigma=self.job.pose_sigma, preload=False)
        picks = np.linspace(0, len(dataset) - 1, min(rows, len(dataset))).round().astype(int)
        batch = torch.utils.data.default_collate([dataset[int(i)] for i in picks])
        batch = self._batch_to_device(batch)
        g = self.nets.generator
        was_training = g.training
        g.eval()
        with self._autocast():
            fake, _ = g(batch["BP2"], batch["P1"], batch["SP1"])
        g.train(was_training)
        return sample_grid(batch["P1"], batch["K2"], fake, batch["P2"], rows=len(picks))

    def _finish(self) -> dict:
        """Final outputs (rank 0): generator export, metrics, loss CSV, preview grid, MLflow artifacts."""
        from PIL import Image

        from casd.checkpoints import save_checkpoint

        state = self.state()
        export = {k: state[k] for k in ("generator", "model_config", "vgg_pretrained", "image_size", "pose_mode",
                                        "pose_sigma", "fingerprint", "mlflow_run_id")}
        export.update({"format": "casd-generator", "epochs": self.epoch, "steps": self.global_step})
        save_checkpoint(self.out.model, export)
        last = self.history[-1] if self.history else {}
        samples = self.global_step * self.cfg.batch_size
        summary = {"epochs": self.epoch, "steps": self.global_step, "samples": samples,
                   "train_seconds": round(self.train_seconds, 2),
                   "samples_per_s": round(samples / self.train_seconds, 3) if self.train_seconds else 0.0,
                   "loss": {k: last[k] for k in (*GENERATOR_TERMS, "g_total", *DISCRIMINATOR_TERMS) if k in last}}
        write_json(self.out.metrics, summary)
        self._write_loss_csv()
        grid = self.preview()
        with atomic_path(self.out.samples) as tmp:
            Image.fromarray(grid).save(tmp)
        self.tracker.log_metrics({f"final/{k}": v for k, v in summary["loss"].items()}, self.global_step)
        self.tracker.log_image(grid, "samples/final_test_pairs.png")
        self.tracker.log_artifact(self.out.loss_csv, "metrics")
        self.tracker.log_artifact(self.out.model, "checkpoints")
        print(f"train: done, {self.epoch} epochs, {self.global_step} steps in {self.train_seconds:.0f} s; "
              f"generator -> {self.out.model}, samples -> {self.out.samples}"
              + (f", MLflow run {self.run_id}" if self.run_id else ""), flush=True)
        return summary


def train(job: TrainJob, data_root: str | Path = "data", outputs: Outputs | None = None) -> dict:
    """Train (or resume and finish) ``job``; see the module docstring. Returns the summary metrics."""
    return Trainer(job, data_root, outputs).run()


def run_from_params(params_path: str | Path = "params.yaml") -> dict:
    """The train stage: params.yaml -> :func:`train` with the standard outputs."""
    return train(TrainJob.from_params(load_params(params_path)))


def cli_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="casd train", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    run_from_params(args.params)
