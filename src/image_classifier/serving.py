"""The MLflow pyfunc that wraps the Keras classifier: images in, labels and probabilities out.

Every request, in process or through ``mlflow models serve``, passes the guards ingestion applies
to files (size, header pixel count, shorter side, decodability), with the limits of the run that
logged the model. Anything the model cannot use is refused with an ``MlflowException`` whose code
(INVALID_PARAMETER_VALUE) the scoring server answers with HTTP 400 and the message, which says
what is expected.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from image_classifier import tta
from image_classifier.config import IngestionParams
from image_classifier.images import UnusableImage, decode_rgb, resize

# The signature's one input: JSON payloads name it, in-process arrays are wrapped in it by MLflow.
INPUT_NAME = "images"
# The ingestion parameters a served request is checked against, stored in the model's config.
LIMIT_KEYS = ("max_pixels", "min_side", "max_file_bytes")
# Base64 text only comes through REST, and each string costs a decode, a resize and a forward
# pass: tiny files would let one request within the size limit keep a core busy for an hour.
MAX_FILES_PER_REQUEST = 256


def probability_column(label: str) -> str:
    return f"prob_{label}"


def predictions_frame(probabilities: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per image: the predicted label, then one probability column per class."""
    frame = pd.DataFrame(
        probabilities.astype(np.float64), columns=[probability_column(c) for c in class_names]
    )
    frame.insert(0, "label", [class_names[i] for i in probabilities.argmax(axis=1)])
    return frame


def serving_limits(limits: Mapping[str, int] | None) -> IngestionParams:
    """The guards a request passes: those logged with the model, else ingestion's defaults (a model
    logged before limits were stored)."""
    given = limits or {}
    return IngestionParams(**{key: given[key] for key in LIMIT_KEYS if key in given})


def expected(limits: IngestionParams) -> str:
    return (
        f'expected "{INPUT_NAME}": RGB pixels as whole numbers 0-255 (uint8) shaped (N, H, W, 3) or '
        f"(H, W, 3), at least {limits.min_side} px a side, or a list of base64 strings of image files "
        "(JPEG, PNG, WebP)"
    )


def refused(problem: str, limits: IngestionParams) -> MlflowException:
    return MlflowException.invalid_parameter_value(f"{problem}; {expected(limits)}")


def as_batch(model_input: Any, size: int, limits: IngestionParams) -> np.ndarray:
    """What the pyfunc accepts → one uint8 batch (N, H, W, 3) for the Keras model.

    - pixels (N, H, W, 3) or one image (H, W, 3): uint8, or any numbers that are all whole and
      within 0-255 (JSON numbers arrive as an object array of Python ints);
    - a 1-D array of items: encoded files (bytes in process, base64 strings through REST) or RGB
      pixel arrays of different sizes. Each is checked, decoded and resized to the model's input
      size before the next, so the batch never holds more than one image at full size.
    """
    images = _unwrapped(model_input)
    if images.size == 0:
        raise refused("got no images", limits)
    if images.dtype == object and images.ndim == 1:
        _check_request(images, limits)
        return np.stack(
            [resize(_item(item, f"{INPUT_NAME}[{i}]: ", limits, size), size) for i, item in enumerate(images)]
        )
    return _pixels(images[None] if images.ndim == 3 else images, "", limits)


def _unwrapped(model_input: Any) -> np.ndarray:
    # MLflow hands a named-input signature's data over as {name: array}.
    if isinstance(model_input, Mapping) and INPUT_NAME in model_input:
        model_input = model_input[INPUT_NAME]
    return np.asarray(model_input)


def _check_request(items: np.ndarray, limits: IngestionParams) -> None:
    texts = [item for item in items if isinstance(item, str)]
    if len(texts) > MAX_FILES_PER_REQUEST:
        raise refused(f"got {len(texts)} files, above {MAX_FILES_PER_REQUEST} per request", limits)
    total = sum(len(text) for text in texts)
    if total > limits.max_file_bytes:
        raise refused(
            f"request too large: {total} characters of base64, above ingestion.max_file_bytes = "
            f"{limits.max_file_bytes} per request; send fewer or smaller files per request",
            limits,
        )


def _item(item: Any, where: str, limits: IngestionParams, size: int) -> np.ndarray:
    if isinstance(item, str):
        return _decoded(_from_base64(item, where, limits), where, limits, size)
    if isinstance(item, bytes | bytearray | memoryview):
        return _decoded(bytes(item), where, limits, size)
    if isinstance(item, np.ndarray | list):
        try:
            pixels = np.asarray(item)
        except ValueError:  # nested lists of different lengths
            raise refused(f"{where}got a ragged array", limits) from None
        if pixels.ndim != 3:
            raise refused(f"{where}got an array shaped {pixels.shape}", limits)
        return _pixels(pixels[None], where, limits)[0]
    raise refused(f"{where}got {type(item).__name__}, not an image", limits)


