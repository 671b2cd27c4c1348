"""The MLflow pyfunc that wraps the Keras classifier: images in, labels and probabilities out."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


def probability_column(label: str) -> str:
    return f"prob_{label}"


def predictions_frame(probabilities: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per image: the predicted label, then one probability column per class."""
    frame = pd.DataFrame(
        probabilities.astype(np.float64), columns=[probability_column(c) for c in class_names]
    )
    frame.insert(0, "label", [class_names[i] for i in probabilities.argmax(axis=1)])
    return frame


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Serves a Keras model that takes raw RGB uint8 batches (N, H, W, 3) of any H and W."""

    # The tensor signature validates the input; MLflow's type-hint validation supports no
    # ndarray hints, so ``predict`` has none and this opts out of the check.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import keras  # imported here so that merely unpickling this class stays cheap

        self._model = keras.models.load_model(context.artifacts["keras_model"], compile=False)
        self._class_names = list(context.model_config["class_names"])
        self._batch_size = int(context.model_config.get("batch_size", 32))

    def predict(self, context, model_input, params=None):
        images = np.asarray(model_input)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected RGB images shaped (N, H, W, 3), got {images.shape}")
        probabilities = self._model.predict(images.astype(np.uint8), batch_size=self._batch_size, verbose=0)
        return predictions_frame(probabilities, self._class_names)
