"""Evaluation: the final raw-image model scored on the test split, with plots for people."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from image_classifier.config import BackboneParams, EvaluationParams, IngestionParams
from image_classifier.datasets import ImageFolder
from image_classifier.hints import Figure, KerasModel
from image_classifier.progress import counted
from image_classifier.promotion import fingerprint, require_current
from image_classifier.tracking import scalar_metrics

# Keras (TensorFlow), matplotlib and scikit-learn are imported by the nodes that use them: Kedro
# imports every node module at start-up, even to list the pipelines.

logger = logging.getLogger(__name__)


def _split_batches(
    split: str,
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    backbone: dict[str, Any],
    batch_size: int,
    workers: int,
) -> tuple[pd.DataFrame, Iterator[np.ndarray]]:
    """The rows of ``split`` and their photos in batches, as the model sees them, with a bar."""
    from image_classifier.loading import ViewLoader, iter_batches

    rows = image_index.loc[image_index["split"] == split]
    items = list(zip(rows["path"], rows["sha256"], [0] * len(rows), strict=True))
    loader = ViewLoader(raw_images, IngestionParams(**ingestion), BackboneParams(**backbone).input_size)
    return rows, counted(
        iter_batches(items, loader, batch_size, workers), len(items), f"evaluation ({split})"
    )


def choose_tta(
    classifier_model: KerasModel,
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    class_names: list[str],
    backbone: dict[str, Any],
    evaluation: dict[str, Any],
    workers: int,
    params_digest: str,
) -> tuple[str, dict[str, Any]]:
    """The test-time augmentation the logged model will use: ``evaluation.tta``, or with ``auto``
    ``flip`` when it is significantly more accurate than the plain photo on the validation split
    (``selection.compare``): two forward passes a photo are paid for only on evidence."""
    from image_classifier import selection, tta

    params = EvaluationParams(**evaluation)
    if params.tta != "auto":
        return params.tta, {}
    _require_current(classifier_model, image_index, params_digest)
    rows, batches = _split_batches(
        "validation", image_index, raw_images, ingestion, backbone, params.batch_size, workers
    )
    plain, flipped = [], []
    for batch in batches:
        probabilities = classifier_model.predict_on_batch(batch)
        plain.append(probabilities)
        flipped.append(tta.averaged(probabilities, classifier_model.predict_on_batch(tta.mirrored(batch))))
    truth = rows["label"].map({name: i for i, name in enumerate(class_names)}).to_numpy()
    correct = {
        mode: np.concatenate(found).argmax(axis=1) == truth if found else np.zeros(0, bool)
        for mode, found in (("none", plain), ("flip", flipped))
    }
    accuracy = {mode: float(found.mean()) if len(found) else 0.0 for mode, found in correct.items()}
    choice = selection.compare(correct["none"], correct["flip"], params.selection_alpha)
    chosen = "flip" if choice.switch else "none"
    logger.info(
        "Test-time augmentation: validation accuracy %.4f plain, %.4f with the mirror image: %s",
        accuracy["none"],
        accuracy["flip"],
        choice.sentence("the plain photo", "the mirror-image average"),
    )
    metrics = {
        "diagnostics/evaluation.val_accuracy": accuracy["none"],
        "diagnostics/evaluation.val_accuracy_flip": accuracy["flip"],
        "diagnostics/evaluation.tta_flip": float(chosen == "flip"),
        **choice.metrics("diagnostics/evaluation.tta_selection"),
    }
    return chosen, scalar_metrics(metrics)


def predict_test(
    classifier_model: KerasModel,
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    class_names: list[str],
    backbone: dict[str, Any],
    evaluation: dict[str, Any],
    workers: int,
    params_digest: str,
    tta_mode: str,
) -> pd.DataFrame:
    """Test-split predictions of the final model, with its test-time augmentation: path, true
    label, predicted label, confidence."""
    from image_classifier import tta

    _require_current(classifier_model, image_index, params_digest)
    batch_size = EvaluationParams(**evaluation).batch_size
    test, batches = _split_batches("test", image_index, raw_images, ingestion, backbone, batch_size, workers)
    probabilities = np.concatenate(
        [tta.predict(classifier_model, batch, tta_mode, len(batch)) for batch in batches]
    )
    return pd.DataFrame(
        {
            "path": test["path"].to_numpy(),
            "label": test["label"].to_numpy(),
            "predicted": [class_names[i] for i in probabilities.argmax(axis=1)],
            "confidence": probabilities.max(axis=1),
        }
    )


def score(
    predictions: pd.DataFrame, class_names: list[str], fine_tuning_outcome: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Contract metrics of the final model, and a per-class report. When fine-tuning ran, the
    final model's accuracy is also ``finetune.test_accuracy``: the stage's result, which is the
    frozen model when fine-tuning did not beat it (``diagnostics/finetune.kept`` says which)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    truth, predicted = predictions["label"], predictions["predicted"]
    accuracy = float(accuracy_score(truth, predicted))
    macro_f1 = float(f1_score(truth, predicted, labels=class_names, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=class_names, zero_division=0
    )
    report = {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        },
    }
    metrics = scalar_metrics({"test_accuracy": accuracy, "test_macro_f1": macro_f1})
    if "epochs_run" in fine_tuning_outcome:
        metrics.update(scalar_metrics({"finetune.test_accuracy": accuracy}))
    logger.info(
        "Final model on %d test images: accuracy %.4f, macro-F1 %.4f", len(predictions), accuracy, macro_f1
    )
    return metrics, report


def per_class_table(classification_report: dict[str, Any]) -> pd.DataFrame:
    """The per-class precision, recall, F1 and support as a table, one row per class."""
    table = pd.DataFrame.from_dict(classification_report["per_class"], orient="index")
    return table.rename_axis("class").reset_index().round(4)


def plot_misclassified(
    predictions: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    max_images: int = 16,
    thumbnail: int = 160,
) -> Figure:
    """The test images the model got wrong with the most confidence: the first place to look for
    label noise, look-alike classes or a shortcut the model learned."""
    from image_classifier.gallery import thumbnail_grid
    from image_classifier.loading import ViewLoader

    wrong = predictions.loc[predictions["label"] != predictions["predicted"]]
    wrong = wrong.sort_values(["confidence", "path"], ascending=[False, True]).head(max_images)
    loader = ViewLoader(raw_images, IngestionParams(**ingestion), thumbnail)
    cells = [
        (row["path"], f"true: {row['label']}\npredicted: {row['predicted']} ({row['confidence']:.2f})")
        for _, row in wrong.iterrows()
    ]
    total = int((predictions["label"] != predictions["predicted"]).sum())
    return thumbnail_grid(
        lambda path: loader(path, "", 0),
        cells,
        columns=4,
        title=f"Most confident mistakes ({len(wrong)} of {total})",
        empty="no misclassified test images",
    )


def plot_confusion_matrix(predictions: pd.DataFrame, class_names: list[str]) -> Figure:
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(predictions["label"], predictions["predicted"], labels=class_names)
    size = 2 + 0.6 * len(class_names)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(matrix, cmap="Blues")
    axes.set(
        xticks=range(len(class_names)),
        yticks=range(len(class_names)),
        xlabel="predicted",
        ylabel="true",
        title=f"Test confusion matrix (accuracy {np.trace(matrix) / max(matrix.sum(), 1):.3f})",
    )
    axes.set_xticklabels(class_names, rotation=45, ha="right")
    axes.set_yticklabels(class_names)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(
            column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black"
        )
    figure.colorbar(image, ax=axes)
    figure.tight_layout()
    return figure


def plot_training_curves(
    head_history: dict[str, list[float]],
    finetune_history: dict[str, list[float]],
    fine_tuning_outcome: dict[str, Any],
) -> Figure:
    """Loss and accuracy per epoch (1, 2, ...); fine-tuning epochs continue after the head's.
    Each epoch is a marker: a one-epoch series is a point, not an invisible line. The title says
    which model is final, and a dotted line marks the fine-tuning epoch kept."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    offset = len(head_history.get("loss", []))
    for stage, history, start in (("head", head_history, 0), ("fine-tune", finetune_history, offset)):
        for name, style in (("", "-"), ("val_", "--")):
            for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
                values = history.get(f"{name}{metric}", [])
                if values:
                    axes.plot(
                        range(start + 1, start + len(values) + 1),
                        values,
                        style,
                        marker="o",
                        markersize=3,
                        label=f"{stage} {name or 'train_'}{metric}",
                    )
    final = fine_tuning_outcome["final_model"]
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        if final == "fine-tuned":
            axes.axvline(
                offset + fine_tuning_outcome["best_epoch"], color="grey", linestyle=":", label="kept"
            )
        axes.set(xlabel="epoch", ylabel=metric, title=metric)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axes.lines:
            axes.legend(fontsize="small")
    if final == "fine-tuned":
        title = f"final model: fine-tuned, epoch {fine_tuning_outcome['best_epoch']} of {fine_tuning_outcome['epochs_run']}"
    elif finetune_history:
        title = "final model: frozen backbone + head (fine-tuning was not significantly better on validation)"
    elif "epochs_run" in fine_tuning_outcome:
        title = "final model: frozen backbone + head (fine-tuning could not be chosen over it: not started)"
    else:
        title = "final model: frozen backbone + head (fine-tuning off)"
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def model_for_registry(
    classifier_model: KerasModel,
    image_index: pd.DataFrame,
    class_names: list[str],
    backbone: dict[str, Any],
    ingestion: dict[str, Any],
    params_digest: str,
    tta_mode: str,
) -> dict[str, Any]:
    """What the registered pyfunc needs: the model, its class order, its input size, its
    test-time augmentation, and the guards it applies to the files it is sent (the ones
    ingestion applied to the training set)."""
    _require_current(classifier_model, image_index, params_digest)
    return {
        "model": classifier_model,
        "class_names": class_names,
        "input_size": BackboneParams(**backbone).input_size,
        "tta": tta_mode,
        "limits": ingestion,  # the logged model keeps the limits it serves with
    }


def _require_current(model: KerasModel, image_index: pd.DataFrame, params_digest: str) -> None:
    # Checked by each node that reads the model: Kedro may run registration before scoring.
    require_current(
        model,
        fingerprint(image_index, params_digest),
        "classifier_model (data/06_models/classifier.keras)",
        "fine-tuning: kedro run --from-nodes fine_tune",
    )
