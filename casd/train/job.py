"""What a training run reads (params.yaml ``train:`` and the sections it uses) and where it writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from casd.config import DEFAULT_PARAMS, Checks, from_dict
from casd.data.config import DataConfig
from casd.data.pose import PoseConfig
from casd.losses import LossConfig
from casd.models.generator import GeneratorConfig
from casd.tracking import RUN_FILE, TrackingConfig

AMP_MODES = ("none", "bf16", "fp16")
ADAM_MODES = ("auto", "fused", "foreach", "for_loop")
UPSTREAM_EPOCH_COUNT = 1  # upstream's --epoch_count: its lr rule counts epochs from 1


@dataclass
class TrainConfig:
    """The ``train:`` section of params.yaml (defaults: the paper's DeepFashion settings)."""

    seed: int = 0
    epochs_constant: int = 500       # upstream niter: the lr decays from epoch epochs_constant - 1 (0-based) on
    epochs_decay: int = 500          # upstream niter_decay: the run is epochs_constant + epochs_decay epochs
    pairs_per_epoch: int = 4000      # random (source, target) pairs drawn per epoch, with replacement
    batch_size: int = 16             # global batch (split evenly across DDP processes)
    norm_batch_chunks: int = 1       # generator forward in this many chunks per process (norm statistics per chunk)
    accumulate: int = 1              # micro-batches per step, gradients summed: memory of batch / accumulate
    lr: float = 1e-3
    beta1: float = 0.5
    beta2: float = 0.999
    grad_clip: float = 0.0           # max global grad norm of each network; 0 = off
    disc_width: int = 64             # first-layer width of D_PB and D_PP (upstream ndf)
    flip: bool = False               # random horizontal flip of a pair (images, keypoints, parsing)
    amp: str = "none"                # none | bf16 | fp16 (fp16 uses a GradScaler)
    channels_last: bool = False      # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False            # torch.compile the networks and the loss networks (eager if it fails)
    adam: str = "auto"               # Adam kernel: auto (fused on CUDA, foreach on CPU) | fused | foreach | for_loop
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
        checks = Checks("train")
        checks.choice("amp", self.amp, AMP_MODES)
        checks.choice("adam", self.adam, ADAM_MODES)
        epochs_sound = [checks.number(name, getattr(self, name), minimum=0, integer=True)
                        for name in ("epochs_constant", "epochs_decay")]
        for name in ("save_every", "checkpoint_every_steps", "log_every", "sample_every", "workers", "threads"):
            checks.number(name, getattr(self, name), minimum=0, integer=True)
        for name in ("pairs_per_epoch", "batch_size", "disc_width", "norm_batch_chunks", "accumulate"):
            checks.number(name, getattr(self, name), minimum=1, integer=True)
        if all(epochs_sound):
            checks.require(self.epochs_constant + self.epochs_decay >= 1, "epochs_constant + epochs_decay must be >= 1")
        checks.number("lr", self.lr, above=0)
        checks.number("grad_clip", self.grad_clip, minimum=0)
        checks.done()

    @property
    def epochs(self) -> int:
        return self.epochs_constant + self.epochs_decay


def lr_factor(epoch: int, epochs_constant: int, epochs_decay: int) -> float:
    """Multiplier of the base lr in epoch ``epoch`` (0-based), upstream's rule exactly:
    ``1 - max(0, epoch + 1 + epoch_count - niter) / (niter_decay + 1)`` with epoch_count 1
    (500 + 500: 499 epochs at lr, then 501 decaying, the last at 0)."""
    return 1.0 - max(0, epoch + 1 + UPSTREAM_EPOCH_COUNT - epochs_constant) / float(epochs_decay + 1)


class ConstantThenLinear:
    """LambdaLR rule of :func:`lr_factor` (a class, so that the scheduler state saves as plain values)."""

    def __init__(self, epochs_constant: int, epochs_decay: int):
        self.epochs_constant, self.epochs_decay = epochs_constant, epochs_decay

    def __call__(self, epoch: int) -> float:
        return lr_factor(epoch, self.epochs_constant, self.epochs_decay)


@dataclass
class TrainJob:
    """Everything a training run reads from params.yaml, typed."""

    train: TrainConfig
    model: GeneratorConfig            # model:
    loss: LossConfig                  # loss:
    tracking: TrackingConfig
    image_size: tuple[int, int]       # data.image_size (H, W)
    pose: PoseConfig = field(default_factory=PoseConfig)  # pose: (how the pose input is rendered)
    params: dict = field(default_factory=dict)  # the whole params.yaml, logged to MLflow
    params_file: Path = DEFAULT_PARAMS          # the file ``params`` came from, named in config errors

    @classmethod
    def from_params(cls, params: dict, source: str | Path = DEFAULT_PARAMS) -> "TrainJob":
        """The sections of params file ``source`` (read into ``params``) a run uses."""
        def section(config: type, name: str):
            return from_dict(config, params.get(name), name, source)

        data = section(DataConfig, "data")
        return cls(train=section(TrainConfig, "train"), model=section(GeneratorConfig, "model"),
                   loss=section(LossConfig, "loss"), tracking=section(TrackingConfig, "tracking"),
                   image_size=tuple(data.image_size), pose=section(PoseConfig, "pose"),
                   params=params, params_file=Path(source))

    def logged_params(self) -> dict:
        """params.yaml with every default of the train / model / loss / tracking sections filled in."""
        resolved = {k: dict(v) if isinstance(v, dict) else v for k, v in self.params.items()}
        for section in ("train", "model", "loss", "tracking"):
            resolved[section] = dataclasses.asdict(getattr(self, section))
        resolved.setdefault("data", {})["image_size"] = list(self.image_size)
        return resolved


@dataclass
class Outputs:
    """Where a training run writes (the train stage's DVC outputs)."""

    checkpoint_dir: Path = Path("checkpoints")          # latest.pt, epoch_NNNN.pt (full training state)
    model: Path = Path("models/generator.pt")           # the trained generator, for test / generate
    metrics: Path = Path("metrics/train.json")          # numbers only: final losses, steps, throughput
    loss_csv: Path = Path("metrics/train_loss.csv")     # one row per epoch (DVC plot)
    run_file: Path = RUN_FILE                           # MLflow run id, for the evaluate stage
    samples: Path = Path("reports/train_samples.png")  # test pairs: source | pose | generated | truth

    @classmethod
    def under(cls, root: str | Path) -> "Outputs":
        """All outputs below ``root`` (tests)."""
        root = Path(root)
        return cls(**{f.name: root / getattr(cls, f.name) for f in dataclasses.fields(cls)})
