"""The MLflow pyfunc that wraps the Keras classifier: images in, labels and probabilities out."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from image_classifier.images import UnusableImage, decode_rgb, resize


def probability_column(label: str) -> str:
    return f"prob_{label}"


def predictions_frame(probabilities: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per image: the predicted label, then one probability column per class."""
    frame = pd.DataFrame(
        probabilities.astype(np.float64), columns=[probability_column(c) for c in class_names]
    )
    frame.insert(0, "label", [class_names[i] for i in probabilities.argmax(axis=1)])
    return frame


def as_batch(model_input: Any, size: int) -> np.ndarray:
    """What the pyfunc accepts → one uint8 batch (N, H, W, 3) for the Keras model.

    - a uint8 array (N, H, W, 3), or one image (H, W, 3): passed through as it is;
    - a 1-D object array whose items are encoded files (bytes of a JPEG, PNG, …) or RGB arrays of
      different sizes: each is decoded and resized to the model's input size, with the kernel the
      model itself uses (so the in-model resize then leaves it unchanged).
    """
    images = np.asarray(model_input)
    if images.dtype == object:
        if images.ndim != 1:
            raise ValueError(f"expected a 1-D object array of images or encoded files, got {images.shape}")
        return np.stack([resize(_decoded(item, i), size) for i, item in enumerate(images)])
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images shaped (N, H, W, 3), got {images.shape}")
    return images.astype(np.uint8, copy=False)


def _decoded(item: Any, position: int) -> np.ndarray:
    if isinstance(item, bytes | bytearray | memoryview):
        try:
            return decode_rgb(bytes(item))
        except UnusableImage as error:
            raise ValueError(f"input {position}: {error}") from None
    image = np.asarray(item)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"input {position}: expected an RGB image (H, W, 3), got {image.shape}")
    return image.astype(np.uint8, copy=False)


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Serves a Keras model that takes raw RGB uint8 batches (N, H, W, 3) of any H and W, or a
    1-D object array of encoded image files or differently sized images (see ``as_batch``)."""

    # The tensor signature validates the input; MLflow's type-hint validation supports no
    # ndarray hints, so ``predict`` has none and this opts out of the check.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import keras  # imported here so that merely unpickling this class stays cheap

        self._model = keras.models.load_model(context.artifacts["keras_model"], compile=False)
        self._class_names = list(context.model_config["class_names"])
        self._input_size = int(context.model_config["input_size"])
        self._batch_size = int(context.model_config.get("batch_size", 32))

    def predict(self, context, model_input, params=None):
        images = as_batch(model_input, self._input_size)
        probabilities = self._model.predict(images, batch_size=self._batch_size, verbose=0)
        return predictions_frame(probabilities, self._class_names)
