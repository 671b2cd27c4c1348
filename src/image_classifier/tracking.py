"""MLflow glue: logging the final model as a pyfunc and registering it."""

from __future__ import annotations

import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

import image_classifier
from image_classifier.serving import INPUT_NAME, LIMIT_KEYS, probability_column, serving_limits

REGISTERED_MODEL_NAME = "image_classifier"
CHAMPION_ALIAS = "champion"

# Named explicitly: letting MLflow infer requirements reloads the model in a subprocess,
# which costs a TensorFlow import and a model load for every logged model.
_SERVING_PACKAGES = ("tensorflow-cpu", "keras", "numpy", "pandas", "pillow", "mlflow")


def scalar_metrics(values: dict[str, float]) -> dict[str, Any]:
    """``{name: value}`` → the single-step form kedro-mlflow's metrics datasets log."""
    return {name: {"value": float(value), "step": 0} for name, value in values.items()}


def model_signature(class_names: list[str]) -> ModelSignature:
    """Images in (see ``serving.as_batch``); a label and one probability per class out.

    The input is an object tensor because a uint8 one makes the scoring server cast JSON numbers
    to uint8 before the model sees them (0.5 becomes 0, silently), and because base64 strings of
    files must fit the same input; MLflow lets any array through a (-1,) object spec, and the
    model checks what it gets.
    """
    inputs = Schema([TensorSpec(np.dtype(object), (-1,), INPUT_NAME)])
    outputs = Schema(
        [ColSpec("string", "label")] + [ColSpec("double", probability_column(c)) for c in class_names]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _pinned(package: str) -> str:
    try:
        return f"{package}=={metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return package


def log_classifier(
    model: keras.Model,
    class_names: list[str],
    input_size: int,
    name: str = "model",
    registered_model_name: str | None = REGISTERED_MODEL_NAME,
    limits: dict[str, int] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log ``model`` in the active run as a pyfunc (and register it when a name is given).

    ``limits`` (``max_pixels``, ``min_side``, ``max_file_bytes``: ingestion's) are the guards the
    served model applies to every request; missing ones are ingestion's defaults.
    """
    model_config = {
        "class_names": list(class_names),
        "input_size": int(input_size),
        "limits": serving_limits(limits).model_dump(include=set(LIMIT_KEYS)),
    }
    package = Path(image_classifier.__file__).parent
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        # An input example would be the natural fix, but logging one fails for this model
        # (MLflow writes it before its folder exists); the signature documents the input.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        keras_path = Path(scratch) / "classifier.keras"
        model.save(keras_path)
        return mlflow.pyfunc.log_model(
            name=name,
            # Models from code: MLflow runs this file at load time instead of unpickling.
            python_model=str(package / "pyfunc_model.py"),
            artifacts={"keras_model": str(keras_path)},
            model_config=model_config,
            code_paths=[str(package)],
            signature=model_signature(class_names),
            pip_requirements=[_pinned(p) for p in _SERVING_PACKAGES],
            registered_model_name=registered_model_name,
        )
