"""Training throughput: one full train step (G + D) vs the data loader alone, samples/s.

    python benchmarks/bench_train.py                               # params.yaml (demo profile), prepared data/
    python benchmarks/bench_train.py --set train.batch_size=16 --set loss.cx=0 --steps 20
    python benchmarks/bench_train.py --params params-deepfashion.yaml --set train.amp=bf16   # on a GPU

The step is exactly what training runs (:meth:`casd.train.loop.Trainer.train_step`:
generator forward, every loss term of non-zero weight, D forward, both
backward passes and optimiser steps), fed from the real loader; the loader
figure is the DataLoader plus the batched pose-map rendering on the training
device, with no model. The loader must be several times faster than the step
(it is not the bottleneck). ``step_cpu_seconds`` (process CPU time per step)
tells what a step costs on a busy shared machine, where wall time is noisy. Tracking is off and nothing is written outside a
temporary folder. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml


def _override(params: dict, assignment: str) -> None:
    key, _, value = assignment.partition("=")
    section, _, name = key.partition(".")
    params.setdefault(section, {})[name] = yaml.safe_load(value)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a param (repeatable), e.g. train.batch_size=8")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--loader-batches", type=int, default=50)
    args = parser.parse_args(argv)

    from casd.config import load_params
    from casd.train.job import Outputs, TrainJob
    from casd.train.loop import Trainer

    warnings.filterwarnings("ignore")
    params = load_params(args.params)
    for assignment in args.set:
        _override(params, assignment)
    params.setdefault("train", {}).update(resume="never")
    params.setdefault("tracking", {})["enabled"] = False
    job = TrainJob.from_params(params)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(job, args.data_root, Outputs.under(tmp))
        device = trainer.device

        # loader alone (+ pose rendering on the device), over as many epochs as needed
        def batches():
            epoch = 0
            while True:
                trainer.sampler.set_epoch(epoch)
                yield from trainer.loader
                epoch += 1

        it = batches()
        next(it)
        samples, start = 0, time.perf_counter()
        for _ in range(args.loader_batches):
            batch = trainer.to_device(next(it))
            samples += batch.source.shape[0]
        _sync(device)
        loader_rate = samples / (time.perf_counter() - start)

        # full train steps
        trainer.nets.train()
        batch_list = [trainer.to_device(next(it)) for _ in range(args.warmup + args.steps)]
        for batch in batch_list[:args.warmup]:
            trainer.train_step(batch)
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch in batch_list[args.warmup:]:
            trainer.train_step(batch)
        _sync(device)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
        step_rate = sum(b.source.shape[0] for b in batch_list[args.warmup:]) / seconds

    result = {
        "device": str(device), "threads": torch.get_num_threads(), "image_size": list(job.image_size),
        "batch_size": job.train.batch_size, "amp": job.train.amp, "losses": list(trainer.objective.active),
        "step_seconds": round(seconds / args.steps, 4),
        # CPU time of this process per step: on a shared machine, what a step costs without the contention
        "step_cpu_seconds": round(cpu_seconds / args.steps, 4), "train_samples_per_s": round(step_rate, 2),
        "loader_samples_per_s": round(loader_rate, 1), "loader_over_step": round(loader_rate / step_rate, 1),
        "epoch_seconds_estimate": round(job.train.pairs_per_epoch / step_rate, 1),
        "run_minutes_estimate": round(job.train.epochs * job.train.pairs_per_epoch / step_rate / 60, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
