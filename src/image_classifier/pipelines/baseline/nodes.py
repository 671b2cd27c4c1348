"""Baseline: the classic from-scratch convnet, on the same splits and augmentation as the rest."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from image_classifier.config import AugmentationParams, BaselineParams, IngestionParams
from image_classifier.datasets import ImageFolder
from image_classifier.hints import KerasModel
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)


def train_baseline(
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    class_names: list[str],
    baseline: dict[str, Any],
    augmentation: dict[str, Any],
    workers: int,
    seed: int,
) -> tuple[KerasModel, dict[str, Any], dict[str, list[float]]]:
    """Train the scratch convnet with online augmentation; score it on validation and test."""
    # TensorFlow and Keras here, not at the top: Kedro imports every node module at start-up.
    from image_classifier.fitting import (
        ImageProgress,
        fit_callbacks,
        history_metrics,
        plain_history,
        seed_everything,
        split_arrays,
    )
    from image_classifier.loading import AugmentedImages, ScratchPixels, ViewLoader
    from image_classifier.models import compile_classifier, scratch_convnet

    params = BaselineParams(**baseline)
    transforms = tuple(t.model_dump() for t in AugmentationParams(**augmentation).transforms)
    seed_everything(seed)
    model = scratch_convnet(
        len(class_names),
        params.input_size,
        [b.model_dump() for b in params.conv_blocks],
        params.dense_units,
        params.dropout,
        seed,
    )
    compile_classifier(model, params.learning_rate, 0.0)
    size = params.input_size

    def batches(split: str, loader: ViewLoader) -> AugmentedImages:
        arrays = split_arrays(image_index, split, class_names)
        # The test photos are read once: only the epochs' splits are worth keeping decoded.
        pixels = (
            None if split == "test" else ScratchPixels(len(arrays[0]), size, f"Baseline ({split} photos)")
        )
        return AugmentedImages(loader, *arrays, params.batch_size, seed, workers, pixels=pixels)

    limits = IngestionParams(**ingestion)
    train = batches("train", ViewLoader(raw_images, limits, size, transforms, seed))
    train_images = int((image_index["split"] == "train").sum())
    validation, test = (batches(s, ViewLoader(raw_images, limits, size)) for s in ("validation", "test"))
    logger.info("Baseline: %d-block convnet from scratch at %d px", len(params.conv_blocks), size)
    fit = model.fit(
        train,
        validation_data=validation,
        epochs=params.epochs,
        callbacks=[
            ImageProgress(train_images, params.batch_size, "baseline"),
            *fit_callbacks(params.patience, "baseline.learning_rate"),
        ],
        verbose=0,
    )
    scores = {
        name: float(model.evaluate(data, verbose=0, return_dict=True)["accuracy"])
        for name, data in (("val", validation), ("test", test))
    }
    logger.info("Baseline: val_accuracy %.4f, test_accuracy %.4f", scores["val"], scores["test"])
    metrics = {
        **history_metrics(fit.history, "baseline"),
        **scalar_metrics({"baseline.val_accuracy": scores["val"], "baseline.test_accuracy": scores["test"]}),
    }
    return model, metrics, plain_history(fit)
