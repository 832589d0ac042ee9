"""The DVC stages, each params file -> typed configs -> one package function (dvc.yaml runs stages/<name>.py).

``casd <stage> --params FILE`` (casd.cli) calls the same functions. Each stage imports its package modules
itself, so that it loads only what it uses (dvc.yaml lists exactly those as its deps).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from casd.config import DEFAULT_PARAMS, Params, run_stage
from casd.data.config import DataConfig
from casd.data.layout import PHASES, PREPARED
from casd.fileio import remove_output_temp_files


def synth(params: Params) -> dict[str, object]:
    """data.source synthetic: write the synthetic set to data/raw; deepfashion: check data.root's layout."""
    from casd.data.synthetic import SynthConfig, run

    summary = run(params.section(DataConfig, "data"), params.section(SynthConfig, "synth"))
    print(f"synth: {json.dumps(summary, sort_keys=True)}")
    return summary


def split(params: Params) -> dict[str, object]:
    """Listed raw images -> data/split/{train,test}/<flat name>.jpg + validated pairs CSVs."""
    from casd.data import prepare

    summary = prepare.split(params.section(DataConfig, "data"))
    print("split: " + ", ".join(f"{p} {summary[p]['placed']} images / {summary[p]['pairs']} pairs"  # type: ignore
                                for p in PHASES)
          + f", {summary['links']} links followed, {summary['skipped']} skipped -> {PREPARED.split_dir}")
    return summary


def resize(params: Params) -> dict[str, int]:
    """data/split -> data/resized at data.image_size."""
    from casd.data import prepare

    data = params.section(DataConfig, "data")
    counts = prepare.resize(data)
    print(f"resize: {counts} at {data.image_size[0]}x{data.image_size[1]} ({data.resize_filter}) "
          f"-> {PREPARED.resized_dir}")
    return counts


def pose(params: Params) -> dict[str, int]:
    """Annotation CSVs -> data/pose/{train,test}.npz keypoints in the data.image_size frame."""
    from casd.data.pose import PoseConfig, extract_pose

    counts = extract_pose(params.section(DataConfig, "data"), params.section(PoseConfig, "pose"))
    print(f"pose: {counts.get('train', 0)} train, {counts.get('test', 0)} test keypoint sets -> {PREPARED.pose_dir}")
    return counts


def segment(params: Params) -> dict[str, int]:
    """LIP-20 parsing maps -> data/parsing/{train,test}, 8 merged regions at data.image_size."""
    from casd.data import prepare

    counts = prepare.segment(params.section(DataConfig, "data"))
    print(f"segment: {counts} -> {PREPARED.parsing_dir}")
    return counts


def train(params: Params) -> dict:
    """Train the generator (checkpoints/, models/generator.pt, metrics/, MLflow)."""
    from casd.train.job import TrainJob
    from casd.train.loop import train as run_training

    return run_training(TrainJob.from_params(params.values, params.path))


def test(params: Params) -> dict:
    """Generate every test pair with test.checkpoint (data/generated, data/predicted_parsing, data/strips)."""
    from casd.generation import GenerationJob, run_test

    return run_test(GenerationJob.from_params(params.values, params.path))


def evaluate(params: Params, track: bool = True) -> Any:
    """Score the test stage's pictures (metrics/eval.json, reports/), log to MLflow unless ``track`` is off."""
    from casd.evaluation.evaluate import EvaluateConfig, evaluate as run_evaluation

    return run_evaluation(params.section(EvaluateConfig, "evaluate"), params=params.values, track=track)


# What each stage writes (dvc.yaml's outs, metrics and plots; tests/test_stages.py checks): what a writer
# killed mid-file left there (even by SIGKILL) is removed before the stage runs and when it stops.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "synth": ("data/raw",), "split": ("data/split",), "resize": ("data/resized",), "pose": ("data/pose",),
    "segment": ("data/parsing",),
    "train": ("models/generator.pt", "checkpoints", "reports/train_samples.png", "metrics/train.json",
              "metrics/mlflow_run.json", "metrics/train_loss.csv"),
    "test": ("data/generated", "data/predicted_parsing", "data/strips"),
    "evaluate": ("reports/eval_pairs.csv", "reports/eval_protocol.json", "reports/index.html", "metrics/eval.json"),
}

STAGES: dict[str, Callable[[Params], Any]] = {
    "synth": synth, "split": split, "resize": resize, "pose": pose, "segment": segment, "train": train,
    "test": test, "evaluate": evaluate}


def main(name: str) -> None:
    """``stages/<name>.py``: run stage ``name`` on params.yaml; a user error is one line, exit status 1."""
    def clean_run() -> None:
        remove_output_temp_files(list(OUTPUTS[name]))
        try:
            STAGES[name](Params.load(DEFAULT_PARAMS))
        finally:
            remove_output_temp_files(list(OUTPUTS[name]))

    run_stage(clean_run)
