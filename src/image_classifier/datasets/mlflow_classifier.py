"""A write-only Kedro dataset that logs the final classifier to the active MLflow run."""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError

from image_classifier import tracking


class MlflowClassifierDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saves ``{"model": keras.Model, "class_names": [...], "input_size": int}`` as a registered
    pyfunc model. Loading, later in the same run, gives ``{"version", "model_uri", "model"}`` of
    what was logged, the model reloaded as MLflow serves it.

    When no run is active (tracking disabled for the pipeline), it logs nothing: the model is
    still on disk through the catalog's Keras dataset.
    """

    def __init__(
        self,
        name: str = "model",
        registered_model_name: str | None = tracking.REGISTERED_MODEL_NAME,
        metadata: dict[str, Any] | None = None,
    ):
        self._name = name
        self._registered_model_name = registered_model_name
        self._logged: mlflow.models.model.ModelInfo | None = None
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        if mlflow.active_run() is None:
            return
        self._logged = tracking.log_classifier(
            data["model"], data["class_names"], data["input_size"], self._name, self._registered_model_name
        )

    def load(self) -> dict[str, Any]:
        if self._logged is None:
            raise DatasetError("no model logged in this run (is MLflow tracking on for this pipeline?)")
        return {
            "version": str(self._logged.registered_model_version),
            "model_uri": self._logged.model_uri,
            "model": mlflow.pyfunc.load_model(self._logged.model_uri),
        }

    def _describe(self) -> dict[str, Any]:
        return {"name": self._name, "registered_model_name": self._registered_model_name}
