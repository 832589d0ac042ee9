"""The code MLflow runs to load the logged generator model (models from code; see :mod:`casd.serving`)."""

import mlflow.models

from casd.serving import GeneratorModel

mlflow.models.set_model(GeneratorModel())
