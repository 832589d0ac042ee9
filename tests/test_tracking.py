"""MLflow tracking of a training run, read back through MlflowClient."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from casd.losses import Objective
from casd.tracking import (EXPERIMENT_KIND_TAG, CopiedStore, Tracker, TrackingConfig, TrackingUnavailable, _refused,
                           open_run_from_file)
from casd.train.job import Outputs, TrainJob
from casd.train.loop import NonFiniteLossError, train
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
    client = MlflowClient(store["uri"])
    assert client.get_experiment(info["experiment_id"]).name == "casd-test"
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == info["experiment_id"]
    # the UI opens the experiment on its training runs, not on the GenAI overview
    assert client.get_experiment(info["experiment_id"]).tags[EXPERIMENT_KIND_TAG[0]] == EXPERIMENT_KIND_TAG[1]
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
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "train/lr")]
    assert len(lrs) == 6 and lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)
    assert client.get_metric_history(run.info.run_id, "train/samples_per_s")[0].value > 0
    assert "final/g_total" in run.data.metrics and "epoch/d_pb" in run.data.metrics
    # artifacts: sample grids every sample_every (2) steps, the final grid, the loss table, the generator
    samples = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {"step_0000002.png", "step_0000004.png", "step_0000006.png", "final_test_pairs.png"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/generator.pt"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "metrics")] == ["metrics/train_loss.csv"]
    # the generator as an MLflow Model in the run, registered: one version of casd-generator for this run
    assert "generator/MLmodel" in [a.path for a in client.list_artifacts(run.info.run_id, "generator")]
    [version] = client.search_model_versions(f"name='casd-generator' and run_id='{run.info.run_id}'")
    assert version.source == f"runs:/{run.info.run_id}/generator" and version.status == "READY"
    local = client.download_artifacts(run.info.run_id, "samples/final_test_pairs.png", str(tmp_path))
    from PIL import Image

    assert Image.open(local).size == (4 * SIZE[1], 6 * SIZE[0])

    # a later stage logs into the same run through the run file, in the store its own config names
    later = open_run_from_file(TrackingConfig(uri=store["uri"], experiment="casd-test"), out.run_file)
    later.log_metrics({"eval/ssim": 0.5}, step=6)
    assert client.get_run(info["run_id"]).data.metrics["eval/ssim"] == 0.5
    # a run file whose run is not in this checkout's store is refused, not followed into another store
    with pytest.raises(Exception, match=info["run_id"]):
        open_run_from_file(TrackingConfig(uri=f"sqlite:///{store['root'] / 'elsewhere.db'}"), out.run_file)


def test_failed_run_is_marked_failed(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original = Objective.generator_terms

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms["gan"] = terms["gan"] + float("inf")
        return terms

    monkeypatch.setattr(Objective, "generator_terms", poisoned)
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
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert TrackingConfig(uri="sqlite:///params.db").resolved_uri() == f"sqlite:///{tmp_path.resolve()}/from-env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert TrackingConfig().resolved_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert TrackingConfig(uri="http://mlflow.example:5000").resolved_uri() == "http://mlflow.example:5000"
    assert TrackingConfig(uri="sqlite:////abs/m.db").resolved_uri() == "sqlite:////abs/m.db"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on return: nothing listens there


def test_unreachable_server_warns_once_and_training_writes_its_outputs(store, tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = Outputs.under(tmp_path)
    recorded = tmp_path / "recorded_run.json"
    recorded.write_text('{"run_id": "abc"}')
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainJob.from_params(tracked_params(store, checkpoint_every_steps=0)), store["data"], out)
        # the evaluate stage's ways in: refused at once, without a second warning
        with pytest.raises(TrackingUnavailable):
            open_run_from_file(TrackingConfig(), recorded)
        assert not Tracker.start(TrackingConfig(), {}).active
    elapsed = time.monotonic() - started
    mine = [str(w.message) for w in caught if "MLflow" in str(w.message)]
    assert len(mine) == 1 and "unreachable" in mine[0] and uri in mine[0], mine
    assert out.model.is_file() and out.metrics.is_file() and out.samples.is_file()
    assert json.loads(out.run_file.read_text())["run_id"] is None
    assert elapsed < 60, f"{elapsed:.0f} s"  # MLflow's own retries alone take minutes


def _log_one_run(uri_or_none: str | None = None) -> Tracker:
    config = TrackingConfig(uri=uri_or_none) if uri_or_none else TrackingConfig()
    tracker = Tracker.start(config, {"train": {"lr": 0.001}}, run_name="r")
    assert tracker.active
    tracker.log_image(np.zeros((4, 4, 3), np.uint8), "samples/grid.png")
    tracker.end()
    return tracker


def test_copied_checkout_refuses_the_copied_store_and_never_writes_into_the_original(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    first = _log_one_run()
    assert (original / "mlruns" / "casd" / first.run_id / "artifacts" / "samples" / "grid.png").is_file()
    shutil.copytree(original, copy)
    before = sorted(p.relative_to(original) for p in original.rglob("*"))
    original_db = (original / "mlflow.db").read_bytes()

    monkeypatch.chdir(copy)
    # a later stage of the copied run (evaluate, with train cached) and a new training in the copy
    run_file = copy / "run.json"
    run_file.write_text(json.dumps({"run_id": first.run_id}))
    with pytest.raises(CopiedStore) as refused:
        open_run_from_file(TrackingConfig(), run_file)
    message = str(refused.value)
    assert "\n" not in message and str(copy / "mlflow.db") in message and str(original / "mlruns") in message
    assert "fix:" in message and "MLFLOW_TRACKING_URI" in message and "mlflow server" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not Tracker.start(TrackingConfig(), {"train": {"lr": 0.001}}).active
    assert not [w for w in caught if "MLflow" in str(w.message)]  # refused once per process, said once
    _refused.clear()  # as in a new process: a new training in the copy is refused with the same line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not Tracker.start(TrackingConfig(), {"train": {"lr": 0.001}}).active
    assert [str(w.message) for w in caught if "MLflow" in str(w.message)] == [f"MLflow tracking off for this run: "
                                                                             f"{message}"]
    # nothing of the original changed, and the copy's store is left as it came
    assert sorted(p.relative_to(original) for p in original.rglob("*")) == before
    assert (original / "mlflow.db").read_bytes() == original_db
    assert not (copy / "mlruns" / "casd" / first.run_id / "artifacts" / "eval").exists()
    # the fix named in the line: a fresh store in the copy
    (copy / "mlflow.db").rename(copy / "mlflow.db.copied")
    shutil.move(copy / "mlruns", copy / "mlruns.copied")
    logged = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", _ONE_RUN], cwd=copy,
                            capture_output=True, text=True, timeout=240)  # a new process: MLflow caches stores
    assert logged.returncode == 0, logged.stderr[-2000:]
    location, second = logged.stdout.split()[-2:]
    assert (copy / "mlruns" / "casd" / second / "artifacts" / "samples" / "grid.png").is_file()
    assert location == str(copy / "mlruns" / "casd")
    assert not (original / "mlruns" / "casd" / second).exists()


_ONE_RUN = textwrap.dedent("""
    import numpy as np
    from casd.tracking import Tracker, TrackingConfig
    tracker = Tracker.start(TrackingConfig(), {"train": {"lr": 0.001}}, run_name="r")
    assert tracker.active
    tracker.log_image(np.zeros((4, 4, 3), np.uint8), "samples/grid.png")
    tracker.end()
    print(tracker.client.get_experiment(tracker.experiment_id).artifact_location, tracker.run_id)
