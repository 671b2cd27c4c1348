"""MLflow glue: logging the final model as a pyfunc and registering it."""

from __future__ import annotations

import base64
import io
import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image

import image_classifier
from image_classifier.serving import INPUT_NAME, LIMIT_KEYS, probability_column, serving_limits

if TYPE_CHECKING:
    import keras  # every node module imports this one; Kedro imports those at start-up

REGISTERED_MODEL_NAME = "image_classifier"
CHAMPION_ALIAS = "champion"

# Named explicitly: letting MLflow infer requirements reloads the model in a subprocess,
# which costs a TensorFlow import and a model load for every logged model.
_SERVING_PACKAGES = ("keras", "numpy", "pandas", "pillow", "mlflow")
# Whichever TensorFlow build this machine has (make setup's cpu, or gpu with GPU=1).
_TENSORFLOW_BUILDS = ("tensorflow-cpu", "tensorflow")


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


def _tensorflow_build() -> str:
    for build in _TENSORFLOW_BUILDS:
        try:
            metadata.version(build)
            return build
        except metadata.PackageNotFoundError:
            continue
    return _TENSORFLOW_BUILDS[0]


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
    tta: str = "none",
) -> mlflow.models.model.ModelInfo:
    """Log ``model`` in the active run as a pyfunc (and register it when a name is given).

    ``limits`` (``max_pixels``, ``min_side``, ``max_file_bytes``: ingestion's) are the guards the
    served model applies to every request; missing ones are ingestion's defaults. ``tta`` is the
    test-time augmentation it predicts with (``tta.MODES``).
    """
    # MLflow logs a model's model_config as run parameters: only the limits go there, because a
    # server may tighten them at load time (model_config overrides); the rest is an artifact, so
    # that the run's parameters do not repeat backbone.input_size and the class names.
    model_config = {"limits": serving_limits(limits).model_dump(include=set(LIMIT_KEYS))}
    described = {"class_names": list(class_names), "input_size": int(input_size), "tta": tta}
    package = Path(image_classifier.__file__).parent
    with tempfile.TemporaryDirectory() as scratch:
        keras_path = Path(scratch) / "classifier.keras"
        model.save(keras_path)
        classes_path = Path(scratch) / "classes.json"
        classes_path.write_text(json.dumps(described))
        return mlflow.pyfunc.log_model(
            name=name,
            # Models from code: MLflow runs this file at load time instead of unpickling.
            python_model=str(package / "pyfunc_model.py"),
            artifacts={"keras_model": str(keras_path), "classes": str(classes_path)},
            model_config=model_config,
            code_paths=[str(package)],
            signature=model_signature(class_names),
            # What a REST client sends (README, "Serving"): the model page shows it as the
            # request to copy, and MLflow checks at logging time that the model answers it.
            input_example={INPUT_NAME: np.array([example_photo()], dtype=object)},
            pip_requirements=[_pinned(p) for p in (_tensorflow_build(), *_SERVING_PACKAGES)],
            registered_model_name=registered_model_name,
        )


def example_photo() -> str:
    """A small JPEG as base64 text, as in a request to the served model."""
    # Varied pixels: a flat image would compress to almost nothing and look like a broken file.
    pixels = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
