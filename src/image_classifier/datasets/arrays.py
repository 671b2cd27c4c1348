"""A Kedro dataset for a dict of numpy arrays and string lists, stored as ``.npz`` without pickle.

Loading a pickle runs whatever code the file asks for; ``np.load(allow_pickle=False)`` reads
numbers and strings only, so a tampered file under ``data/`` cannot execute anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from image_classifier.datasets.atomic import written_aside


class ArraysDataset(AbstractDataset[dict[str, Any], dict[str, Any]]):
    """Saves ``{name: array or list of str}``; loads the same, lists of strings as lists."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._path = Path(filepath)
        self.metadata = metadata

    def save(self, data: dict[str, Any]) -> None:
        arrays = {name: np.asarray(value) for name, value in data.items()}
        if bad := [name for name, array in arrays.items() if array.dtype == object]:
            raise DatasetError(f"{self._path}: {bad} hold Python objects, which .npz stores only by pickling")
        with written_aside(self._path) as partial, open(partial, "wb") as handle:
            np.savez(handle, **arrays)

    def load(self) -> dict[str, Any]:
        with np.load(self._path, allow_pickle=False) as contents:
            try:
                return {
                    name: contents[name].tolist() if contents[name].dtype.kind == "U" else contents[name]
                    for name in contents.files
                }
            except ValueError as error:  # numpy's refusal of an object array
                raise DatasetError(
                    f"{self._path} holds pickled objects, which are never loaded ({error}); "
                    "delete it and re-run the stage that writes it"
                ) from None

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path)}
