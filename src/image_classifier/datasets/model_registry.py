"""Kedro datasets over the MLflow model registry: the champion, the promotion decision, and any
model by URI. The registry is the only place the alias `champion` is read or moved."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset, DatasetError
from mlflow.exceptions import MlflowException

from image_classifier.errors import ProjectError
from image_classifier.tracking import CHAMPION_ALIAS, REGISTERED_MODEL_NAME


class ModelNotFoundError(ProjectError):
    """The model URI names nothing in the tracking store."""


class PyfuncModelDataset(AbstractDataset[None, mlflow.pyfunc.PyFuncModel]):
    """Loads ``model_uri`` (``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``)."""

    def __init__(self, model_uri: str, metadata: dict[str, Any] | None = None):
        self._uri = model_uri
        self.metadata = metadata

    def load(self) -> mlflow.pyfunc.PyFuncModel:
        require_model(self._uri)
        try:
            return mlflow.pyfunc.load_model(self._uri)
        except MlflowException as error:
            raise ModelNotFoundError(
                f"model {self._uri} not found in the tracking store {mlflow.get_tracking_uri()}: "
                "train one first (`make run` or `make retrain`), or pass --params inference.model_uri=<uri>"
            ) from error

    def save(self, data: None) -> None:
        raise DatasetError("read-only: models are logged by the evaluation stage")

    def _describe(self) -> dict[str, Any]:
        return {"model_uri": self._uri}


class ChampionDataset(AbstractDataset[None, dict[str, Any]]):
    """Loads ``{"version", "run_id", "tags", "model"}`` of the model at ``alias``, or all ``None``
    when there is no champion yet (the first model will become it)."""

    def __init__(
        self,
        registered_model_name: str = REGISTERED_MODEL_NAME,
        alias: str = CHAMPION_ALIAS,
        metadata: dict[str, Any] | None = None,
    ):
        self._name, self._alias = registered_model_name, alias
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        return champion(self._name, self._alias, with_model=True)

    def save(self, data: None) -> None:
        raise DatasetError("read-only: the alias moves only through the promotion decision")

    def _describe(self) -> dict[str, Any]:
        return {"registered_model_name": self._name, "alias": self._alias}


def champion(name: str, alias: str, with_model: bool = False) -> dict[str, Any]:
    """The version at ``alias`` with its run's tags (and the pyfunc when asked), or ``None`` values."""
    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such registered model, or no such alias yet
        return {"version": None, "run_id": None, "tags": {}, "model": None}
    tags = client.get_run(version.run_id).data.tags if version.run_id else {}
    model = mlflow.pyfunc.load_model(f"models:/{name}@{alias}") if with_model else None
    return {"version": str(version.version), "run_id": version.run_id, "tags": tags, "model": model}


def require_model(uri: str) -> None:
    """Raise ``ModelNotFoundError`` saying what the registry holds instead, when ``uri``
    (``models:/name@alias`` or ``models:/name/version``) names nothing; other URIs pass."""
    found = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if found is None:
        return
    name, alias, number = found.groups()
    client, store = mlflow.MlflowClient(), mlflow.get_tracking_uri()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise ModelNotFoundError(
            f"no model {uri} in the tracking store {store}: nothing is registered as {name!r} yet. "
            "Train one first (`make run`), or point MLFLOW_TRACKING_URI at the store that has it"
        ) from None
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    if (alias is not None and alias in model.aliases) or (number is not None and int(number) in versions):
        return
    held = ", ".join(f"{a} → v{v}" for a, v in sorted(model.aliases.items())) or "no aliases"
    raise ModelNotFoundError(
        f"no model {uri} in the tracking store {store}: {name!r} has versions "
        f"{', '.join(map(str, versions)) or 'none'} and {held}. Use one of them (e.g. "
        f"models:/{name}/{versions[-1] if versions else 1}), or let `make retrain` promote a champion"
    )


def crown_if_none(name: str, version: str, alias: str = CHAMPION_ALIAS) -> bool:
    """Give ``alias`` to ``version`` when no version holds it yet; whether it did. Only for the
    project's very first model: every later move is a promotion decision."""
    client = mlflow.MlflowClient()
    if alias in client.get_registered_model(name).aliases:
        return False
    client.set_registered_model_alias(name, alias, version)
    return True


class PromotionDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saving a decision records it and, when it says so, moves the alias to this run's model.

    The decision goes to the active run as ``promotion.*`` tags and a ``promotion.json`` artifact,
    and to ``filepath``. It is the last step of a retraining run, so a run that fails or is
    interrupted before it never moves the alias.
    """

    def __init__(
        self,
        filepath: str,
        registered_model_name: str = REGISTERED_MODEL_NAME,
        alias: str = CHAMPION_ALIAS,
        metadata: dict[str, Any] | None = None,
    ):
        self._path = Path(filepath)
        self._name, self._alias = registered_model_name, alias
        self.metadata = metadata

    def save(self, decision: dict[str, Any]) -> None:
        run = mlflow.active_run()
        if run is None:
            raise DatasetError("promotion needs a tracked run: the decision is recorded in it")
        record = {**decision, "run_id": run.info.run_id}
        if decision["promote"]:
            mlflow.MlflowClient().set_registered_model_alias(
                self._name, self._alias, decision["challenger_version"]
            )
        mlflow.set_tags({f"promotion.{key}": value for key, value in record.items() if value is not None})
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_text(json.dumps(record, indent=2))
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "promotion.json"
            copy.write_text(json.dumps(record, indent=2))
            mlflow.log_artifact(str(copy))

    def load(self) -> dict[str, Any]:
        if not self._path.exists():
            raise DatasetError(f"{self._path}: no promotion decision recorded yet")
        return json.loads(self._path.read_text())

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path), "registered_model_name": self._name, "alias": self._alias}
