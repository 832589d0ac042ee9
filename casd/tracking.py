"""MLflow tracking: one run per training, shared by the later stages.

Where runs go: ``$MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` of
params.yaml, whose default ``sqlite:///mlflow.db`` is what ``mlflow ui`` (MLflow
3) opens when started from the repository root without flags; artifacts land
in ``./mlruns/`` beside it. Both are gitignored.

A run gets: every param of params.yaml flattened (``train.lr``, ``model.ngf``,
...), the git commit, the DVC experiment name (``$DVC_EXP_NAME``, set by
``dvc exp run``), ``degraded.*`` tags for anything that makes the numbers
incomparable with the paper (random VGG features, CPU training, loss terms
switched off), per-step metrics, sample grids and the final checkpoint. The
run id is written to ``metrics/mlflow_run.json`` so that ``evaluate`` logs
its metrics to the same run (:func:`open_run_from_file`).

:class:`Tracker` is a no-op when tracking is disabled, and on every rank but 0
under DDP, so that callers never branch on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from casd.config import flatten
from casd.errors import ConfigError
from casd.fileio import write_json

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_FILE = Path("metrics/mlflow_run.json")
_MAX_PARAM_LEN = 6000   # MLflow's limit on a param value
_BATCH = 100            # MLflow's limit on params per log_batch call


@dataclass
class TrackingConfig:
    """The ``tracking:`` section of params.yaml."""

    enabled: bool = True
    uri: str = DEFAULT_URI       # $MLFLOW_TRACKING_URI wins over this
    experiment: str = "casd"

    def __post_init__(self):
        if not self.experiment:
            raise ConfigError("params.yaml [tracking]: experiment must be a non-empty name")

    def resolved_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.uri or DEFAULT_URI


def git_commit(cwd: str | Path = ".") -> tuple[str | None, bool]:
    """(commit hash, working tree dirty) of the repository at ``cwd``; (None, False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, check=True, timeout=30).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, False


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[:_MAX_PARAM_LEN - 3] + "..."


class Tracker:
    """One MLflow run (or nothing, when ``active`` is False)."""

    def __init__(self, client=None, run_id: str | None = None):
        self.client = client
        self.run_id = run_id
        self._warned = False

    def _safely(self, action, *args, **kwargs) -> None:
        """Run a logging call; a tracking-server hiccup warns once instead of killing a long training."""
        try:
            action(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any client / network error
            if not self._warned:
                warnings.warn(f"MLflow logging to run {self.run_id} failed ({type(e).__name__}: {e}); "
                              "continuing without it (metrics/ files are still written)")
                self._warned = True

    @property
    def active(self) -> bool:
        return self.client is not None

    @classmethod
    def disabled(cls) -> "Tracker":
        return cls()

    @classmethod
    def start(cls, config: TrackingConfig, params: Mapping[str, Any], *, run_name: str | None = None,
              tags: Mapping[str, str] | None = None, resume_run_id: str | None = None) -> "Tracker":
        """Open a run: a new one, or ``resume_run_id`` (a resumed training continues its run).

        ``params`` is params.yaml as loaded (nested); it is logged flattened.
        """
        if not config.enabled:
            return cls.disabled()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(config.resolved_uri())
        if resume_run_id:
            try:
                run = client.get_run(resume_run_id)
                if run.info.lifecycle_stage == "active":
                    client.update_run(resume_run_id, status="RUNNING")
                    tracker = cls(client, resume_run_id)
                    tracker.set_tags({"resumed": "true", **(tags or {})})
                    return tracker
            except Exception as e:  # the run may live in another store (e.g. MLFLOW_TRACKING_URI changed)
                warnings.warn(f"cannot continue MLflow run {resume_run_id} ({e}); starting a new run")
        experiment = client.get_experiment_by_name(config.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.experiment)
        all_tags = dict(tags or {})
        commit, dirty = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
            all_tags["git.dirty"] = str(dirty).lower()
        if os.environ.get("DVC_EXP_NAME"):
            all_tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
        run = client.create_run(experiment_id, run_name=run_name or os.environ.get("DVC_EXP_NAME"),
                                tags=all_tags)
        tracker = cls(client, run.info.run_id)
        tracker.log_params(flatten(dict(params)))
        return tracker

    def log_params(self, flat: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(flat.items())]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._safely(self.client.log_batch, self.run_id, metrics=items[i:i + 1000])

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        """``image``: uint8 [H, W, 3]; stored as PNG at ``artifact_file`` (e.g. ``samples/step_000100.png``)."""
        if not self.active:
            return
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            Image.fromarray(image).save(path)
            parent = str(Path(artifact_file).parent)
            self._safely(self.client.log_artifact, self.run_id, str(path), None if parent == "." else parent)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._safely(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED``."""
        if self.active:
            self._safely(self.client.set_terminated, self.run_id, status)

    def write_run_file(self, path: str | Path = RUN_FILE, config: TrackingConfig | None = None) -> None:
        """Record the run id (and where it lives) for later stages; ``{"run_id": null}`` when not tracking."""
        info = {"run_id": self.run_id,
                "tracking_uri": (config.resolved_uri() if config else None) if self.active else None,
                "experiment": config.experiment if (config and self.active) else None}
        write_json(path, info)


def open_run_from_file(config: TrackingConfig, path: str | Path = RUN_FILE) -> Tracker:
    """The run a previous stage recorded in ``path`` (disabled Tracker if none was recorded).

    For the evaluate stage: ``open_run_from_file(cfg).log_metrics({"fid": ...}, step)``.
    """
    path = Path(path)
    if not config.enabled or not path.is_file():
        return Tracker.disabled()
    info = json.loads(path.read_text(encoding="utf-8"))
    if not info.get("run_id"):
        return Tracker.disabled()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or info.get("tracking_uri") or config.resolved_uri())
    client.get_run(info["run_id"])  # fails loudly if the run is not in this store
    return Tracker(client, info["run_id"])
