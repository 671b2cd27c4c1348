"""A sweep entry saved as its own MLflow run, nested under the run of the ``kedro run``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError


class NestedRunDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saving ``{"name", "params", "metrics", "history"}`` logs them to a child run of the active
    run (step metrics from ``history``), so that the MLflow UI can compare the children side by
    side, and writes the record with the child's ``run_id`` to ``filepath``; loading reads it."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._path = Path(filepath)
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if not self._path.exists():
            raise DatasetError(f"{self._path}: no sweep record saved yet")
        return json.loads(self._path.read_text())

    def save(self, record: dict[str, Any]) -> None:
        record = dict(record)
        parent = mlflow.active_run()
        if parent is not None:  # else not tracked (kedro-mlflow disabled): keep the record only
            with mlflow.start_run(run_name=record["name"], nested=True) as child:
                mlflow.log_params(record["params"])
                mlflow.log_metrics(record["metrics"])
                for name, points in record.get("history", {}).items():
                    for point in points:
                        mlflow.log_metric(name, point["value"], step=point["step"])
                mlflow.set_tags({"sweep.parent": parent.info.run_id, "backbone": record["name"]})
            record["run_id"] = child.info.run_id
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(record, indent=2))

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}
