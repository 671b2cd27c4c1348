"""Training: the classifier head, fitted on cached features with no backbone in the loop."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from image_classifier.config import TrainingParams
from image_classifier.models import classifier_head, compile_classifier

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Same seed, same data → same weights: seeds Python, numpy and TF, and pins op order."""
    keras.utils.set_random_seed(seed)
    # Multi-threaded CPU reductions otherwise sum in a varying order and drift in the last bits.
    tf.config.experimental.enable_op_determinism()


def history_metrics(history: dict[str, list[float]], prefix: str) -> dict[str, list[dict[str, float]]]:
    """Keras history → MLflow step metrics ``<prefix>.history.<name>`` with step = epoch."""
    return {
        f"{prefix}.history.{name}": [{"value": float(v), "step": epoch} for epoch, v in enumerate(values)]
        for name, values in history.items()
        if name != "learning_rate"
    }


def early_stopping(patience: int) -> keras.callbacks.EarlyStopping:
    """Stop when validation loss stops improving, and keep the best epoch's weights."""
    return keras.callbacks.EarlyStopping("val_loss", patience=patience, restore_best_weights=True)


def plain_history(fit: keras.callbacks.History) -> dict[str, list[float]]:
    return {name: [float(v) for v in values] for name, values in fit.history.items()}


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """``balanced``: n / (classes × count) per class, so each class weighs the same in the loss."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def train_head(
    train_features: dict[str, Any],
    validation_features: dict[str, Any],
    test_features: dict[str, Any],
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, dict[str, Any], dict[str, list[float]]]:
    """Fit the head with early stopping on validation loss; the best epoch's weights are kept."""
    params = TrainingParams(**training)
    seed_everything(seed)
    n = len(class_names)
    head = classifier_head(train_features["features"].shape[1], n, params.dropout, seed, params.hidden_units)
    compile_classifier(head, params.learning_rate, params.label_smoothing)
    one_hot = {
        name: (data["features"], keras.utils.to_categorical(data["labels"], n))
        for name, data in (("train", train_features), ("val", validation_features), ("test", test_features))
    }
    fit = head.fit(
        *one_hot["train"],
        validation_data=one_hot["val"],
        epochs=params.epochs,
        batch_size=params.batch_size,
        shuffle=True,
        class_weight=class_weights(train_features["labels"], n, params.class_weight),
        callbacks=[early_stopping(params.patience)],
        verbose=2,
    )
    scores = {
        split: float(head.evaluate(*one_hot[split], verbose=0, return_dict=True)["accuracy"])
        for split in ("val", "test")
    }
    logger.info("Head: val_accuracy %.4f, test_accuracy %.4f", scores["val"], scores["test"])
    metrics: dict[str, Any] = history_metrics(fit.history, "head")
    metrics["head.val_accuracy"] = {"value": scores["val"], "step": 0}
    metrics["head.test_accuracy"] = {"value": scores["test"], "step": 0}
    return head, metrics, plain_history(fit)
