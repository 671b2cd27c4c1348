"""Fine-tuning: backbone + trained head, top backbone layers unfrozen, low learning rate."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from image_classifier.backbones import get_spec, load_pretrained
from image_classifier.config import (
    AugmentationParams,
    BackboneParams,
    FineTuningParams,
    IngestionParams,
    TrainingParams,
)
from image_classifier.datasets import ImageFolder
from image_classifier.hints import KerasModel
from image_classifier.promotion import fingerprint
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)


def fine_tune(
    head_model: KerasModel,
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    class_names: list[str],
    backbone: dict[str, Any],
    fine_tuning: dict[str, Any],
    training: dict[str, Any],
    augmentation: dict[str, Any],
    workers: int,
    seed: int,
    params_digest: str,
) -> tuple[KerasModel, dict[str, Any], dict[str, list[float]]]:
    """Return the full raw-image classifier, fine-tuned unless ``fine_tuning.enabled`` is false.

    ``training`` is the head's recipe: fine-tuning keeps its label smoothing and class weights.
    The model is stamped with the fingerprint of this run's data and parameters, which
    evaluation checks before it scores or registers the file.
    """
    # TensorFlow and Keras here, not at the top: Kedro imports every node module at start-up.
    import keras

    from image_classifier.distribution import training_strategy
    from image_classifier.fitting import (
        ImageProgress,
        class_weights,
        fit_callbacks,
        history_metrics,
        plain_history,
        seed_everything,
        split_arrays,
    )
    from image_classifier.loading import AugmentedImages, ViewLoader
    from image_classifier.models import (
        compile_classifier,
        feature_extractor,
        full_classifier,
        stamp,
        unfreeze_top,
    )

    backbone_params, params = BackboneParams(**backbone), FineTuningParams(**fine_tuning)
    head_params, limits = TrainingParams(**training), IngestionParams(**ingestion)
    spec, size = get_spec(backbone_params.name), backbone_params.input_size
    if not params.enabled:
        logger.info("Fine-tuning disabled: the final model is the backbone with the trained head")
        trunk = load_pretrained(spec.name, size, backbone_params.cache_dir, backbone_params.weights)
        model = full_classifier(feature_extractor(trunk, spec, size), head_model)
        return stamp(model, fingerprint(image_index, params_digest)), {}, {}

    seed_everything(seed)
    transforms = tuple(t.model_dump() for t in AugmentationParams(**augmentation).transforms)
    paths, shas, labels = split_arrays(image_index, "train", class_names)
    train = AugmentedImages(
        ViewLoader(raw_images, limits, size, transforms, seed),
        paths,
        shas,
        labels,
        params.batch_size,
        seed,
        workers,
    )
    validation = AugmentedImages(
        ViewLoader(raw_images, limits, size),
        *split_arrays(image_index, "validation", class_names),
        batch_size=params.batch_size,
        seed=seed,
        workers=workers,
    )
    # Variables must be created inside the strategy's scope to be mirrored across replicas.
    with training_strategy(params.strategy).scope():
        trunk = load_pretrained(spec.name, size, backbone_params.cache_dir, backbone_params.weights)
        head = keras.models.clone_model(head_model)
        head.set_weights(head_model.get_weights())
        model = full_classifier(feature_extractor(trunk, spec, size), head)
        unfrozen = unfreeze_top(trunk, params.unfreeze_layers, spec.tunable)
        warmup = int(params.warmup_epochs * len(train))
        # Warm up from a tenth of the rate, so that the first steps of a freshly unfrozen trunk
        # are small, then decay along a cosine to zero by the last epoch.
        schedule = keras.optimizers.schedules.CosineDecay(
            params.learning_rate / 10,
            decay_steps=max(len(train) * params.epochs - warmup, 1),
            warmup_target=params.learning_rate,
            warmup_steps=warmup,
        )
        compile_classifier(model, schedule, head_params.label_smoothing)
    logger.info("Fine-tuning %d backbone layers for up to %d epochs", unfrozen, params.epochs)
    fit = model.fit(
        train,
        validation_data=validation,
        epochs=params.epochs,
        class_weight=class_weights(labels.argmax(axis=1), len(class_names), head_params.class_weight),
        callbacks=[
            ImageProgress(len(paths), params.batch_size, "fine-tuning"),
            *fit_callbacks(params.patience, "fine_tuning.learning_rate"),
        ],
        verbose=0,
    )
    val_accuracy = float(model.evaluate(validation, verbose=0, return_dict=True)["accuracy"])
    logger.info("Fine-tuned: val_accuracy %.4f", val_accuracy)
    metrics = {
        **history_metrics(fit.history, "finetune"),
        **scalar_metrics({"finetune.val_accuracy": val_accuracy}),
    }
    return stamp(model, fingerprint(image_index, params_digest)), metrics, plain_history(fit)