""")


def test_queued_experiment_logs_into_the_workspace_store(tmp_path, monkeypatch):
    """``dvc exp run --queue`` runs stages in .dvc/tmp/exps/<tmp>/ with DVC_ROOT = the workspace."""
    workspace = tmp_path / "workspace"
    temp = workspace / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(workspace))
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.chdir(temp)
    tracker = _log_one_run()
    assert not (temp / "mlflow.db").exists() and not (temp / "mlruns").exists()
    from mlflow.tracking import MlflowClient

    run = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").get_run(tracker.run_id)
    assert run.data.tags["dvc.exp_name"] == "lucky-lark"
    assert (workspace / "mlruns" / "casd" / tracker.run_id / "artifacts" / "samples" / "grid.png").is_file()


_WRITER = textwrap.dedent("""
    import sys
    from casd.tracking import Tracker, TrackingConfig
    tracker = Tracker.start(TrackingConfig(uri=sys.argv[1]), {"train": {"lr": float(sys.argv[2])}},
                            run_name="lr" + sys.argv[2])
    assert tracker.active
    for step in range(30):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    tracker.end()
    print(tracker.run_id)
""")


def test_two_processes_share_a_fresh_sqlite_store(tmp_path):
    """``dvc queue start -j 2``: two trainings create and write one sqlite store at the same time."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-W", "error::UserWarning", "-c", _WRITER, uri, lr],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
             for lr in ("0.001", "0.002")]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("casd").experiment_id])
    assert sorted(r.data.params["train.lr"] for r in runs) == ["0.001", "0.002"]
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 30 for r in runs)
