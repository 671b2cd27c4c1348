"""Helpers shared by every stage that fits a Keras model: seeding, early stopping, class weights,
the split arrays of the image index, and Keras histories turned into MLflow step metrics.

A library module, not a pipeline: the training, fine-tuning, baseline and sweep stages all use it,
and no pipeline package imports another.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from image_classifier.errors import ProjectError
from image_classifier.progress import image_bar

logger = logging.getLogger(__name__)


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


def fit_callbacks(
    patience: int, learning_rate: str, baseline: dict[str, float] | None = None
) -> list[keras.callbacks.Callback]:
    """Early stopping that keeps the best epoch's weights (the first callback), and a hard stop
    when the loss becomes NaN or infinite; ``learning_rate`` names the parameter to lower. With
    a ``baseline``, see ``BestEpoch``."""
    return [BestEpoch(patience, baseline), _FailOnNonFiniteLoss(learning_rate)]


class BestEpoch(keras.callbacks.Callback):
    """Stops after ``patience`` epochs without a new best epoch and restores the best epoch's
    weights, like Keras' EarlyStopping on validation loss.

    With a ``baseline`` (the validation ``loss`` and ``accuracy`` of the model before this fit,
    which the fit must beat to be worth keeping), the best epoch is the most accurate (then the
    lowest loss): the order in which the fitted model is later weighed against the baseline.
    Fine-tuning on few photos often grows overconfident, so its validation loss rises while its
    accuracy still climbs; stopping on loss alone cut such runs after ``patience`` epochs. With
    label smoothing the loss keeps falling by a little after the most accurate epoch; counting
    a lower loss alone as progress ran such fits on for epochs they never kept. A best-so-far
    epoch that beats the baseline on neither counts against the patience unless it is more
    accurate than every earlier epoch: a fit whose first epochs dip below the baseline and then
    climb back runs on (at a high rate on 1000 photos the first epoch fell 11 points below it,
    and a run cut there kept the head), while one that cannot help costs ``patience`` epochs.
    """

    def __init__(self, patience: int, baseline: dict[str, float] | None = None):
        super().__init__()
        self._patience, self._baseline = patience, baseline
        self.best_epoch = 0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self._best_weights, self._best_key, self._wait = None, None, 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if "val_loss" not in (logs or {}):  # no validation photos: nothing to stop on
            return
        loss = float(logs["val_loss"])
        if self._baseline is None:
            key, useful = (-loss,), True
        else:
            accuracy = float(logs["val_accuracy"])
            key = (accuracy, -loss)
            climbing = self._best_key is not None and accuracy > self._best_key[0]
            useful = loss < self._baseline["loss"] or accuracy > self._baseline["accuracy"] or climbing
        if self._best_key is None or key > self._best_key:
            self._best_key, self.best_epoch, self._best_weights = key, epoch, self.model.get_weights()
            if useful:
                self._wait = 0
                return
        self._wait += 1
        if self._wait >= self._patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)


class PairedValidation(keras.callbacks.Callback):
    """Scores the validation photos after each epoch in place of Keras, in a fixed order, so that
    each epoch can be weighed photo by photo against the model the fit started from
    (``selection.compare``). It writes Keras' own ``val_loss`` and ``val_accuracy`` into the
    logs, for the callbacks after it and the history, and beside them ``val_gained`` and
    ``val_lost``: the photos this epoch gets right that ``reference_correct`` got wrong, and the
    reverse. List it first. ``correct[e]`` is epoch ``e``'s right-or-wrong per photo."""

    def __init__(
        self, batches: keras.utils.PyDataset, loss: keras.losses.Loss, reference_correct: np.ndarray
    ):
        super().__init__()
        self._batches, self._loss, self._reference = batches, loss, np.asarray(reference_correct, bool)
        self.correct: list[np.ndarray] = []

    def scores(self) -> tuple[dict[str, float], np.ndarray]:
        """The model's validation scores now, and each photo's right-or-wrong."""
        found, truth = [], []
        for index in range(len(self._batches)):
            images, labels = self._batches[index]
            found.append(np.asarray(self.model.predict_on_batch(images)))
            truth.append(labels)
        probabilities, labels = np.concatenate(found), np.concatenate(truth)
        correct = probabilities.argmax(axis=1) == labels.argmax(axis=1)
        scores = {
            "val_loss": float(self._loss(labels, probabilities)),
            "val_accuracy": float(correct.mean()),
            "val_gained": int((correct & ~self._reference).sum()),
            "val_lost": int((self._reference & ~correct).sum()),
        }
        return scores, correct

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        scores, correct = self.scores()
        self.correct.append(correct)
        logs.update(scores)


def probe_rates(
    model: keras.Model,
    compile_at: Callable[[float], None],
    train: keras.utils.PyDataset,
    steps: int,
    rates: Sequence[float],
    validation_loss: Callable[[], float],
    warm_up: Callable[[float], list[keras.callbacks.Callback]] = lambda rate: [],
) -> tuple[float, dict[float, float]]:
    """The rate, of ``rates``, whose first ``steps`` training steps from the model's current
    weights (with the callbacks ``warm_up`` gives for it) end at the lowest validation loss; the
    weights are those of the start again afterwards. A rate that wrecks what the start knew
    shows in the loss within a few hundred steps, before a whole run is spent on it. Ties go to
    the lower rate."""
    start, losses = model.get_weights(), {}
    for rate in sorted(rates):
        model.set_weights(start)
        compile_at(rate)
        model.fit(train, steps_per_epoch=steps, epochs=1, callbacks=warm_up(rate), verbose=0)
        loss = validation_loss()
        losses[rate] = loss if math.isfinite(loss) else math.inf
        logger.info("Rate probe: %d steps at %g, validation loss %.4f", steps, rate, loss)
    model.set_weights(start)
    return min(losses, key=lambda rate: (losses[rate], rate)), losses


class WarmUp(keras.callbacks.Callback):
    """A linear ramp of the learning rate from a tenth of ``peak`` to ``peak`` over the first
    ``steps`` batches, then left alone (for ReduceLROnPlateau to lower). The first steps of a
    freshly unfrozen trunk must be small, and a plateau schedule, unlike a cosine, needs no
    known number of epochs."""

    def __init__(self, peak: float, steps: int):
        super().__init__()
        self._peak, self._steps, self._step = peak, steps, 0

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if self._step <= self._steps:
            fraction = self._step / self._steps if self._steps else 1.0
            self.model.optimizer.learning_rate.assign(self._peak * (0.1 + 0.9 * fraction))
            self._step += 1


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
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        self._bar.set_postfix(_scores(logs), refresh=False)  # drawn by the update
        # ``batch`` is the step within the epoch, and only the epoch's last batch may be short.
        self._bar.update(min((batch + 1) * self._batch_size, self._images) - self._bar.n)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._bar.set_postfix(_scores(logs), refresh=False)  # with the validation scores
        self._bar.close()
        # A line that stays in the log, for where no one watches the bar (an orchestrator's task log).
        scores = ", ".join(f"{name} {value}" for name, value in _scores(logs).items())
        seconds = time.perf_counter() - self._started
        logger.info(
            "%s epoch %d/%d: %.0f s (validation included), %s",
            self._desc,
            epoch + 1,
            self.params["epochs"],
            seconds,
            scores,
        )


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
