"""A sweep entry saved as its own MLflow run, nested under the run of the ``kedro run``."""

from __future__ import annotations

from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError


class NestedRunDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saving ``{"name", "params", "metrics", "history"}`` logs them to a child run of the active
    run (step metrics from ``history``), so that the MLflow UI can compare the children side by
    side; loading returns what was saved, with the child's ``run_id``."""

    def __init__(self, metadata: dict[str, Any] | None = None):
        self._record: dict[str, Any] | None = None
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        if self._record is None:
            raise DatasetError("nothing saved in this run yet")
        return self._record

    def save(self, record: dict[str, Any]) -> None:
        parent = mlflow.active_run()
        if parent is None:  # not tracked (e.g. kedro-mlflow disabled): keep the record only
            self._record = dict(record)
            return
        with mlflow.start_run(run_name=record["name"], nested=True) as child:
            mlflow.log_params(record["params"])
            mlflow.log_metrics(record["metrics"])
            for name, points in record.get("history", {}).items():
                for point in points:
                    mlflow.log_metric(name, point["value"], step=point["step"])
            mlflow.set_tags({"sweep.parent": parent.info.run_id, "backbone": record["name"]})
        self._record = {**record, "run_id": child.info.run_id}

    def _describe(self) -> dict[str, Any]:
        return {"saved": self._record is not None}
