"""The training loop: build, step, loop (upstream ``TransferModel.optimize_parameters`` per step).

One iteration::

    fake, attn = G(target pose, source image, source parsing)
    G step:  L1 + perceptual + GAN (mean of D_PB, D_PP) + CX + AMCE + LPIPS + content + style
    D step:  LSGAN on D_PB(image, target pose) and D_PP(image, source image), real = target, fake = fake.detach()
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from casd.checkpoints import save_checkpoint, save_generator
from casd.data.dataset import EpochPairSampler, PairBatch, PairDataset
from casd.data.layout import PREPARED, PreparedLayout
from casd.errors import CasdError, ConfigError
from casd.fileio import atomic_path, remove_temp_files, write_json
from casd.losses import DISCRIMINATOR_TERMS, TERMS, Objective, random_backbones
from casd.models.discriminator import Discriminator
from casd.models.generator import Generator
from casd.tracking import Tracker
from casd.train import distributed, state as train_state
from casd.train.job import ConstantThenLinear, Outputs, TrainJob
from casd.visuals import draw_skeleton, make_grid, make_strip, save_png, to_uint8

LOGGED_TERMS = (*TERMS, "g_total", *DISCRIMINATOR_TERMS)  # column order of the loss CSV and the summary


class NonFiniteLossError(CasdError):
    """A loss term became NaN or infinite: training stopped, the last checkpoint is kept."""


class Networks(nn.Module):
    """G, D_PB and D_PP in one module (one state dict, one ``.to()``)."""

    def __init__(self, model_config, disc_width: int):
        super().__init__()
        self.generator = Generator(model_config)
        self.d_pb = Discriminator(3 + model_config.pose_channels, width=disc_width)  # (image, target pose)
        self.d_pp = Discriminator(6, width=disc_width)                                # (image, source image)


class ChunkedGenerator(nn.Module):
    """The generator run on ``chunks`` consecutive slices of the batch, outputs concatenated.

    Norm statistics then span one slice (upstream's DataParallel), while the losses see the whole batch.
    """

    def __init__(self, generator: Generator, chunks: int):
        super().__init__()
        self.generator, self.chunks = generator, chunks

    def forward(self, pose: torch.Tensor, source_image: torch.Tensor, source_parsing: torch.Tensor):
        outputs = [self.generator(*parts) for parts in zip(pose.chunk(self.chunks), source_image.chunk(self.chunks),
                                                           source_parsing.chunk(self.chunks))]
        images = torch.cat([image for image, _ in outputs])
        attention = [torch.cat(maps) for maps in zip(*(attn for _, attn in outputs))]
        return images, attention


def sample_grid(batch: PairBatch, generated: torch.Tensor, rows: int = 4) -> np.ndarray:
    """One row per pair: source | target pose | generated | target -> uint8 [rows*H, 4*W, 3]."""
    rows = min(rows, generated.shape[0])
    size = tuple(generated.shape[-2:])
    src, gen, tgt = to_uint8(batch.source[:rows]), to_uint8(generated[:rows]), to_uint8(batch.target[:rows])
    return make_grid([make_strip([src[i], draw_skeleton(batch.target_keypoints[i], size), gen[i], tgt[i]])
                      for i in range(rows)])


def write_loss_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch: epoch, step, lr, every logged term, samples/s."""
    if not history:
        return
    columns = ["epoch", "step", "lr", *[k for k in LOGGED_TERMS if k in history[-1]], "samples_per_s"]
    table = pd.DataFrame(history, columns=columns).astype(dict.fromkeys(columns[2:], float))
    with atomic_path(path) as tmp:  # the numbers as %.6g, a term absent from a row as nan
        table.to_csv(tmp, index=False, float_format="%.6g", na_rep="nan", lineterminator="\n")


def check_finite(logged: dict[str, float], progress: train_state.Progress, checkpoint_dir: Path) -> None:
    """Stop with :class:`NonFiniteLossError` naming the step and the terms when a loss is NaN or infinite."""
    bad = [name for name, v in logged.items() if not math.isfinite(v)]
    if not bad:
        return
    latest = checkpoint_dir / "latest.pt"
    where = f"the last good checkpoint {latest} is kept" if latest.is_file() else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"non-finite loss at step {progress.global_step + 1} (epoch {progress.epoch + 1}, batch "
        f"{progress.step_in_epoch + 1}): " + ", ".join(f"{n} = {logged[n]}" for n in bad)
        + f"; training stopped, {where}. Try a lower train.lr, train.grad_clip, or train.amp: none")


