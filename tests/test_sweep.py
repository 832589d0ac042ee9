"""A real ``dvc exp`` sweep, queued and run two at a time, read back from the workspace's MLflow store.

A temporary git + DVC repository gets the project's train, test and evaluate stages (from dvc.yaml, as they
are), the package sources they depend on, the tiny prepared data set (``dvc add``-ed) and tiny params.
Two experiments (``train.lr`` 0.001 and 0.002) are queued with one ``-S`` sweep and run with
``dvc queue start -j 2``: both run at once in temporary workspaces under ``.dvc/tmp/exps/``. Then:
the store in the repository root holds both runs (name = DVC experiment name, the swept param, evaluation
metrics, the sample grid), ``dvc exp show`` lists each run id, and MLflow's compare page of the two runs,
rendered in headless Chromium, shows the swept param and a metric for both.

Screenshot for the README: ``CASD_SCREENSHOTS=docs pytest -m slow tests/test_sweep.py`` writes
``docs/mlflow_sweep_compare.png``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from casd.tracking import runs_page
from helpers import chromium, mlflow_process, render_page, run_ok, tiny_dvc_repo, tiny_pipeline_params

pytestmark = pytest.mark.slow

LRS = ("0.001", "0.002")


@pytest.fixture(scope="module")
def sweep(tiny_prepared):
    """The repository after a queued two-experiment sweep run with ``-j 2``."""
    # outside pytest's basetemp: a concurrent pytest run may prune it while the queue still runs here
    home = Path(tempfile.mkdtemp(prefix="casd-sweep-"))
    try:
        yield _queued_sweep(home / "repo", tiny_prepared)
    finally:
        if (home / "repo" / ".dvc").is_dir():  # queue workers must not outlive the repository
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=home / "repo", capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def _queued_sweep(repo: Path, tiny_prepared: Path) -> dict:
    env = tiny_dvc_repo(repo, tiny_prepared, tiny_pipeline_params())

    started = time.monotonic()
    run_ok(["dvc", "exp", "run", "--queue", "-S", f"train.lr={','.join(LRS)}"], repo, env)
    # the workers outlive the command and keep its output streams: no pipes
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120, check=True)
    deadline = time.monotonic() + 420
    while True:
        status = run_ok(["dvc", "queue", "status"], repo, env)
        if not re.search(r"\b(Queued|Running)\b", status) and re.search(r"\b(Success|Failed)\b", status):
            break
        if time.monotonic() > deadline:
            subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=60)
            pytest.fail(f"sweep not done after 420 s:\n{status}")
        time.sleep(2)
    elapsed = time.monotonic() - started
    subprocess.run(["dvc", "queue", "stop"], cwd=repo, env=env, capture_output=True, timeout=60)
    logs = {}
    for task in re.findall(r"^(\S+)\s.*\bFailed\b", status, flags=re.M):
        logs[task] = subprocess.run(["dvc", "queue", "logs", task], cwd=repo, env=env, capture_output=True,
                                    text=True, timeout=60).stdout[-4000:]
    assert "Failed" not in status, f"{status}\n{logs}"
    shown = json.loads(run_ok(["dvc", "exp", "show", "--json"], repo, env))
    return {"repo": repo, "env": env, "status": status, "shown": shown, "elapsed": elapsed}


def _experiments(shown: list) -> dict[str, dict]:
    """{experiment name: {"params": ..., "metrics": ...}} from ``dvc exp show --json``."""
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                if rev.get("name") and data.get("metrics"):
                    found[rev["name"]] = {"params": data["params"]["params.yaml"]["data"],
                                          "metrics": {f: m["data"] for f, m in data["metrics"].items()}}
    return found


def test_queued_parallel_sweep_lands_in_the_workspace_store(sweep):
    from mlflow.tracking import MlflowClient

    repo = sweep["repo"]
    experiments = _experiments(sweep["shown"])
    assert len(experiments) == 2, sweep["shown"]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("casd")
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(experiments), (set(runs), set(experiments))
    swept = set()
    for name, exp in experiments.items():
        run = runs[name]
        # dvc exp show -> MLflow: the run id is a metrics column; MLflow -> DVC: the name as run name and tag
        assert exp["metrics"]["metrics/mlflow_run.json"]["run_id"] == run.info.run_id
        assert run.data.tags["dvc.exp_name"] == name and run.info.status == "FINISHED"
        assert run.data.params["train.lr"] == str(exp["params"]["train"]["lr"])
        swept.add(run.data.params["train.lr"])
        # the evaluate stage (another process, in the same temporary workspace) logged onto the same run
        assert run.data.metrics["eval/ssim"] == pytest.approx(exp["metrics"]["metrics/eval.json"]["ssim"])
        assert "eval/psnr" in run.data.metrics and "final/g_total" in run.data.metrics
        assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == \
            ["samples/final_test_pairs.png"]
        # artifacts live in the workspace's mlruns/, not in the deleted temporary workspace
        assert Path(run.info.artifact_uri).is_relative_to(repo / "mlruns")
        assert (Path(run.info.artifact_uri) / "samples" / "final_test_pairs.png").is_file()
    assert swept == set(LRS)
    print(f"sweep of 2 experiments with -j 2: {sweep['elapsed']:.0f} s")




def _mlflow_ui(repo: Path, env: dict):
    """``mlflow ui`` started in ``repo`` (it opens ./mlflow.db there), on a free port; stopped afterwards."""
    return mlflow_process("ui", ["--workers", "1"], cwd=repo, log_path=repo.parent / "ui.log", env=env)




def _render(browser: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """Visible text of ``url`` after its scripts ran (and a screenshot when asked)."""
    return render_page(browser, url, profile, window="1400,1100", budget_ms=20000, timeout_s=120,
                       screenshot=screenshot)[1]


def test_mlflow_compare_page_of_the_sweep_in_headless_chromium(sweep, tmp_path):
    browser = chromium()
    from mlflow.tracking import MlflowClient

    repo = sweep["repo"]
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name("casd").experiment_id
    runs = client.search_runs([experiment_id])
    shots = os.environ.get("CASD_SCREENSHOTS")
    with _mlflow_ui(repo, sweep["env"]) as url:
        compare = (f"{url}/#/compare-runs?runs={json.dumps([r.info.run_id for r in runs])}"
                   f"&experiments={json.dumps([experiment_id])}")
        compare = compare.replace(" ", "")
        for attempt in range(3):  # the single-page app fetches over the API; a busy machine may need another look
            shot = Path(shots) / "mlflow_sweep_compare.png" if shots and attempt == 0 else None
            text = _render(browser, compare, tmp_path / f"profile-{attempt}", shot)
            if all(r.info.run_name in text for r in runs) and "eval/ssim" in text:
                break
        assert "train.lr" in text and all(lr in text for lr in LRS), text[:2000]
        assert all(r.info.run_name in text for r in runs) and "eval/ssim" in text, text[:2000]
        ssim = [f"{r.data.metrics['eval/ssim']:.3f}"[:4] for r in runs]   # shown rounded; its first digits
        assert all(s in text for s in ssim), (ssim, text[:2000])

        # the experiment opens on its runs table, with both runs named after their DVC experiments
        text = _render(browser, runs_page(url, experiment_id), tmp_path / "profile-runs")
        assert all(r.info.run_name in text for r in runs), text[:2000]