def _from_base64(text: str, where: str, limits: IngestionParams) -> bytes:
    # No size check of its own: the request's text was counted against max_file_bytes already,
    # and a file decodes to 3/4 of its text.
    # `base64` wraps its output at 76 characters unless told -w0: line breaks are harmless.
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise refused(
            f"{where}not base64 (a file's bytes encoded as by `base64 -w0 photo.jpg`)", limits
        ) from None


def _decoded(data: bytes, where: str, limits: IngestionParams, size: int) -> np.ndarray:
    if len(data) > limits.max_file_bytes:
        raise refused(
            f"{where}too big: {len(data)} bytes, above ingestion.max_file_bytes = {limits.max_file_bytes}",
            limits,
        )
    try:
        return decode_rgb(data, limits.max_pixels, limits.min_side, size)
    except UnusableImage as error:
        raise refused(f"{where}{error}", limits) from None


def _pixels(values: np.ndarray, where: str, limits: IngestionParams) -> np.ndarray:
    """A batch (N, H, W, 3) of pixel values checked for shape, size and range, as uint8."""
    if values.ndim != 4 or values.shape[-1] != 3:
        raise refused(f"{where}got an array shaped {values.shape}", limits)
    height, width = values.shape[1:3]
    if height * width > limits.max_pixels:
        raise refused(
            f"{where}too large: {width}x{height} px, above ingestion.max_pixels = {limits.max_pixels}", limits
        )
    # Before the side: floats 0-1 are the likelier mistake, and the message should name it.
    if problem := _value_problem(values):
        raise refused(f"{where}{problem}", limits)
    if min(height, width) < limits.min_side:
        raise refused(
            f"{where}too small: {width}x{height} px, below ingestion.min_side = {limits.min_side}", limits
        )
    return values.astype(np.uint8, copy=False)


def _value_problem(values: np.ndarray) -> str | None:
    """Why ``values`` are not 8-bit pixel values, or None. Any numeric dtype is fine as long as
    every value is a whole number within 0-255: that is what JSON integers become."""
    if values.dtype == np.uint8:
        return None
    if values.dtype == object:
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError):
            return "got values that are not numbers (or images of different sizes in one array)"
    if values.dtype.kind not in "iuf":
        return f"got {values.dtype} values"
    outside = (values < 0) | (values > 255)
    if outside.any():
        return f"got values outside 0-255, such as {values[outside].flat[0].item()!r}"
    if values.dtype.kind == "f":
        fractional = ~np.isfinite(values) | (values != np.round(values))
        if fractional.any():
            return (
                f"got fractional values, such as {values[fractional].flat[0].item()!r}: images scaled to 0-1 "
                "must be sent as 0-255"
            )
    return None


def model_description(context: Any) -> dict[str, Any]:
    """Class names and input size (the ``classes`` artifact), with the limits of the model config.
    Models logged before the artifact existed kept everything in their model config."""
    described = {}
    if "classes" in context.artifacts:
        described = json.loads(Path(context.artifacts["classes"]).read_text())
    return {**described, **(context.model_config or {})}


class _NotRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _traces_expected() -> Iterator[None]:
    """Hides TensorFlow's warning of "excessive retracing" while a freshly loaded model traces.

    TensorFlow counts the traces of every Keras model's predict function together, so a process
    that loads the model a few times warns, in a screenful, of a retracing that is by design:
    ``log_classifier`` does, when MLflow loads the model it logs twice to check the input example.
    """
    quiet = _NotRetracing()
    logger = logging.getLogger("tensorflow")
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Serves a Keras model that takes raw RGB uint8 batches (N, H, W, 3) of any H and W, or a
    1-D array of encoded image files (bytes, or base64 text) or differently sized images (see
    ``as_batch``)."""

    # The signature lets any array through and ``as_batch`` checks it; MLflow's type-hint
    # validation supports no ndarray hints, so ``predict`` has none and this opts out of the check.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import keras  # imported here so that merely unpickling this class stays cheap

        self._model = keras.models.load_model(context.artifacts["keras_model"], compile=False)
        config = model_description(context)
        self._class_names = list(config["class_names"])
        self._input_size = int(config["input_size"])
        self._batch_size = int(config.get("batch_size", 32))
        self._tta = config.get("tta", "none")  # models logged before test-time augmentation: none
        limits = serving_limits(config.get("limits"))
        # An image as big as the model's input is never too small, whatever ingestion.min_side
        # says: the inference pipeline hands the model images it resized to exactly that size.
        self._limits = limits.model_copy(update={"min_side": min(limits.min_side, self._input_size)})
        # The first predictions trace the model's function (seconds each): here, not in the first
        # requests. A second batch size makes TensorFlow trace one for any number of photos.
        with _traces_expected():
            for count in (1, 2):
                self._model.predict_on_batch(
                    np.zeros((count, self._input_size, self._input_size, 3), np.uint8)
                )

    @property
    def input_size(self) -> int:
        """The side the model resizes images to: callers can resize first and send less."""
        return self._input_size

    def predict(self, context, model_input, params=None):
        images = as_batch(model_input, self._input_size, self._limits)
        probabilities = tta.predict(self._model, images, self._tta, self._batch_size)
        return predictions_frame(probabilities, self._class_names)
