"""The trained generator as an MLflow Model: logged by the train stage, registered, served over REST.

The model is a pyfunc. Its input is a table, one row per (person, target pose)::

    source_image      str  base64 of the person's picture (JPEG or PNG, any size; resized bicubic to the
                           generator's size, as ``casd generate --source PICTURE`` does)
    source_parsing    str  base64 PNG of its merged region ids 0..7 (the segment stage's format)
    target_keypoints  str  JSON: 18 [y, x] in the generator's frame (-1 = missing), or
                           {"size": [H, W], "keypoints": [...]} in another frame (as ``casd generate --pose``)

and its output a table with one column, ``image``: base64 PNG of the generated picture (uint8 [H, W, 3]), the
picture ``casd generate`` writes for the same files. Over REST (``mlflow models serve``) the body is
``{"dataframe_split": {"columns": [...], "data": [[...]]}}`` and the answer ``{"predictions": [{"image": ...}]}``.

The model's files are MLflow's ``MLmodel``, the generator file (tensors only, read with
``weights_only=True``) and the model code ``casd/served_model.py`` (MLflow's models from code): no pickled
Python object. Loading needs the ``casd`` package installed (``--env-manager local`` in the project's
environment). ``model_config={"device": "cuda"}`` at load time runs it on a GPU.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image

from casd.data.layout import PHASES, PreparedLayout
from casd.data.pose import load_keypoints
from casd.data.tables import read_pairs
from casd.errors import CasdError, DataError

MODEL_NAME = "casd-generator"        # the registered model (tracking.model_name): one version per training run
ARTIFACT_NAME = "generator"          # the model's folder among its run's artifacts, and its generator file
INPUT_COLUMNS = ("source_image", "source_parsing", "target_keypoints")
OUTPUT_COLUMN = "image"
MODEL_CODE = Path(__file__).with_name("served_model.py")
_BATCH = 8                           # rows per generator call


def encode_png(picture: np.ndarray) -> str:
    """uint8 [H, W, 3] (or [H, W] ids) -> base64 PNG."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_picture(text: str) -> np.ndarray:
    """base64 PNG / JPEG -> its pixels as stored (uint8 [H, W, 3] or [H, W])."""
    with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as img:
        return np.array(img)


def example_row(source_image: str | Path, source_parsing: str | Path, target_keypoints: Any) -> dict[str, str]:
    """One input row from files: a picture, its parsing PNG and keypoints [18, 2] (or a keypoints JSON file)."""
    if isinstance(target_keypoints, (str, Path)):
        keypoints = Path(target_keypoints).read_text(encoding="utf-8")
    else:
        keypoints = json.dumps(np.asarray(target_keypoints).astype(int).tolist())
    return {"source_image": base64.b64encode(Path(source_image).read_bytes()).decode("ascii"),
            "source_parsing": base64.b64encode(Path(source_parsing).read_bytes()).decode("ascii"),
            "target_keypoints": keypoints}


