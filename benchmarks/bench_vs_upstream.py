"""One full training step of this project against upstream CASD's, interleaved in one process.

    python benchmarks/bench_vs_upstream.py --upstream-dir ../CASD --device cpu --batch-size 2 --steps 3
    python benchmarks/bench_vs_upstream.py --upstream-dir ../CASD --device cuda --batch-size 16 --amp bf16
    python benchmarks/bench_vs_upstream.py --device cpu --params tiny.yaml        # this project's side alone

Both sides run on the same batches (same pairs, same inputs, same device) at the same widths (the params file,
by default the paper profile ``params-deepfashion.yaml``): generator forward, every loss term at its weight,
both discriminators, both backward passes and the optimiser steps. Our side is
:meth:`casd.train.loop.Trainer.train_step` itself; upstream's is ``TransferModel.optimize_parameters`` of the
checkout given with ``--upstream-dir``, imported from there and patched in memory only as far as it needs to
run here (every patch is listed under ``upstream_patches``). Every network holds random weights on both sides
(nothing is downloaded). The steps alternate (ours first on even steps, upstream's first on odd ones), so
drifts of a shared machine's load hit both alike.

Peak memory per side = its resident tensors (weights, gradients, optimiser state, counted directly) + the
transient peak of one step above what was allocated before it (CUDA: ``max_memory_allocated``; CPU: the
process RSS sampled every 2 ms, an approximation). Prints ONE JSON object on stdout; upstream's prints go
to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import types
import warnings
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# data and timing helpers
# ---------------------------------------------------------------------------------------------------------------

def synthetic_prepared(root: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """A small synthetic data set, prepared by the project's own stages at ``size`` (a few seconds)."""
    from casd.data.config import DataConfig
    from casd.data.pose import PoseConfig, extract_pose
    from casd.data.prepare import resize, segment, split
    from casd.data.synthetic import SynthConfig, generate

    data = DataConfig(source="synthetic", image_size=size, annotation_size=size, crop_border=0, on_error="fail",
                      workers=1)
    generate(SynthConfig(seed=seed, image_size=size, categories=2, identities_per_category=3, poses_per_identity=3,
                         test_fraction=0.34), size, root / "raw", workers=1)
    reports = root / "reports"
    with contextlib.redirect_stdout(sys.stderr):
        split(data, root / "raw", root / "split", reports)
        resize(data, root / "split", root / "resized", reports)
        extract_pose(data, PoseConfig(), root / "raw", root / "pose", reports, root / "split")
        segment(data, root / "raw", root / "split", root / "parsing", reports)
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every ``interval`` s (CPU)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.peak = self.before = 0

    def __enter__(self):
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.before


def resident_bytes(modules, optimizers) -> int:
    """Bytes of the distinct parameters, buffers, gradients and optimiser states."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()

    for module in modules:
        for p in module.parameters():
            add(p)
            add(p.grad)
        for b in module.buffers():
            add(b)
    for optimizer in optimizers:
        for state in optimizer.state.values():
            for value in state.values():
                add(value)
    return total


def transient_peak(device: torch.device, run) -> int:
    """Bytes one call of ``run`` allocates above what was allocated before it (at its peak)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with PeakRSS() as rss:
        run()
    return rss.increase


# ---------------------------------------------------------------------------------------------------------------
# upstream's side, patched in memory
# ---------------------------------------------------------------------------------------------------------------

UPSTREAM_LPIPS_CHANNELS = (64, 128, 256, 512, 512)  # its LinLayers for net_type 'vgg'


def _flat_affine_functional():
    """torch.nn.functional, but batch_norm flattens a 2-D weight / bias (upstream's AdaIN passes [B, C])."""
    import torch.nn.functional as functional

    def batch_norm(x, running_mean, running_var, weight=None, bias=None, *args, **kwargs):
        weight = weight.reshape(-1) if weight is not None else None
        bias = bias.reshape(-1) if bias is not None else None
        return functional.batch_norm(x, running_mean, running_var, weight, bias, *args, **kwargs)

    namespace = types.SimpleNamespace(**{k: getattr(functional, k) for k in dir(functional) if not k.startswith("__")})
    namespace.batch_norm = batch_norm
    return namespace


