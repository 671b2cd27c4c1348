"""Training: the classifier head, fitted on cached features with no backbone in the loop."""

from __future__ import annotations

import logging
from typing import Any

import keras
import tensorflow as tf

from image_classifier.config import TrainingParams
from image_classifier.models import classifier_head

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
    head = classifier_head(train_features["features"].shape[1], len(class_names), params.dropout, seed)
    head.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit = head.fit(
        train_features["features"],
        train_features["labels"],
        validation_data=(validation_features["features"], validation_features["labels"]),
        epochs=params.epochs,
        batch_size=params.batch_size,
        shuffle=True,
        callbacks=[
            keras.callbacks.EarlyStopping("val_loss", patience=params.patience, restore_best_weights=True)
        ],
        verbose=2,
    )
    scores = {
        split: float(head.evaluate(data["features"], data["labels"], verbose=0, return_dict=True)["accuracy"])
        for split, data in (("val", validation_features), ("test", test_features))
    }
    logger.info("Head: val_accuracy %.4f, test_accuracy %.4f", scores["val"], scores["test"])
    metrics: dict[str, Any] = history_metrics(fit.history, "head")
    metrics["head.val_accuracy"] = {"value": scores["val"], "step": 0}
    metrics["head.test_accuracy"] = {"value": scores["test"], "step": 0}
    return head, metrics, {k: [float(v) for v in vs] for k, vs in fit.history.items()}
