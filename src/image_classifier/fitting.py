"""Helpers shared by every stage that fits a Keras model: seeding, early stopping, class weights,
the split arrays of the image index, and Keras histories turned into MLflow step metrics.

A library module, not a pipeline: the training, fine-tuning, baseline and sweep stages all use it,
and no pipeline package imports another.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from image_classifier.errors import ProjectError
from image_classifier.progress import image_bar


class TrainingDiverged(ProjectError):
    """The loss stopped being a number: the weights are garbage and must not be saved."""


def seed_everything(seed: int) -> None:
    """Same seed, same data → same weights: seeds Python, numpy and TF, and pins op order."""
    keras.utils.set_random_seed(seed)
    # Multi-threaded CPU reductions otherwise sum in a varying order and drift in the last bits.
    tf.config.experimental.enable_op_determinism()


def history_metrics(history: dict[str, list[float]], prefix: str) -> dict[str, list[dict[str, float]]]:
    """Keras history → MLflow step metrics ``history/<prefix>.<name>`` with step = epoch (the
    MLflow UI charts them in a section of their own, apart from the headline metrics)."""
    return {
        f"history/{prefix}.{name}": [{"value": float(v), "step": epoch} for epoch, v in enumerate(values)]
        for name, values in history.items()
        if name != "learning_rate"
    }


def fit_callbacks(patience: int, learning_rate: str) -> list[keras.callbacks.Callback]:
    """Early stopping on validation loss (the best epoch's weights are kept), and a hard stop
    when the loss becomes NaN or infinite; ``learning_rate`` names the parameter to lower."""
    return [
        keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True),
        _FailOnNonFiniteLoss(learning_rate),
    ]


class _FailOnNonFiniteLoss(keras.callbacks.Callback):
    # Keras's own TerminateOnNaN stops quietly and the run would go on to register the model;
    # raising fails the node, so nothing downstream (evaluation, registration) runs.
    def __init__(self, learning_rate: str):
        super().__init__()
        self._learning_rate = learning_rate

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDiverged(
                    f"{name} became {float(value)} in epoch {epoch + 1}: training diverged and its "
                    f"model is discarded. Lower {self._learning_rate}, or look for NaN in the inputs"
                )


class ImageProgress(keras.callbacks.Callback):
    """A bar per epoch over the training images, with images/s and the running loss and accuracy,
    for ``fit(verbose=0)``: Keras' own output is one line per epoch, minutes apart when
    fine-tuning. List it before callbacks that may raise, so that its bar is closed first."""

    def __init__(self, images: int, batch_size: int, desc: str):
        super().__init__()
        self._images, self._batch_size, self._desc = images, batch_size, desc
        self._bar = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._bar = image_bar(self._images, f"{self._desc} epoch {epoch + 1}/{self.params['epochs']}")

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._bar.set_postfix(_scores(logs), refresh=False)  # drawn by the update
        # ``batch`` is the step within the epoch, and only the epoch's last batch may be short.
        self._bar.update(min((batch + 1) * self._batch_size, self._images) - self._bar.n)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._bar.set_postfix(_scores(logs), refresh=False)  # with the validation scores
        self._bar.close()


def _scores(logs: dict[str, float] | None) -> dict[str, str]:
    return {
        name: f"{float(value):.4f}"
        for name, value in (logs or {}).items()
        if name.endswith(("loss", "accuracy"))
    }


def plain_history(fit: keras.callbacks.History) -> dict[str, list[float]]:
    """A Keras history as JSON-ready floats (Keras keeps numpy scalars)."""
    return {name: [float(v) for v in values] for name, values in fit.history.items()}


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """``balanced``: n / (classes × count) per class, so each class weighs the same in the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def split_arrays(
    image_index: pd.DataFrame, split: str, class_names: list[str]
) -> tuple[list[str], list[str], np.ndarray]:
    """Paths, content hashes and one-hot labels of one split."""
    rows = image_index.loc[image_index["split"] == split]
    label_ids = rows["label"].map({label: i for i, label in enumerate(class_names)}).to_numpy(np.int64)
    return (
        rows["path"].tolist(),
        rows["sha256"].tolist(),
        keras.utils.to_categorical(label_ids, len(class_names)),
    )
