"""A ``.keras`` model file that carries the fingerprint of the data and parameters behind it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.io import AbstractDataset

from image_classifier.datasets.atomic import written_aside

# Keras only when a model is saved or loaded: the project's hooks import the datasets package at
# every Kedro start-up.
if TYPE_CHECKING:
    import keras

# An extra member of the .keras zip: Keras reads only the members it wrote and ignores it.
_MEMBER = "image_classifier_fingerprint.json"


class StampedModelDataset(AbstractDataset["keras.Model", "keras.Model"]):
    """Saves a Keras model with its stamp (``models.stamp``) inside the file, atomically: the
    model is written aside and renamed, so a run killed while saving leaves the previous file,
    whole and with its own, older stamp. Loading restores the stamp on the model."""

    def __init__(
        self, filepath: str, load_args: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ):
        self._path = Path(filepath)
        self._load_args = load_args or {}
        self.metadata = metadata

    def save(self, data: keras.Model) -> None:
        from image_classifier.models import stamp_of

        with written_aside(self._path) as partial:
            data.save(partial)
            if (fingerprint := stamp_of(data)) is not None:
                with zipfile.ZipFile(partial, "a") as archive:
                    archive.writestr(_MEMBER, json.dumps(fingerprint, sort_keys=True))

    def load(self) -> keras.Model:
        import keras

        from image_classifier.models import stamp

        model = keras.models.load_model(self._path, **self._load_args)
        with zipfile.ZipFile(self._path) as archive:
            if _MEMBER in archive.namelist():
                stamp(model, json.loads(archive.read(_MEMBER)))
        return model

    def _exists(self) -> bool:
        return self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._path), "load_args": self._load_args}
