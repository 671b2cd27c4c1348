"""The image index as a CSV file that, when saved during a tracked run, is also an MLflow input."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from kedro.io import AbstractDataset

# Columns that define the data a model sees; width and height follow from the content.
_DIGEST_COLUMNS = ["path", "label", "split", "sha256"]


def index_digest(index: pd.DataFrame) -> str:
    """sha256 of the sorted index: equal digests mean the same files, labels and splits."""
    rows = index[_DIGEST_COLUMNS].sort_values("path").itertuples(index=False, name=None)
    digest = hashlib.sha256()
    for row in rows:
        digest.update(("\t".join(map(str, row)) + "\n").encode())
    return digest.hexdigest()


class ImageIndexDataset(AbstractDataset[pd.DataFrame, pd.DataFrame]):
    """``pandas.CSVDataset`` at ``filepath``; on save, tags the active run with ``dataset_digest``
    and logs the index as an ``mlflow.data`` input named ``name`` with ``source`` (the raw folder),
    in ``context``. The last index saved in a run sets the tag: the one the models trained on.
    """

    def __init__(
        self,
        filepath: str,
        source: str,
        name: str = "image_index",
        context: str = "ingestion",
        metadata: dict[str, Any] | None = None,
    ):
        # Here, not at the top: kedro_datasets.pandas imports all its datasets (SQLAlchemy's costs
        # 0.4 s), and the hooks import this module at every Kedro start-up.
        from kedro_datasets.pandas import CSVDataset

        self._csv = CSVDataset(filepath=filepath)
        self._source, self._name, self._context = source, name, context
        self.metadata = metadata

    def load(self) -> pd.DataFrame:
        return self._csv.load()

    def save(self, data: pd.DataFrame) -> None:
        self._csv.save(data)
        if mlflow.active_run() is None:
            return
        digest = index_digest(data)
        mlflow.set_tag("dataset_digest", digest)
        # MLflow stores at most 36 characters of an input's digest; the tag keeps all 64.
        with warnings.catch_warnings():
            # MLflow registers its local source type twice and then warns that a local path is
            # ambiguous; it also hints about integer columns, which the index never leaves empty.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                data, source=self._source_uri(), name=self._name, digest=digest[:32]
            )
            mlflow.log_input(dataset, context=self._context)

    def _source_uri(self) -> str:
        return self._source if "://" in self._source else Path(self._source).resolve().as_uri()

    def _exists(self) -> bool:
        return self._csv.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._csv._describe()["filepath"], "source": self._source, "name": self._name}