class Trainer:
    """One training run; :meth:`run` trains to the end (or resumes and finishes) and writes the outputs."""

    def __init__(self, job: TrainJob, data_root: str | Path = PREPARED.root, outputs: Outputs | None = None):
        self.job, self.cfg = job, job.train
        self.data_root = Path(data_root)
        self.out = outputs or Outputs()
        process = setup_process(self.cfg, job.params_file)
        self.dist, self.device, self.batch_per_rank = process.dist, process.device, process.batch_per_rank
        self.amp_dtype, self.memory_format = process.amp_dtype, process.memory_format
        if self.dist.main:  # a save killed mid-write leaves its temp file: never resumed from, never cached
            remove_temp_files(self.out.checkpoint_dir)
        self._build_data()
        train_state.seed_everything(self.cfg.seed)  # the same initial weights on every rank
        self.nets = Networks(job.model, self.cfg.disc_width).to(self.device, memory_format=self.memory_format)
        self.objective = Objective(job.loss).to(self.device)
        self.optimizers, self.schedulers, self.scaler = build_optimizers(self.nets, self.cfg, job.loss.gan > 0,
                                                                         self.device)
        self.progress = train_state.Progress()
        self.fingerprint = train_state.fingerprint(job, self.data_root)
        self.resumed_from: Path | None = None
        found = train_state.resume_state(self.cfg.resume, self.out.checkpoint_dir, self.fingerprint,
                                         announce=self.dist.main, params_file=job.params_file)
        if found:
            self.load_state_dict(found[0])
            self.resumed_from = found[1]
        self.handles = training_handles(self.nets, self.cfg, self.dist, self.device, self.objective)
        self.tracker = Tracker.disabled()
        self.phase_clock = None  # benchmarks: called with each phase's name as the step passes it

    # ---- build

    def _build_data(self) -> None:
        cfg, job = self.cfg, self.job
        self.dataset = PairDataset(self.data_root, "train", job.image_size, pose_config=job.pose, preload=cfg.preload)
        self.sampler = EpochPairSampler(len(self.dataset), cfg.pairs_per_epoch, seed=cfg.seed, rank=self.dist.rank,
                                        world_size=self.dist.world_size, flip=cfg.flip)
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / self.batch_per_rank)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_per_rank, sampler=self.sampler, num_workers=cfg.workers,
            collate_fn=PairBatch.collate, pin_memory=self.device.type == "cuda", persistent_workers=cfg.workers > 0,
            # its own generator: creating an iterator must not consume the global torch RNG
            generator=torch.Generator().manual_seed(cfg.seed))

    # ---- checkpoints

    def state_dict(self) -> dict:
        """Everything the next step depends on (a ``casd-train`` checkpoint): networks, optimisers, schedulers,
        loss scaler, :class:`~casd.train.state.Progress`, RNG, and what the generator file records."""
        nets, job = self.nets, self.job
        return {
            "format": train_state.CHECKPOINT_FORMAT, "version": train_state.CHECKPOINT_VERSION,
            "generator": nets.generator.state_dict(), "model_config": dataclasses.asdict(job.model),
            "vgg_pretrained": bool(nets.generator.vgg_pretrained),
            "image_size": list(job.image_size), "pose_mode": job.pose.mode, "pose_sigma": job.pose.sigma,
            "discriminators": {"d_pb": nets.d_pb.state_dict(), "d_pp": nets.d_pp.state_dict()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(), **self.progress.state_dict(),
            "rng": train_state.rng_state(), "fingerprint": self.fingerprint,
            "train_config": dataclasses.asdict(self.cfg),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where :meth:`state_dict` ``state`` left off (before the networks are wrapped)."""
        g = self.nets.generator
        g.load_state_dict(state["generator"])
        g.vgg_pretrained = state.get("vgg_pretrained", g.vgg_pretrained)
        self.nets.d_pb.load_state_dict(state["discriminators"]["d_pb"])
        self.nets.d_pp.load_state_dict(state["discriminators"]["d_pp"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        for key, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][key])
        self.scaler.load_state_dict(state["scaler"])
        self.progress.load_state_dict(state)
        train_state.set_rng_state(state["rng"])

    def save(self, epoch_copy: bool = False) -> None:
        """Write ``latest.pt`` (and ``epoch_NNNN.pt``), atomically; rank 0 only."""
        if not self.dist.main:
            return
        state = self.state_dict()
        save_checkpoint(self.out.checkpoint_dir / "latest.pt", state)
        if epoch_copy:
            save_checkpoint(self.out.checkpoint_dir / f"epoch_{self.progress.epoch:04d}.pt", state)

    # ---- one step

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: PairBatch) -> PairBatch:
        """A DataLoader batch on the training device, its target pose rendered there."""
        moved = batch.to(self.device, self.memory_format)
        return moved.render_target_pose(self.job.image_size, self.job.pose, self.memory_format)

    def train_step(self, batch: PairBatch) -> tuple[dict[str, float], torch.Tensor]:
        """One G step and one D step; returns ({term: value averaged over ranks}, generated images).

        The loss values are read back to the host once, after the optimiser steps (nothing inside the
        step waits for the device); a non-finite value then stops the run before anything is saved.
        """
        names, values, fake = self.step(batch)
        values = distributed.average(values, self.dist)  # a NaN on any rank reaches every rank: all stop together
        logged = dict(zip(names, values.tolist()))
        check_finite(logged, self.progress, self.out.checkpoint_dir)
        logged["g_total"] = float(sum(logged[n] for n in names if n not in DISCRIMINATOR_TERMS))
        return logged, fake

    def step(self, batch: PairBatch) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The step itself, without a host sync: (term names, their values on the device, generated images).

        With ``train.accumulate`` A > 1 the batch runs as A micro-batches, each forward, losses and backward
        (gradients of loss / A, summed), then one optimiser step per network: the gradients of the whole
        batch up to what statistics span (norm statistics and CX's centring over a micro-batch).
        ``phase_clock`` (a callable, or None) is called after each phase with its name (benchmarks).
        """
        mark = self.phase_clock or (lambda name: None)
        parts = batch.split(self.cfg.accumulate) if self.cfg.accumulate > 1 else [batch]
        discriminators = [*self.nets.d_pb.parameters(), *self.nets.d_pp.parameters()]
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        names, total, fakes = None, None, []
        for part in parts:
            with self.autocast():
                fake, attention = self.handles.generator(part.target_pose, part.source, part.source_parsing)
                mark("g_forward")
                for p in discriminators:
                    p.requires_grad_(False)
                g_terms = self.objective.generator_terms(fake, attention, part, *self.handles.frozen_discriminators)
                for p in discriminators:
                    p.requires_grad_(True)
                mark("g_losses")
                d_terms = self.objective.discriminator_terms(fake, part, *self.handles.discriminators)
                mark("d_forward")
            self.scaler.scale(sum(g_terms.values()) / len(parts)).backward()
            mark("g_backward")
            if d_terms:
                self.scaler.scale(sum(d_terms.values()) / len(parts)).backward()
                mark("d_backward")
            values = torch.stack([t.detach() for t in (*g_terms.values(), *d_terms.values())])
            total = values if total is None else total + values
            names = list(g_terms) + list(d_terms)
            fakes.append(fake.detach())
        self._optimizer_step("generator", self.nets.generator)
        if "d_pb" in self.optimizers:
            self._optimizer_step("d_pb", self.nets.d_pb)
            self._optimizer_step("d_pp", self.nets.d_pp)
        self.scaler.update()
        mark("optimizer")
        return names, total / len(parts), fakes[0] if len(fakes) == 1 else torch.cat(fakes)

    def _optimizer_step(self, key: str, net: nn.Module) -> None:
        optimizer = self.optimizers[key]
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], self.cfg.grad_clip)
        self.scaler.step(optimizer)

    # ---- the run

    def run(self) -> dict:
        """Train to ``train.epochs_constant + train.epochs_decay`` epochs; returns the metrics written."""
        cfg = self.cfg
        if self.dist.main:
            self.tracker = Tracker.start(self.job.tracking, self.job.logged_params(), tags=run_tags(self),
                                         resume_run_id=self.progress.run_id)
            self.progress.run_id = self.tracker.run_id
            self.tracker.write_run_file(self.out.run_file, self.job.tracking)
            what = (f"resuming {self.resumed_from} at epoch {self.progress.epoch + 1}, "
                    f"step {self.progress.global_step}" if self.resumed_from else "starting")
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
        summary = finish_outputs(self) if self.dist.main else {}
        self.tracker.end("FINISHED")
        distributed.finish(self.dist)
        return summary

    def _loop(self) -> None:
        cfg, progress = self.cfg, self.progress
        self.nets.train()
        while progress.epoch < cfg.epochs:
            lr = self.optimizers["generator"].param_groups[0]["lr"]
            self.sampler.set_epoch(progress.epoch, start=progress.step_in_epoch * self.batch_per_rank)
            bar = tqdm(total=self.steps_per_epoch, initial=progress.step_in_epoch,
                       disable=None if self.dist.main else True,  # None: off when stderr is not a terminal
                       desc=f"epoch {progress.epoch + 1}/{cfg.epochs}", unit="step", leave=False, dynamic_ncols=True)
            window: dict[str, float] = {}
            window_steps, window_start = 0, time.perf_counter()
            epoch_start = epoch_clock = time.perf_counter()  # epoch_start restarts at each mid-epoch save
            epoch_samples = 0
            for batch in self.loader:
                batch = self.to_device(batch)
                terms, fake = self.train_step(batch)
                n = fake.shape[0] * self.dist.world_size
                progress.add_step(terms)
                epoch_samples += n
                for k, v in terms.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                if self.dist.main:
                    rate = window_steps * n / max(time.perf_counter() - window_start, 1e-9)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items()} | {"samples/s": f"{rate:.1f}"},
                                    refresh=False)
                    bar.update()
                    if cfg.log_every and progress.global_step % cfg.log_every == 0:
                        metrics = {f"train/{k}": v / window_steps for k, v in window.items()}
                        metrics.update({"train/lr": lr, "train/samples_per_s": rate, "train/epoch": progress.epoch + 1})
                        self.tracker.log_metrics(metrics, progress.global_step)
                        window, window_steps, window_start = {}, 0, time.perf_counter()
                    if cfg.sample_every and progress.global_step % cfg.sample_every == 0:
                        self.tracker.log_image(sample_grid(batch, fake), f"samples/step_{progress.global_step:07d}.png")
                if (cfg.checkpoint_every_steps and progress.global_step % cfg.checkpoint_every_steps == 0
                        and progress.step_in_epoch < self.steps_per_epoch):
                    progress.train_seconds += time.perf_counter() - epoch_start
                    epoch_start = time.perf_counter()
                    self.save()
            bar.close()
            progress.train_seconds += time.perf_counter() - epoch_start
            self._end_epoch(lr, epoch_samples / max(time.perf_counter() - epoch_clock, 1e-9))

    def _end_epoch(self, lr: float, samples_per_s: float) -> None:
        cfg, progress = self.cfg, self.progress
        record = progress.end_epoch(lr, samples_per_s)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.save(epoch_copy=bool(cfg.save_every) and (progress.epoch % cfg.save_every == 0
                                                       or progress.epoch == cfg.epochs))
        if self.dist.main:
            write_loss_csv(self.out.loss_csv, progress.history)
            self.tracker.log_metrics({f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")},
                                     progress.global_step)
            losses = "  ".join(f"{k} {record[k]:.4g}" for k in LOGGED_TERMS if k in record)
            tqdm.write(f"epoch {progress.epoch}/{cfg.epochs}  step {progress.global_step}  lr {lr:.3g}  {losses}  "
                       f"{samples_per_s:.1f} samples/s")


class ProcessSettings(NamedTuple):
    dist: distributed.Dist
    device: torch.device
    batch_per_rank: int
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format


def setup_process(cfg, params_file) -> ProcessSettings:
    """This process's part of the run (``cfg``: the ``train:`` section): process group, device, its share of
    the batch, autocast dtype, memory format; and the global settings (determinism, threads)."""
    if cfg.deterministic:
        train_state.set_deterministic(True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist = distributed.init_distributed(cfg.device)
    device = distributed.training_device(cfg.device, dist)
    if cfg.batch_size % (dist.world_size * cfg.accumulate * cfg.norm_batch_chunks):
        raise ConfigError(f"{params_file} [train]: batch_size {cfg.batch_size} is not divisible by the "
                          f"{dist.world_size} processes x {cfg.accumulate} accumulate x "
                          f"{cfg.norm_batch_chunks} norm_batch_chunks")
    if cfg.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{params_file} [train]: amp bf16 but this GPU does not support bfloat16; use fp16")
    return ProcessSettings(dist, device, cfg.batch_size // dist.world_size,
                           {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp],
                           torch.channels_last if cfg.channels_last else torch.contiguous_format)


@torch.no_grad()
def preview(trainer: "Trainer", rows: int = 6) -> np.ndarray:
    """Sample grid of the generator on the first ``rows`` test pairs (train pairs if there is no test split)."""
    data_root, job = trainer.data_root, trainer.job
    phase = "test" if PreparedLayout(data_root).pairs("test").is_file() else "train"
    dataset = PairDataset(data_root, phase, job.image_size, pose_config=job.pose, preload=False)
    picks = np.linspace(0, len(dataset) - 1, min(rows, len(dataset))).round().astype(int)
    batch = trainer.to_device(PairBatch.collate([dataset[int(i)] for i in picks]))
    g = trainer.nets.generator
    was_training = g.training
    g.eval()
    with trainer.autocast():
        fake, _ = g(batch.target_pose, batch.source, batch.source_parsing)
    g.train(was_training)
    return sample_grid(batch, fake, rows=len(picks))


def build_optimizers(nets: Networks, cfg, with_discriminators: bool, device: torch.device):
    """(Adam per trained network, their learning-rate schedules, the fp16 loss scaler). The discriminators
    only train, and only get optimisers, with the GAN term on."""
    kernel = adam_kernel(cfg.adam, device)

    def adam(params):
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **kernel)

    optimizers = {"generator": adam([p for p in nets.generator.parameters() if p.requires_grad])}
    if with_discriminators:
        optimizers["d_pb"] = adam(nets.d_pb.parameters())
        optimizers["d_pp"] = adam(nets.d_pp.parameters())
    rule = ConstantThenLinear(cfg.epochs_constant, cfg.epochs_decay)
    schedulers = {k: torch.optim.lr_scheduler.LambdaLR(o, rule) for k, o in optimizers.items()}
    return optimizers, schedulers, torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")


class Handles(NamedTuple):
    """What a training step calls: the generator and the discriminators it trains (under DDP and compile when
    on), and the discriminators the generator's GAN term reads through (outside DDP: no gradient sync)."""

    generator: nn.Module
    discriminators: tuple[nn.Module, nn.Module]          # (d_pb, d_pp)
    frozen_discriminators: tuple[nn.Module, nn.Module]   # the same weights, for the generator's loss


def training_handles(nets: Networks, cfg, dist, device: torch.device, objective: Objective) -> Handles:
    """DDP for gradient averaging, torch.compile on top (and on the frozen loss networks of ``objective``)."""
    generator = ChunkedGenerator(nets.generator, cfg.norm_batch_chunks) if cfg.norm_batch_chunks > 1 \
        else nets.generator
    discriminators = frozen = (nets.d_pb, nets.d_pp)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # find_unused_parameters: the cross attention's key convolutions get no gradient (upstream
        # detaches the key path), so the reducer must not wait for them
        generator = DDP(generator, device_ids=ids, find_unused_parameters=True)
        discriminators = tuple(DDP(d, device_ids=ids) for d in discriminators)
    if cfg.compile:
        generator = compiled_or_eager(generator, "generator")
        discriminators = tuple(compiled_or_eager(d) for d in discriminators)
        frozen = tuple(compiled_or_eager(d) for d in frozen)
        objective.compile_networks(compiled_or_eager)  # the frozen VGG19 / LPIPS trunks of the losses
    return Handles(generator, discriminators, frozen)


def adam_kernel(mode: str, device: torch.device) -> dict[str, bool]:
    """``torch.optim.Adam`` keyword of ``train.adam``: one fused kernel, foreach (a few multi-tensor kernels per
    step) or the per-parameter loop. auto: fused on CUDA, foreach elsewhere."""
    if mode == "auto":
        mode = "fused" if device.type == "cuda" else "foreach"
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[mode]


class CompiledOrEager(nn.Module):
    """``torch.compile(module)``, falling back to ``module`` itself (one warning) when compiling fails.

    torch.compile compiles at the first call; an error there (no C++ compiler, an unsupported operation,
    a backend bug) would otherwise stop training. :attr:`compile_seconds` is the first call's wall time.
    """

    def __init__(self, module: nn.Module, name: str = ""):
        super().__init__()
        self.module = module
        self.compiled = torch.compile(module)
        self.name = name or type(module).__name__
        self.failed: str | None = None
        self.compile_seconds: float | None = None

    def forward(self, *args, **kwargs):
        if self.failed is not None:
            return self.module(*args, **kwargs)
        if self.compile_seconds is not None:
            return self.compiled(*args, **kwargs)
        start = time.perf_counter()
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure: run eager instead
            self.failed = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            warnings.warn(f"train.compile: compiling {self.name} failed ({self.failed[:300]}); it runs eager",
                          stacklevel=2)
            return self.module(*args, **kwargs)
        self.compile_seconds = time.perf_counter() - start
        return out


def compiled_or_eager(module: nn.Module, name: str = "") -> nn.Module:
    return CompiledOrEager(module, name)


def run_tags(trainer: "Trainer") -> dict[str, str]:
    """MLflow tags: where it ran, which CX backbone, and anything degraded (random networks, CPU, terms off)."""
    tags = {"device": str(trainer.device), "world_size": str(trainer.dist.world_size), "amp": trainer.cfg.amp}
    if trainer.objective.cx_backbone:
        tags["cx_backbone"] = trainer.objective.cx_backbone
    if not trainer.nets.generator.vgg_pretrained:
        tags["degraded.random_vgg"] = "style encoder VGG19 has random weights (model.vgg_weights: none)"
    random_terms = random_backbones(trainer.objective.terms)
    if random_terms:
        tags["degraded.random_loss_networks"] = ",".join(random_terms)
    if trainer.device.type == "cpu":
        tags["degraded.cpu"] = "trained on CPU"
    off = [n for n in TERMS if n not in trainer.objective.active]
    if off:
        tags["degraded.losses_off"] = ",".join(off)
    return tags


def finish_outputs(trainer: "Trainer") -> dict:
    """Final outputs (rank 0): generator export, metrics (numbers only), loss CSV, preview, MLflow artifacts."""
    job, progress = trainer.job, trainer.progress
    save_generator(trainer.out.model, trainer.nets.generator, image_size=job.image_size, pose_mode=job.pose.mode,
                   pose_sigma=job.pose.sigma, fingerprint=trainer.fingerprint, mlflow_run_id=progress.run_id,
                   epochs=progress.epoch, steps=progress.global_step)
    last = progress.history[-1] if progress.history else {}
    samples = progress.global_step * trainer.cfg.batch_size
    summary = {"epochs": progress.epoch, "steps": progress.global_step, "samples": samples,
               "train_seconds": round(progress.train_seconds, 2),
               "samples_per_s": round(samples / progress.train_seconds, 3) if progress.train_seconds else 0.0,
               "loss": {k: last[k] for k in LOGGED_TERMS if k in last}}
    write_json(trainer.out.metrics, summary)
    write_loss_csv(trainer.out.loss_csv, progress.history)
    grid = preview(trainer)
    save_png(grid, trainer.out.samples)
    trainer.tracker.log_metrics({f"final/{k}": v for k, v in summary["loss"].items()}, progress.global_step)
    trainer.tracker.log_image(grid, "samples/final_test_pairs.png")
    trainer.tracker.log_artifact(trainer.out.loss_csv, "metrics")
    trainer.tracker.log_artifact(trainer.out.model, "checkpoints")
    log_served_model(trainer)
    print(f"train: done, {progress.epoch} epochs, {progress.global_step} steps in {progress.train_seconds:.0f} s; "
          f"generator -> {trainer.out.model}, samples -> {trainer.out.samples}"
          + (f", MLflow run {progress.run_id}" if progress.run_id else ""), flush=True)
    return summary


def log_served_model(trainer: "Trainer") -> None:
    """The generator as an MLflow Model in the training run, registered as ``tracking.model_name`` (a version
    per training run), with a pair of the prepared data as its input example (:mod:`casd.serving`)."""
    name = trainer.job.tracking.model_name
    if not trainer.tracker.active or not name:
        return
    from casd import serving

    example = serving.prepared_example(trainer.data_root)
    if example is None:
        warnings.warn(f"{trainer.data_root}: no prepared pair to serve as the model's input example; "
                      "the generator is not logged as an MLflow Model")
        return
    with tempfile.TemporaryDirectory(prefix="casd-model-") as tmp:
        model_dir = serving.save_generator_model(Path(tmp) / serving.ARTIFACT_NAME, trainer.out.model, example)
        version = trainer.tracker.log_model(model_dir, serving.ARTIFACT_NAME, name)
    if version is not None:
        print(f"train: generator registered as MLflow Model models:/{name}/{version} "
              f"(runs:/{trainer.progress.run_id}/{serving.ARTIFACT_NAME})", flush=True)


def train(job: TrainJob, data_root: str | Path = PREPARED.root, outputs: Outputs | None = None) -> dict:
    """Train (or resume and finish) ``job``; returns the summary metrics."""
    return Trainer(job, data_root, outputs).run()
