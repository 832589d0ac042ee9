"""End to end: a real ``mlflow server``, its REST API, and the pages in headless Chromium.

The evaluate stage logs onto the run the training recorded in
``metrics/mlflow_run.json``; everything is read back over HTTP, the way the
MLflow UI and other tools see it. The browser test opens the static report from
disk and the MLflow run page, and checks what they render.

Screenshots on request: ``CASD_SCREENSHOTS=reports pytest -m slow tests/test_e2e_mlflow_browser.py``
writes ``reports/e2e_report.png`` and ``reports/e2e_mlflow_run.png``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from casd.evaluation import evaluate
from casd.evaluation.report import _fmt
from helpers import chromium, fake_test_stage, mlflow_process, render_page

pytestmark = pytest.mark.slow


def _http(url: str, body: dict | None = None, timeout: float = 30) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on a free 127.0.0.1 port, sqlite backend in a temp folder; stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    with mlflow_process("server", ["--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                                   "--default-artifact-root", str(root / "artifacts"), "--workers", "1"],
                        cwd=root, log_path=root / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def evaluated(mlflow_server, tiny_prepared, tmp_path_factory):
    """A 'training' run on the server, then the evaluate stage logging onto it (SSIM and PSNR only: fast)."""
    from casd.tracking import Tracker, TrackingConfig

    root = tmp_path_factory.mktemp("evaluated")
    paths = evaluate.EvaluatePaths.under(root)
    paths.test_images = tiny_prepared / "resized" / "test"
    paths.train_images = tiny_prepared / "resized" / "train"
    fake_test_stage(tiny_prepared, paths)
    paths.loss_csv.parent.mkdir(parents=True, exist_ok=True)
    paths.loss_csv.write_text("epoch,step,lr,l1,g_total\n1,10,0.001,0.9,3.0\n2,20,0.001,0.7,2.5\n")
    params = {"tracking": {"uri": mlflow_server, "experiment": "casd-e2e"}, "train": {"lr": 0.001}}
    config = TrackingConfig(uri=mlflow_server, experiment="casd-e2e")
    previous = os.environ.pop("MLFLOW_TRACKING_URI", None)  # params.yaml's uri must decide here
    try:
        train_run = Tracker.start(config, params, run_name="train-e2e")
        train_run.log_metrics({"loss/g_total": 2.5}, step=30)
        train_run.end()
        train_run.write_run_file(paths.run_file, config)
        result = evaluate.evaluate(evaluate.EvaluateConfig(metrics=("ssim", "psnr"), device="cpu", batch_size=4),
                                   paths, params=params).numbers
    finally:
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {"paths": paths, "result": result, "run_id": train_run.run_id, "url": mlflow_server}


def test_metrics_logged_onto_the_training_run_read_back_over_rest(evaluated):
    api = f"{evaluated['url']}/api/2.0/mlflow"
    result, run_id = evaluated["result"], evaluated["run_id"]
    run = _http(f"{api}/runs/get?run_id={run_id}")["run"]
    logged = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert logged["eval/ssim"] == pytest.approx(result["ssim"], rel=1e-12)
    assert logged["eval/psnr"] == pytest.approx(result["psnr"], rel=1e-12)
    assert logged["eval/baseline/ssim"] == pytest.approx(result["baseline"]["ssim"], rel=1e-12)
    assert logged["loss/g_total"] == 2.5
    assert not any(k.startswith(("eval/lpips", "eval/fid", "eval/baseline/lpips")) for k in logged)  # skipped
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["eval.skipped.fid"] == "not in evaluate.metrics"
    assert {p["key"]: p["value"] for p in run["data"]["params"]}["train.lr"] == "0.001"

    # one run in the experiment: the evaluation went onto the training run, not a new one
    experiment = _http(f"{api}/experiments/get-by-name?experiment_name=casd-e2e")["experiment"]
    runs = _http(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    history = _http(f"{api}/metrics/get-history?run_id={run_id}&metric_key=eval/ssim")["metrics"]
    assert len(history) == 1 and history[0]["value"] == pytest.approx(result["ssim"], rel=1e-12)
    artifacts = _http(f"{api}/artifacts/list?run_id={run_id}").get("files", [])
    assert {"eval", "report"} <= {a["path"] for a in artifacts}

    # and a run logged purely over REST reads back the same way
    created = _http(f"{api}/runs/create", {"experiment_id": experiment["experiment_id"], "run_name": "rest"})
    rest_id = created["run"]["info"]["run_id"]
    _http(f"{api}/runs/log-metric", {"run_id": rest_id, "key": "eval/ssim", "value": 0.25, "timestamp": 0, "step": 1})
    assert _http(f"{api}/runs/get?run_id={rest_id}")["run"]["data"]["metrics"][0]["value"] == 0.25




def _render(url: str, tmp_path: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """(DOM, visible text) of ``url`` in a fresh browser profile under ``tmp_path``."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return render_page(chromium(), url, profile, window="1280,1600", budget_ms=15000, timeout_s=90,
                       screenshot=screenshot)


def test_report_and_mlflow_run_page_render_in_headless_chromium(evaluated, tmp_path):
    shots = os.environ.get("CASD_SCREENSHOTS")
    shot_dir = Path(shots) if shots else None
    result = evaluated["result"]

    dom, text = _render(evaluated["paths"].report.resolve().as_uri(), tmp_path,
                        shot_dir / "e2e_report.png" if shot_dir else None)
    assert 'id="metrics-table"' in dom and "CASD evaluation report" in text
    assert f"SSIM {_fmt(result['ssim'])}" in text.replace("  ", " ")
    assert "skipped" in text and "not in evaluate.metrics" in text
    assert dom.count("data:image/png;base64,") >= 3 and "<svg" in dom

    url = f"{evaluated['url']}/#/experiments/"
    experiment = _http(f"{evaluated['url']}/api/2.0/mlflow/experiments/get-by-name?experiment_name=casd-e2e")
    url += f"{experiment['experiment']['experiment_id']}/runs/{evaluated['run_id']}"
    for attempt in range(3):  # the single-page app fetches over the API; a busy machine may need another look
        dom, text = _render(url, tmp_path, shot_dir / "e2e_mlflow_run.png" if shot_dir and attempt == 0 else None)
        if "eval/baseline/psnr" in text:
            break
    assert "train-e2e" in text, text[:500]
    assert "eval/ssim" in text and "eval/baseline/psnr" in text, text[:1000]