def prepared_example(data_root: str | Path) -> dict[str, str] | None:
    """The first pair of the prepared data (test phase first) as an input row; None without prepared pairs."""
    layout = PreparedLayout(data_root)
    for phase in reversed(PHASES):
        if not (layout.pairs(phase).is_file() and layout.keypoints(phase).is_file()):
            continue
        pairs = read_pairs(layout.pairs(phase))
        if pairs:
            source, target = pairs[0]
            return example_row(layout.image(phase, source), layout.parsing_map(phase, source),
                               load_keypoints(layout.keypoints(phase))[target])
    return None


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: :class:`casd.inference.Synthesizer` over rows of base64 pictures and keypoints JSON."""

    def load_context(self, context) -> None:
        from casd.inference import Synthesizer

        device = (getattr(context, "model_config", None) or {}).get("device", "cpu")
        self.synthesizer = Synthesizer.from_checkpoint(context.artifacts[ARTIFACT_NAME], params={}, check=False,
                                                       device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """``model_input``: a DataFrame with :data:`INPUT_COLUMNS` -> a DataFrame with column ``image``."""
        frame = pd.DataFrame(model_input)
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise _invalid(f"input lacks column(s) {', '.join(missing)}; expected {', '.join(INPUT_COLUMNS)}")
        images: list[str] = []
        rows = frame[list(INPUT_COLUMNS)].itertuples(index=False)
        with tempfile.TemporaryDirectory(prefix="casd-serve-") as tmp:
            for start in range(0, len(frame), _BATCH):
                chunk = [next(rows) for _ in range(min(_BATCH, len(frame) - start))]
                images.extend(self._generate(chunk, start, Path(tmp)))
        return pd.DataFrame({OUTPUT_COLUMN: images})

    def _generate(self, rows, first: int, folder: Path) -> list[str]:
        """Rows ``first..`` through the generator, via files as ``casd generate`` reads them."""
        from casd import visuals

        synthesizer = self.synthesizer
        columns = {}   # temporary file -> "row i, column" for error messages
        sources, poses = [], []
        for offset, row in enumerate(rows):
            index = first + offset
            image, parsing, pose = (folder / f"{index}_{c}" for c in INPUT_COLUMNS)
            pose = pose.with_suffix(".json")
            for path, column, value in zip((image, parsing, pose), INPUT_COLUMNS, row):
                columns[str(path)] = f"input row {index}, {column}"
                if not isinstance(value, str):
                    raise _invalid(f"{columns[str(path)]}: expected a string, got {type(value).__name__}")
                if column == "target_keypoints":
                    path.write_text(value, encoding="utf-8")
                    continue
                try:
                    path.write_bytes(base64.b64decode(value, validate=True))
                except (binascii.Error, ValueError) as e:
                    raise _invalid(f"{columns[str(path)]}: not base64 ({e})") from None
            try:
                sources.append(synthesizer.person(str(image), parsing=parsing))
            except DataError as e:
                raise _invalid(f"{columns.get(e.path, e.path)}: {e.problem}") from None
            poses.append(str(pose))
        try:
            generated = synthesizer.transfer_batch(sources, poses)
        except DataError as e:
            raise _invalid(f"{columns.get(e.path, e.path)}: {e.problem}") from None
        except CasdError as e:
            raise _invalid(str(e)) from None
        return [encode_png(picture) for picture in visuals.to_uint8(generated)]


def _invalid(message: str) -> Exception:
    """A bad request: MLflow's scoring server answers it with HTTP 400 and this message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", c) for c in INPUT_COLUMNS]),
                          outputs=Schema([ColSpec("string", OUTPUT_COLUMN)]))


def requirements() -> list[str]:
    """What the model's code imports, pinned to this environment (casd itself comes from its checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "torchvision", "numpy", "pillow", "pandas", "mlflow"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def save_generator_model(path: str | Path, generator_file: str | Path, example: dict[str, str]) -> Path:
    """Save ``generator_file`` as the pyfunc in the new folder ``path`` (an MLflow Model); ``example``: one input
    row (:func:`prepared_example`), which MLflow runs the model on and keeps as its input and serving example."""
    from casd import __version__

    mlflow.pyfunc.save_model(
        str(path), python_model=str(MODEL_CODE), artifacts={ARTIFACT_NAME: str(generator_file)},
        signature=signature(), input_example=pd.DataFrame([example], columns=list(INPUT_COLUMNS)),
        pip_requirements=requirements(), model_config={"device": "cpu"},
        metadata={"casd_version": __version__, "needs": "the casd package (pip install -e <casd checkout>)"})
    return Path(path)


def request_body(rows: list[dict[str, str]]) -> dict:
    """Input rows (:func:`example_row`) -> the JSON body ``mlflow models serve`` takes at ``/invocations``."""
    return {"dataframe_split": {"columns": list(INPUT_COLUMNS), "data": [[row[c] for c in INPUT_COLUMNS] for row in rows]}}
