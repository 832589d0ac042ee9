"""The trained generator as an MLflow Model, the way a team uses it: one shared ``mlflow server`` on 127.0.0.1
(sqlite backend, proxied artifacts), two tiny trainings logging into it, the registered ``casd-generator``
loaded with ``mlflow.pyfunc`` and served with ``mlflow models serve``; the served picture is compared with
``casd generate``'s for the same files, pixel for pixel.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from casd import cli, serving
from casd.train.job import Outputs, TrainJob
from casd.train.loop import train
from helpers import SIZE, mlflow_process, tiny_params, write_prepared

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """A shared tracking server and two trainings logged into it (as two teammates' ``dvc repro``)."""
    root = tmp_path_factory.mktemp("team")
    write_prepared(root / "data", size=tuple(SIZE))
    server_args = ["--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                   "--artifacts-destination", str(root / "server-artifacts")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    old_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        with mlflow_process("server", server_args, root, root / "server.log", env=env) as url:
            trainings = []
            for member in ("ana", "ben"):
                params = tiny_params(checkpoint_every_steps=0)
                params["tracking"] = {"enabled": True, "uri": url, "experiment": "casd-team"}
                out = Outputs.under(root / member)
                train(TrainJob.from_params(params), root / "data", out)
                trainings.append({"out": out, "run_id": json.loads(out.run_file.read_text())["run_id"]})
            yield {"root": root, "url": url, "trainings": trainings, "env": env}
    finally:
        if old_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri


def _version(team, number: int):
    from mlflow.tracking import MlflowClient

    return MlflowClient(team["url"]).get_model_version(serving.MODEL_NAME, str(number))


def _model_dir(team, number: int, tmp_path: Path) -> Path:
    from mlflow.artifacts import download_artifacts

    source = _version(team, number).source  # runs:/<run id>/generator
    return Path(download_artifacts(source, dst_path=str(tmp_path / f"v{number}"), tracking_uri=team["url"]))


def _logged_row(model_dir: Path) -> dict:
    """The model's serving example (one row), as MLflow logged it."""
    split = json.loads((model_dir / "serving_input_example.json").read_text())["dataframe_split"]
    [row] = split["data"]
    return dict(zip(split["columns"], row))


def _generate_with_cli(team, row: dict, tmp_path: Path) -> np.ndarray:
    """``casd generate`` on the files the row carries, with the first training's generator file."""
    files = tmp_path / "inputs"
    files.mkdir()
    (files / "source.jpg").write_bytes(base64.b64decode(row["source_image"]))
    (files / "parsing.png").write_bytes(base64.b64decode(row["source_parsing"]))
    (files / "pose.json").write_text(row["target_keypoints"])
    cli.main(["generate", "--checkpoint", str(team["trainings"][0]["out"].model),
              "--source", str(files / "source.jpg"), "--parsing", str(files / "parsing.png"),
              "--pose", str(files / "pose.json"), "--out", str(tmp_path / "generated"), "--no-strip"])
    [picture] = (tmp_path / "generated").glob("*.png")
    return np.array(Image.open(picture))


def test_each_training_registers_a_version_of_a_pickle_free_model(team, tmp_path):
    from mlflow.models import Model

    for number, training in enumerate(team["trainings"], start=1):
        version = _version(team, number)
        assert version.run_id == training["run_id"] and version.source == f"runs:/{training['run_id']}/generator"
        model_dir = _model_dir(team, number, tmp_path)
        names = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()}
        assert {"MLmodel", "serving_input_example.json", "served_model.py"} <= names
        assert not [n for n in names if n.endswith((".pkl", ".pickle"))], names  # models from code: no pickle
        [generator] = [model_dir / n for n in names if n.endswith(".pt")]
        assert generator.read_bytes() == training["out"].model.read_bytes()
        assert torch.load(generator, weights_only=True)["format"] == "casd-generator"
        signature = Model.load(model_dir / "MLmodel").signature
        assert signature.inputs.input_names() == list(serving.INPUT_COLUMNS)
        assert signature.outputs.input_names() == [serving.OUTPUT_COLUMN]
    # the artifacts went through the server into its artifact folder, not into a local mlruns/
    assert len(list((team["root"] / "server-artifacts").rglob("generator.pt"))) >= 2
    assert not (team["root"] / "mlruns").exists()


def test_pyfunc_gives_casd_generate_picture(team, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    model_dir = _model_dir(team, 1, tmp_path)
    row = _logged_row(model_dir)
    answer = mlflow.pyfunc.load_model(str(model_dir)).predict(pd.DataFrame([row]))
    assert list(answer.columns) == [serving.OUTPUT_COLUMN]
    picture = serving.decode_picture(answer[serving.OUTPUT_COLUMN][0])
    assert picture.shape == (*SIZE, 3) and picture.dtype == np.uint8
    assert np.array_equal(picture, _generate_with_cli(team, row, tmp_path))


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_model_answers_the_logged_example_with_casd_generate_picture(team, tmp_path):
    """``mlflow models serve -m models:/casd-generator/1 --env-manager local``, POST of the serving example."""
    env = {**team["env"], "MLFLOW_TRACKING_URI": team["url"]}
    with mlflow_process("models serve", ["-m", f"models:/{serving.MODEL_NAME}/1", "--env-manager", "local"],
                        tmp_path, tmp_path / "serve.log", env=env) as url:
        model_dir = _model_dir(team, 1, tmp_path)
        status, answer = _post(url, (model_dir / "serving_input_example.json").read_bytes())
        assert status == 200, answer
        [prediction] = answer["predictions"]
        picture = serving.decode_picture(prediction[serving.OUTPUT_COLUMN])
        assert np.array_equal(picture, _generate_with_cli(team, _logged_row(model_dir), tmp_path))
        # a bad request gets a 400 naming the row and the column
        bad = {"dataframe_split": {"columns": list(serving.INPUT_COLUMNS), "data": [["not base64!", "", "[]"]]}}
        status, answer = _post(url, json.dumps(bad).encode())
        assert status == 400 and "input row 0, source_image: not base64" in answer["message"], answer