class Upstream:
    """Upstream's ``TransferModel`` (models/adgan.py) built from ``upstream_dir`` on ``device``."""

    def __init__(self, upstream_dir: Path, device: torch.device, batch_size: int, image_size: tuple[int, int],
                 workdir: Path, amp: str = "none"):
        self.device, self.patches = device, []
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        if str(upstream_dir) not in sys.path:
            sys.path.insert(0, str(upstream_dir))
        import skimage.draw
        import torchvision.models
        import torchvision.models.vgg

        if not hasattr(skimage.draw, "circle"):
            skimage.draw.circle = skimage.draw.disk
            self.patches.append("skimage.draw.circle (removed in scikit-image 0.19, imported by util/util.py and "
                                "used only to draw visuals) = skimage.draw.disk")
        originals = {"vgg19": torchvision.models.vgg.vgg19, "vgg16": torchvision.models.vgg.vgg16,
                     "load": torch.load}
        random_vgg19 = originals["vgg19"](weights=None).state_dict()

        def vgg19(*args, **kwargs):  # upstream: vgg19(pretrained=False), no longer accepted by torchvision
            return originals["vgg19"](weights=None)

        def vgg16(*args, **kwargs):  # upstream LPIPS: vgg16(True) would download ImageNet weights
            return originals["vgg16"](weights=None)

        def load(path, *args, **kwargs):
            name = os.path.basename(str(path))
            if name == "vgg19-dcbb9e9d.pth":
                return {k: v.clone() for k, v in random_vgg19.items()}
            if name == "vgg_conv.pth":
                from models.vgg_SC import VGG

                return VGG().state_dict()
            return originals["load"](path, *args, **kwargs)

        self.patches += [
            "torchvision.models.vgg19(pretrained=False) -> vgg19(weights=None) (the pretrained argument is gone "
            "from torchvision), while the model is built",
            "torchvision.models.vgg16(True) (LPIPS trunk, a download) -> vgg16(weights=None), while the model is built",
            "torch.load of vgg19-dcbb9e9d.pth (its hard-coded /home/haihuam/... path and dataroot) -> one random "
            "torchvision VGG19 state dict; of dataroot/vgg_conv.pth -> upstream's VGG() random init, while built",
            "losses.lpips.lpips.get_state_dict (a download of the LPIPS linear layers) -> random positive weights",
            "models.networks.print_network and the option printout: stdout -> stderr",
            "models/CASD.py's F.batch_norm: AdaIN's [B, C] weight and bias reshaped to the 1-D [B*C] current "
            "PyTorch requires (same values; older PyTorch accepted them)",
        ]
        with contextlib.redirect_stdout(sys.stderr):
            import losses.lpips.lpips as lpips_module
            from models import networks
            from options.train_options import TrainOptions

            lpips_module.get_state_dict = lambda *a, **k: {
                f"{i}.1.weight": torch.rand(1, c, 1, 1) / c for i, c in enumerate(UPSTREAM_LPIPS_CHANNELS)}
            cpu_patches = self._cpu_patches() if device.type == "cpu" else contextlib.nullcontext()
            options = TrainOptions()
            options.initialize()
            opt = options.parser.parse_args(["--batchSize", str(batch_size), "--dataroot", str(workdir),
                                             "--checkpoints_dir", str(workdir / "checkpoints"),
                                             "--gpu_ids", "0" if device.type == "cuda" else "-1"])
            # what BaseOptions.parse() sets besides (it also parses sys.argv and writes opt.txt: not called)
            opt.isTrain = True
            opt.gpu_ids = [device.index or 0] if device.type == "cuda" else []
            opt.fineSize = list(image_size)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            self.patches.append(f"options: upstream's own TrainOptions parser with --batchSize {batch_size}, "
                                f"gpu_ids {opt.gpu_ids}, fineSize {list(image_size)} (its defaults otherwise: "
                                "all eight terms on, lambda_* at the paper's weights); one device, so no DataParallel")
            torchvision.models.vgg.vgg19 = torchvision.models.vgg19 = vgg19
            torchvision.models.vgg.vgg16 = torchvision.models.vgg16 = vgg16
            torch.load = load
            try:
                with cpu_patches:
                    from models.adgan import TransferModel
                    import models.CASD as casd_module

                    casd_module.F = _flat_affine_functional()

                    networks.print_network = lambda net: None
                    self.model = TransferModel()
                    self.model.initialize(opt)
            finally:
                torchvision.models.vgg.vgg19 = torchvision.models.vgg19 = originals["vgg19"]
                torchvision.models.vgg.vgg16 = torchvision.models.vgg16 = originals["vgg16"]
                torch.load = originals["load"]
        self.opt = opt
        if device.type == "cpu":
            # at run time too: L1_plus_perceptualLoss.forward calls .cuda() on its mean / std every step
            torch.Tensor.cuda = lambda self, *args, **kwargs: self
            self.patches.append("torch.Tensor.cuda -> identity (CPU: upstream calls .cuda() inside its loss every "
                                "step); nn.Module.cuda and Module.to('cuda') -> CPU while the model is built")
        if self.amp_dtype is not None:
            self.patches.append(f"optimize_parameters run under torch.autocast({device.type}, {amp}) "
                                "(upstream trained in float32)")

    def _cpu_patches(self):
        @contextlib.contextmanager
        def patched():
            module_cuda, module_to = torch.nn.Module.cuda, torch.nn.Module.to

            def to(module, *args, **kwargs):
                args = tuple("cpu" if a == "cuda" else a for a in args)
                return module_to(module, *args, **kwargs)

            torch.nn.Module.cuda = lambda module, device=None: module
            torch.nn.Module.to = to
            try:
                yield
            finally:
                torch.nn.Module.cuda, torch.nn.Module.to = module_cuda, module_to
        return patched()

    def inputs(self, batch) -> dict:
        """Upstream's data dict from a :class:`casd.data.dataset.PairBatch` (its source pose: zeros, visuals only)."""
        keypoints, limbs = batch.target_pose[:, :18], batch.target_pose[:, 18:]
        n = batch.source.shape[0]
        return {"P1": batch.source, "P2": batch.target, "BP2": keypoints.contiguous(), "BPD2": limbs.contiguous(),
                "BP1": torch.zeros_like(keypoints), "BPD1": torch.zeros_like(limbs), "SP1": batch.source_parsing,
                "SP2": batch.target_parsing, "P1_path": [f"p1_{i}.jpg" for i in range(n)],
                "P2_path": [f"p2_{i}.jpg" for i in range(n)]}

    def set_input(self, batch) -> None:
        self.model.set_input(self.inputs(batch))

    def step(self) -> None:
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        with autocast, contextlib.redirect_stdout(sys.stderr):
            self.model.optimize_parameters()

    def optimizers(self):
        return self.model.optimizers

    def losses(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model.get_current_errors().items()}

    def phase_step(self, clock) -> None:
        """One step with a mark after G forward, G losses + backward, G optimiser step and the two D updates."""
        m = self.model
        originals = {name: getattr(m, name) for name in ("forward", "backward_G", "backward_D_PP", "backward_D_PB")}
        marks = {"forward": "g_forward", "backward_G": "g_losses_and_backward", "backward_D_PP": "d_pp",
                 "backward_D_PB": "d_pb"}

        def wrap(name):
            def run(*args, **kwargs):
                out = originals[name](*args, **kwargs)
                clock(marks[name])
                return out
            return run

        for name in originals:
            setattr(m, name, wrap(name))
        try:
            self.step()
        finally:
            for name in originals:
                delattr(m, name)


