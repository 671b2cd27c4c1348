"""Fine-tuning: backbone + trained head, top backbone layers unfrozen, low learning rate."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
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
    selection_alpha: float,
) -> tuple[KerasModel, dict[str, Any], dict[str, list[float]], dict[str, Any]]:
    """Return the final raw-image classifier, its metrics, the fine-tuning history and the
    outcome: which model is final and why.

    Fine-tuning runs up to ``epochs`` epochs and stops ``patience`` epochs after its best one
    (the most accurate on validation, then the lowest loss), keeping it; epochs that beat the
    frozen model on neither count against the patience unless each is more accurate than every
    epoch before it, so a fine-tuning that cannot help costs ``patience`` epochs. The final
    model is the fine-tuned one only if it is significantly more accurate than the frozen
    backbone with the trained head on the same validation photos (``selection.compare`` at
    ``selection_alpha``); otherwise it is that frozen model. Fine-tuning does not start when it
    could not be chosen even by righting ``fixable_share`` of the frozen model's validation
    mistakes without a new one.

    ``training`` is the head's recipe: fine-tuning keeps its label smoothing and class weights.
    The model is stamped with the fingerprint of this run's data and parameters, which
    evaluation checks before it scores or registers the file.
    """
    # TensorFlow and Keras here, not at the top: Kedro imports every node module at start-up.
    import keras

    from image_classifier import selection
    from image_classifier.distribution import training_strategy
    from image_classifier.fitting import (
        ImageProgress,
        PairedValidation,
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
    paths, shas, labels = split_arrays(image_index, "train", class_names)
    validation_split = split_arrays(image_index, "validation", class_names)
    # The model fine-tuning must beat: the frozen backbone with the trained head. Its scores on
    # the validation photos are the head's on their cached features (the same pixels through
    # the same network, to within 1e-5): no pass over the photos, no extra trace of the model.
    smoothing = head_params.smoothing(len(paths))
    frozen = _frozen_scores(head_model, validation_features, validation_split, smoothing)
    unstarted = _why_not_started(params, frozen["correct"], selection_alpha)
    if unstarted:
        logger.info(
            "Fine-tuning skipped (%s): the final model is the backbone with the trained head", unstarted
        )
        trunk = load_pretrained(spec.name, size, backbone_params.cache_dir, backbone_params.weights)
        model = full_classifier(feature_extractor(trunk, spec, size), head_model)
        outcome, metrics = {"final_model": "head", "reason": unstarted}, {}
        if params.enabled:
            outcome.update(frozen=_plain_scores(frozen), epochs_run=0)
            metrics = scalar_metrics(
                {
                    # The stage's result is the frozen model, as finetune.test_accuracy will be.
                    "finetune.val_accuracy": frozen["accuracy"],
                    "diagnostics/finetune.frozen_val_accuracy": frozen["accuracy"],
                    "diagnostics/finetune.kept": 0.0,
                    "diagnostics/finetune.epochs_run": 0,
                }
            )
        return stamp(model, fingerprint(image_index, params_digest)), metrics, {}, outcome

    seed_everything(seed)
    transforms = tuple(t.model_dump() for t in AugmentationParams(**augmentation).transforms)
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
    validation = AugmentedImages(
        ViewLoader(raw_images, limits, size),
        *validation_split,
        batch_size=params.batch_size,
        seed=seed,
        workers=workers,
        pixels=ScratchPixels(len(validation_split[0]), size, "Fine-tuning (validation photos)"),
        shuffle=False,  # in the order of the frozen model's scores, photo for photo
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
    frozen_weights = model.get_weights()
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    paired = PairedValidation(validation, loss, frozen["correct"])
    paired.set_model(fitted)  # fit sets it too; the rate probe scores before any fit
    with training_strategy(params.strategy).scope():
        unfrozen = unfreeze_top(trunk, params.unfreeze_layers, spec.tunable)
        peak, probed = params.peak_learning_rate(len(paths)), {}
        if params.rate_probe:
            # Its own batches: the fit after it sees the same photos and views as without it.
            peak, probed = _probe(params, fitted, paired, training_images(train_size), smoothing)
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
        epochs=params.epochs,
        class_weight=class_weights(labels.argmax(axis=1), len(class_names), head_params.class_weight),
        callbacks=[
            paired,  # validation, first: the callbacks after it read its scores
            ImageProgress(epoch_images, params.batch_size, "fine-tuning"),
            *schedule_callbacks,
            *stopping,
        ],
        verbose=0,
    )
    # The weights are the best epoch's again: its validation scores are in the history already.
    best = stopping[0].best_epoch
    tuned = {name: float(fit.history[f"val_{name}"][best]) for name in ("loss", "accuracy")}
    choice = selection.compare(frozen["correct"], paired.correct[best], selection_alpha)
    kept = choice.switch
    epochs_run, best_epoch = len(fit.history["loss"]), best + 1
    sentence = choice.sentence(
        "the frozen backbone + head", f"fine-tuning (epoch {best_epoch} of {epochs_run})"
    )
    if not kept:
        model.set_weights(frozen_weights)
    logger.info("Fine-tuning: %s", sentence)
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
                **choice.metrics("diagnostics/finetune.selection"),
                **{f"diagnostics/finetune.probe_val_loss.{rate:g}": value for rate, value in probed.items()},
            }
        ),
    }
    outcome = {
        "final_model": "fine-tuned" if kept else "head",
        "reason": sentence,
        "frozen": _plain_scores(frozen),
        "fine_tuned": tuned,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "epoch_images": epoch_images,
        "learning_rate": peak,
        "selection": {"gained": choice.gained, "lost": choice.lost, "p_value": choice.p_value},
        **({"rate_probe": {f"{rate:g}": value for rate, value in probed.items()}} if probed else {}),
    }
    return stamp(model, fingerprint(image_index, params_digest)), metrics, plain_history(fit), outcome


def _why_not_started(params: FineTuningParams, frozen_correct: np.ndarray, alpha: float) -> str | None:
    """Why fine-tuning is not run, or None: it is off, or it could not be chosen over the frozen
    model even by righting ``fixable_share`` of its validation mistakes and making no new one."""
    from image_classifier.selection import can_ever_switch

    if not params.enabled:
        return "fine_tuning.enabled is false"
    errors = int((~frozen_correct).sum())
    fixable = math.floor(errors * params.fixable_share)
    if params.fixable_share > 0 and not can_ever_switch(fixable, alpha):
        return (
            f"the frozen model makes {errors} mistakes on {len(frozen_correct)} validation photos: righting "
            f"{fixable} of them could not be significant at p < {alpha:g}"
        )
    return None


def _frozen_scores(
    head_model: KerasModel,
    validation_features: dict[str, Any],
    validation_split: tuple[list[str], list[str], np.ndarray],
    label_smoothing: float,
) -> dict[str, Any]:
    """Validation loss, accuracy and each photo's right-or-wrong (in the order of
    ``validation_split``, the photos fine-tuning validates on) of the head on the cached
    plain-view features, with the loss fine-tuning reports (``compile_classifier``'s)."""
    import keras

    paths, _, one_hot = validation_split
    row = {path: i for i, path in enumerate(validation_features["paths"])}
    order = np.array([row[path] for path in paths], dtype=np.int64)
    features = validation_features["features"][order]
    probabilities = head_model.predict(features, verbose=0) if len(order) else np.zeros((0, one_hot.shape[1]))
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)(one_hot, probabilities)
    correct = probabilities.argmax(axis=1) == one_hot.argmax(axis=1)
    return {
        "loss": float(loss) if len(order) else float("nan"),
        "accuracy": float(correct.mean()) if len(order) else 0.0,
        "correct": correct,
    }


def _plain_scores(scores: dict[str, Any]) -> dict[str, float]:
    """The frozen model's loss and accuracy, for the outcome file."""
    return {name: scores[name] for name in ("loss", "accuracy")}


def _probe(
    params: FineTuningParams, fitted: Any, paired: Any, train: Any, smoothing: float
) -> tuple[float, dict[float, float]]:
    """The peak rate of ``rate_probe`` whose warm-up and ``rate_probe_epochs`` at the peak end at
    the lowest validation loss, and each rate's loss (``fitting.probe_rates``)."""
    from image_classifier.fitting import WarmUp, probe_rates
    from image_classifier.models import compile_classifier

    warmup_steps = int(params.warmup_epochs * len(train))
    return probe_rates(
        fitted,
        lambda rate: compile_classifier(fitted, rate, smoothing),
        train,
        warmup_steps + max(1, int(params.rate_probe_epochs * len(train))),
        params.rate_probe,
        lambda: paired.scores()[0]["val_loss"],
        warm_up=lambda rate: [WarmUp(rate, warmup_steps)],
    )


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
