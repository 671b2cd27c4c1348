"""A Kedro dataset that logs the final classifier to the active MLflow run and registers it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError

from image_classifier import tracking


class MlflowClassifierDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saves ``{"model": keras.Model, "class_names": [...], "input_size": int}``, and optionally
    ``"limits"`` (ingestion's ``max_pixels``, ``min_side``, ``max_file_bytes``, which the served
    model applies to every request), as a registered pyfunc model, and records its version and URI
    in ``filepath``. Loading reads that record and gives ``{"version", "model_uri", "model"}``, the
    model reloaded as MLflow serves it.

    When no run is active (tracking disabled for the pipeline), it logs nothing and records
    nothing (and drops an earlier run's record): the model is still on disk through the catalog's Keras dataset.
    """

    def __init__(
        self,
        filepath: str,
        name: str = "model",
        registered_model_name: str | None = tracking.REGISTERED_MODEL_NAME,
        metadata: dict[str, Any] | None = None,
    ):
        self._path = Path(filepath)
        self._name = name
        self._registered_model_name = registered_model_name
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        if mlflow.active_run() is None:
            # An earlier run's record would otherwise pass for this run's model.
            self._path.unlink(missing_ok=True)
            return
        logged = tracking.log_classifier(
            data["model"],
            data["class_names"],
            data["input_size"],
            self._name,
            self._registered_model_name,
            limits=data.get("limits"),
            tta=data.get("tta", "none"),
        )
        record = {
            "run_id": mlflow.active_run().info.run_id,
            "version": str(logged.registered_model_version),
            "model_uri": logged.model_uri,
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(record, indent=2))

    def load(self) -> dict[str, Any]:
        if not self._path.exists():
            raise DatasetError(
                f"{self._path}: no model logged yet (is MLflow tracking on for this pipeline?)"
            )
        record = json.loads(self._path.read_text())
        return {**record, "model": mlflow.pyfunc.load_model(record["model_uri"])}

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": str(self._path),
            "name": self._name,
            "registered_model_name": self._registered_model_name,
        }
