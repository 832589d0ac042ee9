"""MLflow tracking of a training run, read back through MlflowClient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casd import train as train_module
from casd.tracking import Tracker, TrackingConfig, open_run_from_file
from casd.train import NonFiniteLossError, Outputs, TrainJob, train
from helpers import SIZE, tiny_params, write_prepared



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    data = root / "data"
    write_prepared(data, size=tuple(SIZE))
    return {"uri": f"sqlite:///{root / 'mlflow.db'}", "data": data, "root": root}


def tracked_params(store, **train_overrides) -> dict:
    params = tiny_params(**train_overrides)
    params["tracking"] = {"enabled": True, "uri": store["uri"], "experiment": "casd-test"}
    return params


def test_training_run_is_tracked(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-a")
    out = Outputs.under(tmp_path)
    train(TrainJob.from_params(tracked_params(store, checkpoint_every_steps=0)), store["data"], out)

    info = json.loads(out.run_file.read_text())
    assert info["tracking_uri"] == store["uri"] and info["experiment"] == "casd-test"
    client = MlflowClient(store["uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    # every param, flattened
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["model.width"] == "16"
    assert run.data.params["data.image_size"] == "[32, 24]"
    assert run.data.params["tracking.experiment"] == "casd-test"
    # tags: DVC experiment, degraded settings, git commit of the code
    tags = run.data.tags
    assert tags["dvc.exp_name"] == "lr-sweep-a" and run.info.run_name == "lr-sweep-a"
    assert "degraded.cpu" in tags and "degraded.random_vgg" in tags
    assert "cx" in tags["degraded.losses_off"].split(",")
    assert len(tags.get("mlflow.source.git.commit", "x" * 40)) == 40
    # per-step losses, lr, throughput (log_every: 1 -> one point per step)
    history = client.get_metric_history(run.info.run_id, "train/l1")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/lr")] == \
           pytest.approx([1e-3] * 4 + [0.5e-3] * 2)
    assert client.get_metric_history(run.info.run_id, "train/samples_per_s")[0].value > 0
    assert "final/g_total" in run.data.metrics and "epoch/d_pb" in run.data.metrics
    # artifacts: sample grids every sample_every (2) steps, the final grid, the loss table, the generator
    samples = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"step_0000002.png", "step_0000004.png", "step_0000006.png", "final_test_pairs.png"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/generator.pt"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "metrics")] == ["metrics/train_loss.csv"]
    local = client.download_artifacts(run.info.run_id, "samples/final_test_pairs.png", str(tmp_path))
    from PIL import Image

    assert Image.open(local).size == (4 * SIZE[1], 6 * SIZE[0])

    # a later stage logs into the same run through the run file
    later = open_run_from_file(TrackingConfig(uri="sqlite:///elsewhere.db"), out.run_file)
    later.log_metrics({"eval/ssim": 0.5}, step=6)
    assert client.get_run(info["run_id"]).data.metrics["eval/ssim"] == 0.5


def test_failed_run_is_marked_failed(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original = train_module.Objective.generator_terms

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms["gan"] = terms["gan"] + float("inf")
        return terms

    monkeypatch.setattr(train_module.Objective, "generator_terms", poisoned)
    out = Outputs.under(tmp_path)
    with pytest.raises(NonFiniteLossError, match="step 1 .*gan = inf"):
        train(TrainJob.from_params(tracked_params(store)), store["data"], out)
    run_id = json.loads(out.run_file.read_text())["run_id"]
    assert MlflowClient(store["uri"]).get_run(run_id).info.status == "FAILED"


def test_disabled_tracking_and_environment_uri(tmp_path, monkeypatch):
    tracker = Tracker.start(TrackingConfig(enabled=False), {"a": {"b": 1}})
    assert not tracker.active
    tracker.log_metrics({"x": 1.0}, 1)  # no-op
    tracker.write_run_file(tmp_path / "run.json")
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] is None
    assert not open_run_from_file(TrackingConfig(), tmp_path / "run.json").active
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert TrackingConfig(uri="sqlite:///params.db").resolved_uri() == "sqlite:///from-env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert TrackingConfig().resolved_uri() == "sqlite:///mlflow.db"