# ---------------------------------------------------------------------------------------------------------------

def _override(params: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    section, _, name = key.partition(".")
    params.setdefault(section, {})[name] = yaml.safe_load(value)


class PhaseClock:
    def __init__(self, device: torch.device):
        self.device, self.times, self.last = device, {}, None

    def start(self):
        sync(self.device)
        self.last = time.perf_counter()

    def __call__(self, name: str):
        sync(self.device)
        now = time.perf_counter()
        self.times.setdefault(name, []).append(now - self.last)
        self.last = now

    def medians(self, steps: int) -> dict[str, float]:
        # a phase met several times in one step (accumulation) counts its sum per step
        return {k: round(sum(v) / steps, 4) for k, v in self.times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params-deepfashion.yaml"))
    parser.add_argument("--upstream-dir", type=Path, default=None, help="a checkout of github.com/xyzhouo/CASD")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="our side's autocast")
    parser.add_argument("--upstream-amp", default="none", choices=["none", "bf16", "fp16"],
                        help="upstream's side (default: float32, as upstream trained)")
    parser.add_argument("--compile", action="store_true", help="train.compile on our side")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param of our side (repeatable), e.g. train.norm_batch_chunks=1")
    parser.add_argument("--no-phases", action="store_true", help="skip the per-phase breakdown")
    args = parser.parse_args(argv)

    from casd.config import load_params
    from casd.train.job import Outputs, TrainJob
    from casd.train.loop import Trainer

    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = load_params(args.params)
    for section, values in {"model": {"vgg_weights": "none"},
                            "loss": {"vgg_weights": "none", "cx_vgg_weights": "none", "lpips_weights": "none"},
                            "train": {"batch_size": args.batch_size, "amp": args.amp, "compile": args.compile,
                                      "device": args.device, "resume": "never", "workers": 0, "preload": True,
                                      "threads": args.threads, "deterministic": False}}.items():
        params.setdefault(section, {}).update(values)
    params.setdefault("tracking", {})["enabled"] = False
    for assignment in args.set:
        _override(params, assignment)
    job = TrainJob.from_params(params, args.params)
    size = tuple(job.image_size)
    result: dict = {"device": str(device), "device_name": (torch.cuda.get_device_name(device)
                                                           if device.type == "cuda" else "cpu"),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "image_size": list(size),
                    "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "amp": args.amp,
                    "upstream_amp": args.upstream_amp if args.upstream_dir else None, "compile": args.compile,
                    "params": str(args.params), "overrides": args.set,
                    "widths": {k: getattr(job.model, k) for k in ("width", "style_width", "pose_width",
                                                                  "mlp_width", "adain_blocks", "modulated_blocks")},
                    "norm_batch_chunks": job.train.norm_batch_chunks, "accumulate": job.train.accumulate}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = synthetic_prepared(tmp / "data", size)
        trainer = Trainer(job, root, Outputs.under(tmp / "out"))
        trainer.nets.train()
        result["losses"] = list(trainer.objective.active)
        batches, epoch = [], 0
        while len(batches) < args.warmup + args.steps + 2:
            trainer.sampler.set_epoch(epoch)
            batches += [trainer.to_device(c) for c in trainer.loader]
            epoch += 1
        batches = batches[:args.warmup + args.steps + 2]

        upstream = None
        if args.upstream_dir is not None:
            start = time.perf_counter()
            upstream = Upstream(args.upstream_dir.resolve(), device, args.batch_size, size, tmp / "upstream",
                                args.upstream_amp)
            result["upstream_build_seconds"] = round(time.perf_counter() - start, 2)

        def ours(batch):
            return trainer.train_step(batch)[0]

        def theirs(batch):
            upstream.set_input(batch)  # a copy into upstream's input buffers, outside the timed step
            sync(device)
            start = time.perf_counter()
            upstream.step()
            sync(device)
            return time.perf_counter() - start

        def timed_ours(batch):
            sync(device)
            start = time.perf_counter()
            logged = ours(batch)
            sync(device)
            return time.perf_counter() - start, logged

        first_seconds = []
        for batch in batches[:args.warmup]:
            first_seconds.append(timed_ours(batch)[0])
            if upstream:
                theirs(batch)
        our_times, their_times, our_losses = [], [], []
        for i, batch in enumerate(batches[args.warmup:args.warmup + args.steps]):
            if upstream and i % 2:
                their_times.append(theirs(batch))
            seconds, logged = timed_ours(batch)
            our_times.append(seconds)
            our_losses.append(logged)
            if upstream and not i % 2:
                their_times.append(theirs(batch))

        ours_step = statistics.median(our_times)
        result.update({
            "ours_step_seconds": round(ours_step, 4), "ours_step_seconds_all": [round(t, 4) for t in our_times],
            "ours_samples_per_s": round(args.batch_size / ours_step, 3),
            "ours_first_step_seconds": round(first_seconds[0], 3) if first_seconds else None,
            "ours_losses_last_step": {k: round(v, 6) for k, v in our_losses[-1].items()} if our_losses else None,
        })
        if args.compile:
            from casd.train.loop import CompiledOrEager

            handles = trainer.handles
            wrappers = [m for m in (handles.generator, *handles.discriminators, *handles.frozen_discriminators)
                        if isinstance(m, CompiledOrEager)]
            for term in trainer.objective.terms.values():
                holder = getattr(term, "bank", term)
                runner = getattr(holder, "_run", [None])[0]
                if isinstance(runner, CompiledOrEager) and runner not in wrappers:
                    wrappers.append(runner)
            result["compile_seconds"] = round(first_seconds[0] - ours_step, 2) if first_seconds else None
            result["compile_failed"] = {w.name: w.failed for w in wrappers if w.failed}
            result["compiled"] = [w.name for w in wrappers if not w.failed]
        if upstream:
            their_step = statistics.median(their_times)
            result.update({"upstream_step_seconds": round(their_step, 4),
                           "upstream_step_seconds_all": [round(t, 4) for t in their_times],
                           "upstream_samples_per_s": round(args.batch_size / their_step, 3),
                           "ratio": round(their_step / ours_step, 3),
                           "upstream_losses_last_step": {k: round(v, 6) for k, v in upstream.losses().items()},
                           "upstream_patches": upstream.patches})
        else:
            result.update({"upstream_step_seconds": None, "upstream_samples_per_s": None, "ratio": None,
                           "upstream_patches": None})

        # per-phase times (a sync after each phase: slightly slower than the steps above)
        if not args.no_phases:
            clock = PhaseClock(device)
            trainer.phase_clock = clock
            phase_batches = batches[args.warmup:args.warmup + args.steps]
            for batch in phase_batches:
                clock.start()
                ours(batch)
            trainer.phase_clock = None
            result["ours_phase_seconds"] = clock.medians(len(phase_batches))
            if upstream:
                clock = PhaseClock(device)
                for batch in phase_batches:
                    upstream.set_input(batch)
                    clock.start()
                    upstream.phase_step(clock)
                result["upstream_phase_seconds"] = clock.medians(len(phase_batches))

        # memory: each side's resident tensors + the transient peak of one more step
        peak_batch = batches[-1]
        ours_resident = resident_bytes([trainer.nets, trainer.objective], trainer.optimizers.values())
        ours_transient = transient_peak(device, lambda: ours(peak_batch))
        result["memory_measure"] = ("cuda max_memory_allocated" if device.type == "cuda" else
                                    "cpu: process RSS above the pre-step level, sampled every 2 ms (approximate)")
        result["ours_resident_mb"] = round(ours_resident / 2**20, 1)
        result["ours_peak_memory_mb"] = round((ours_resident + ours_transient) / 2**20, 1)
        if upstream:
            upstream.set_input(peak_batch)
            their_transient = transient_peak(device, upstream.step)
            their_resident = resident_bytes([upstream.model], upstream.optimizers())
            result["upstream_resident_mb"] = round(their_resident / 2**20, 1)
            result["upstream_peak_memory_mb"] = round((their_resident + their_transient) / 2**20, 1)
        else:
            result["upstream_resident_mb"] = result["upstream_peak_memory_mb"] = None
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
