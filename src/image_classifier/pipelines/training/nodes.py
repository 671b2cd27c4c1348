"""Training: the classifier head, fitted on cached features with no backbone in the loop."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from image_classifier.config import TrainingParams
from image_classifier.hints import KerasModel
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)


def _indexed(features: dict[str, Any], image_index: pd.DataFrame) -> dict[str, Any]:
    """The training vectors of the images the index still lists (the audit may leave some out)."""
    kept = np.isin(features["paths"], image_index.loc[image_index["split"] == "train", "path"])
    if kept.all():
        return features
    logger.info("Head: %d of %d training vectors left out by the audit", int((~kept).sum()), len(kept))
    return {"features": features["features"][kept], "labels": features["labels"][kept]}


def train_head(
    train_features: dict[str, Any],
    validation_features: dict[str, Any],
    test_features: dict[str, Any],
    image_index: pd.DataFrame,
    class_names: list[str],
    training: dict[str, Any],
    seed: int,
) -> tuple[KerasModel, dict[str, Any], dict[str, list[float]]]:
    """Fit the head with early stopping on validation loss; the best epoch's weights are kept.
    Only the training images ``image_index`` lists are trained on."""
    # TensorFlow and Keras here, not at the top: Kedro imports every node module at start-up.
    import keras

    from image_classifier.fitting import (
        class_weights,
        fit_callbacks,
        history_metrics,
        plain_history,
        seed_everything,
    )
    from image_classifier.models import classifier_head, compile_classifier

    params = TrainingParams(**training)
    train_features = _indexed(train_features, image_index)
    seed_everything(seed)
    n = len(class_names)
    head = classifier_head(train_features["features"].shape[1], n, params.dropout, seed, params.hidden_units)
    smoothing = params.smoothing(int((image_index["split"] == "train").sum()))
    compile_classifier(head, params.learning_rate, smoothing)
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
        callbacks=fit_callbacks(params.patience, "training.learning_rate"),
        verbose=2,
    )
    scores = {
        split: float(head.evaluate(*one_hot[split], verbose=0, return_dict=True)["accuracy"])
        for split in ("val", "test")
    }
    logger.info("Head: val_accuracy %.4f, test_accuracy %.4f", scores["val"], scores["test"])
    metrics = {
        **history_metrics(fit.history, "head"),
        **scalar_metrics(
            {
                "head.val_accuracy": scores["val"],
                "head.test_accuracy": scores["test"],
                "diagnostics/training.label_smoothing": smoothing,
            }
        ),
    }
    return head, metrics, plain_history(fit)
