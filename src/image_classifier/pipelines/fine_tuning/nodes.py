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

# ReduceLROnPlateau's cut when validation loss stalls for an epoch; at most three cuts.
_PLATEAU_FACTOR = 0.3


def fine_tune(
    head_model: KerasModel,
    validation_features: dict[str, Any],
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
) -> tuple[KerasModel, dict[str, Any], dict[str, list[float]], dict[str, Any]]:
    """Return the final raw-image classifier, its metrics, the fine-tuning history and the
    outcome: which model is final and why.

    Fine-tuning runs up to ``epochs`` epochs and stops ``patience`` epochs after its best one
    (the most accurate on validation, then the lowest loss), keeping it; epochs that beat the
    frozen model on neither count against the patience unless each is more accurate than every
    epoch before it, so a fine-tuning that cannot help costs ``patience`` epochs. The final
    model is the fine-tuned one only if it beats the frozen backbone with the trained head on
    validation accuracy (then loss); otherwise it is that frozen model.

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
    from image_classifier.loading import AugmentedImages, ResizedAfter, ScratchPixels, ViewLoader
    from image_classifier.models import (
        compile_classifier,
        feature_extractor,
        full_classifier,
        stamp,
        unfreeze_top,
        unresized_classifier,
    )

    backbone_params, params = BackboneParams(**backbone), FineTuningParams(**fine_tuning)
    head_params, limits = TrainingParams(**training), IngestionParams(**ingestion)
    spec, size = get_spec(backbone_params.name), backbone_params.input_size
    train_size = params.train_size or size
    if not params.enabled:
        logger.info("Fine-tuning disabled: the final model is the backbone with the trained head")
        trunk = load_pretrained(spec.name, size, backbone_params.cache_dir, backbone_params.weights)
        model = full_classifier(feature_extractor(trunk, spec, size), head_model)
        outcome = {"final_model": "head", "reason": "fine_tuning.enabled is false"}
        return stamp(model, fingerprint(image_index, params_digest)), {}, {}, outcome

    seed_everything(seed)
    transforms = tuple(t.model_dump() for t in AugmentationParams(**augmentation).transforms)
    paths, shas, labels = split_arrays(image_index, "train", class_names)
    passes = max(1, -(-params.min_epoch_images // max(len(paths), 1)))
    epoch_images = len(paths) * passes

    def training_images(at: int) -> AugmentedImages:
        pixels = ScratchPixels(len(paths), at, f"Fine-tuning (training photos at {at} px)")
        loader = ViewLoader(raw_images, limits, at, transforms, seed)
        return AugmentedImages(loader, paths, shas, labels, params.batch_size, seed, workers, passes, pixels)

    train = training_images(train_size)
    progressive = params.train_size_epochs is not None and train_size != size
    if progressive:
        train = ResizedAfter(train, training_images(size), params.train_size_epochs, workers)
    validation_split = split_arrays(image_index, "validation", class_names)
    validation = AugmentedImages(
        ViewLoader(raw_images, limits, size),
        *validation_split,
        batch_size=params.batch_size,
        seed=seed,
        workers=workers,
        pixels=ScratchPixels(len(validation_split[0]), size, "Fine-tuning (validation photos)"),
    )
    # Variables must be created inside the strategy's scope to be mirrored across replicas.
    with training_strategy(params.strategy).scope():
        # A trunk that takes any size when it trains on one size and validates on another.
        trunk_size = size if train_size == size else None
        trunk = load_pretrained(spec.name, trunk_size, backbone_params.cache_dir, backbone_params.weights)
        head = keras.models.clone_model(head_model)
        head.set_weights(head_model.get_weights())
        model = full_classifier(feature_extractor(trunk, spec, size), head)
        # A twin that shares the model's layers, and so its weights, is compiled and fitted in
        # its place: the model returned stays uncompiled, so its file carries no optimizer state
        # (Adam's two moments per trainable weight: 17 of the 27 MB of MobileNetV2's file).
        # With train_size, the views arrive resized already, training ones to train_size and
        # validation ones to size; the raw-image model would resize the training views back up.
        fitted = (
            keras.Model(model.inputs, model.outputs, name="fitted")
            if train_size == size
            else unresized_classifier(trunk, spec, head)
        )
    # The model fine-tuning must beat: the frozen backbone with the trained head. Its scores on
    # the validation photos are the head's on their cached features (the same pixels through
    # the same network, to within 1e-5): no pass over the photos, no extra trace of the model.
    smoothing = head_params.smoothing(len(paths))
    frozen = _frozen_scores(head_model, validation_features, len(class_names), smoothing)
    frozen_weights = model.get_weights()
    with training_strategy(params.strategy).scope():
        unfrozen = unfreeze_top(trunk, params.unfreeze_layers, spec.tunable)
        peak = params.peak_learning_rate(len(paths))
        learning_rate, schedule_callbacks = _schedule(params, peak, len(train))
        compile_classifier(fitted, learning_rate, smoothing)
    sizes = (
        f"{train_size} px for {params.train_size_epochs}, then {size} px"
        if progressive
        else f"{train_size} px"
    )
    logger.info(
        "Fine-tuning %d backbone layers for up to %d epochs of %d images at %s (%s schedule, peak "
        "rate %g); the frozen model scores val_loss %.4f, val_accuracy %.4f",
        unfrozen,
        params.epochs,
        epoch_images,
        sizes,
        params.schedule,
        peak,
        frozen["loss"],
        frozen["accuracy"],
    )
    stopping = fit_callbacks(params.patience, "fine_tuning.learning_rate", baseline=frozen)
    fit = fitted.fit(
        train.dataset() if progressive else train,
        # Keras shuffles a PyDataset's batches, not a tf.data one's (each epoch's photos come in a new order anyway).
        shuffle=not progressive,
        validation_data=validation,
        epochs=params.epochs,
        class_weight=class_weights(labels.argmax(axis=1), len(class_names), head_params.class_weight),
        callbacks=[
            ImageProgress(epoch_images, params.batch_size, "fine-tuning"),
            *schedule_callbacks,
            *stopping,
        ],
        verbose=0,
    )
    # The weights are the best epoch's again: its validation scores are in the history already.
    best = stopping[0].best_epoch
    tuned = {name: float(fit.history[f"val_{name}"][best]) for name in ("loss", "accuracy")}
    kept = (tuned["accuracy"], -tuned["loss"]) > (frozen["accuracy"], -frozen["loss"])
    epochs_run, best_epoch = len(fit.history["loss"]), best + 1
    if kept:
        logger.info(
            "Fine-tuned: val_accuracy %.4f (epoch %d of %d)", tuned["accuracy"], best_epoch, epochs_run
        )
    else:
        model.set_weights(frozen_weights)
        logger.info(
            "Fine-tuning reached val_accuracy %.4f, not above the frozen model's %.4f: the final model "
            "is the backbone with the trained head",
            tuned["accuracy"],
            frozen["accuracy"],
        )
    metrics = {
        **history_metrics(fit.history, "finetune"),
        **scalar_metrics(
            {
                "finetune.val_accuracy": tuned["accuracy"],
                "diagnostics/finetune.frozen_val_accuracy": frozen["accuracy"],
                "diagnostics/finetune.kept": float(kept),
                "diagnostics/finetune.best_epoch": best_epoch,
                "diagnostics/finetune.epochs_run": epochs_run,
                "diagnostics/finetune.learning_rate": peak,
            }
        ),
    }
    outcome = {
        "final_model": "fine-tuned" if kept else "head",
        "frozen": frozen,
        "fine_tuned": tuned,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "epoch_images": epoch_images,
        "learning_rate": peak,
    }
    return stamp(model, fingerprint(image_index, params_digest)), metrics, plain_history(fit), outcome


def _frozen_scores(
    head_model: KerasModel, validation_features: dict[str, Any], num_classes: int, label_smoothing: float
) -> dict[str, float]:
    """Validation loss and accuracy of the head on the cached plain-view features, with the loss
    fine-tuning reports (``compile_classifier``'s)."""
    import keras

    probabilities = head_model.predict(validation_features["features"], verbose=0)
    labels = validation_features["labels"]
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)(
        keras.utils.to_categorical(labels, num_classes), probabilities
    )
    return {"loss": float(loss), "accuracy": float((probabilities.argmax(axis=1) == labels).mean())}


def _schedule(params: FineTuningParams, peak: float, steps_per_epoch: int) -> tuple[Any, list[Any]]:
    """The optimizer's learning rate and the callbacks that move it.

    Both warm up from a tenth of ``peak``, so that the first steps of a freshly unfrozen trunk are
    small. ``plateau`` then holds the rate and cuts it when validation loss stalls, which needs no
    known run length; ``cosine`` decays to zero by the last of ``epochs``, so an early stop ends
    it at a rate still high.
    """
    import keras

    from image_classifier.fitting import WarmUp

    warmup = int(params.warmup_epochs * steps_per_epoch)
    if params.schedule == "cosine":
        cosine = keras.optimizers.schedules.CosineDecay(
            peak / 10,
            decay_steps=max(steps_per_epoch * params.epochs - warmup, 1),
            warmup_target=peak,
            warmup_steps=warmup,
        )
        return cosine, []
    plateau = keras.callbacks.ReduceLROnPlateau(
        "val_loss", factor=_PLATEAU_FACTOR, patience=1, min_lr=peak * _PLATEAU_FACTOR**3
    )
    return peak / 10, [WarmUp(peak, warmup), plateau]
