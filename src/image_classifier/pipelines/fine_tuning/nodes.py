"""Fine-tuning: backbone + trained head, top backbone layers unfrozen, low learning rate."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
import pandas as pd

from image_classifier.backbones import get_spec, load_pretrained
from image_classifier.config import AugmentationParams, BackboneParams, FeaturesParams, FineTuningParams
from image_classifier.datasets import ImageFolder
from image_classifier.loading import AugmentedImages, ViewLoader
from image_classifier.models import feature_extractor, full_classifier, unfreeze_top
from image_classifier.pipelines.training.nodes import history_metrics, seed_everything

logger = logging.getLogger(__name__)


def _split(
    image_index: pd.DataFrame, split: str, class_names: list[str]
) -> tuple[list[str], list[str], np.ndarray]:
    rows = image_index.loc[image_index["split"] == split]
    label_ids = {label: i for i, label in enumerate(class_names)}
    return rows["path"].tolist(), rows["sha256"].tolist(), rows["label"].map(label_ids).to_numpy(np.int64)


def fine_tune(
    head_model: keras.Model,
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    class_names: list[str],
    backbone: dict[str, Any],
    fine_tuning: dict[str, Any],
    augmentation: dict[str, Any],
    features: dict[str, Any],
    seed: int,
) -> tuple[keras.Model, dict[str, Any], dict[str, list[float]]]:
    """Return the full raw-image classifier, fine-tuned unless ``fine_tuning.enabled`` is false."""
    backbone_params, params = BackboneParams(**backbone), FineTuningParams(**fine_tuning)
    workers = FeaturesParams(**features).workers
    spec = get_spec(backbone_params.name)
    trunk = load_pretrained(spec.name, backbone_params.input_size, backbone_params.cache_dir)
    model = full_classifier(feature_extractor(trunk, spec, backbone_params.input_size), head_model)
    if not params.enabled:
        logger.info("Fine-tuning disabled: the final model is the backbone with the trained head")
        return model, {}, {}

    seed_everything(seed)
    unfrozen = unfreeze_top(trunk, params.unfreeze_layers)
    head_model.trainable = True
    transforms = tuple(t.model_dump() for t in AugmentationParams(**augmentation).transforms)
    size = backbone_params.input_size
    train = AugmentedImages(
        ViewLoader(raw_images, size, transforms, seed),
        *_split(image_index, "train", class_names),
        batch_size=params.batch_size,
        seed=seed,
        workers=workers,
    )
    validation = AugmentedImages(
        ViewLoader(raw_images, size),
        *_split(image_index, "validation", class_names),
        batch_size=params.batch_size,
        seed=seed,
        workers=workers,
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        params.learning_rate, decay_steps=len(train) * params.epochs
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    logger.info("Fine-tuning %d backbone layers for up to %d epochs", unfrozen, params.epochs)
    fit = model.fit(
        train,
        validation_data=validation,
        epochs=params.epochs,
        callbacks=[
            keras.callbacks.EarlyStopping("val_loss", patience=params.patience, restore_best_weights=True)
        ],
        verbose=2,
    )
    val_accuracy = float(model.evaluate(validation, verbose=0, return_dict=True)["accuracy"])
    logger.info("Fine-tuned: val_accuracy %.4f", val_accuracy)
    metrics: dict[str, Any] = history_metrics(fit.history, "finetune")
    metrics["finetune.val_accuracy"] = {"value": val_accuracy, "step": 0}
    return model, metrics, {k: [float(v) for v in vs] for k, vs in fit.history.items()}
