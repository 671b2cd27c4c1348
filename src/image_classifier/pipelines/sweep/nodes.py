"""Backbone sweep: the same head recipe on each backbone's features, scored side by side."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from image_classifier import engines
from image_classifier.config import BackboneParams, FeaturesParams, IngestionParams, SweepParams
from image_classifier.datasets import ImageFolder
from image_classifier.hints import Figure, KerasModel

# Keras (TensorFlow), matplotlib and scikit-learn are imported by the nodes that use them: Kedro
# imports every node module at start-up, even to list the pipelines.

logger = logging.getLogger(__name__)


def backbone_for(name: str, backbone: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """The project's backbone parameters with ``name`` swapped in, at its native input size."""
    weights = SweepParams(**sweep).weights.get(name)
    return BackboneParams(**{**backbone, "name": name, "input_size": None, "weights": weights}).model_dump()


def images_per_second(
    backbone: dict[str, Any],
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    features: dict[str, Any],
    sweep: dict[str, Any],
) -> float:
    """Backbone-only throughput on real test photos, decoded beforehand; 0 when switched off.

    One batch warms the traced function up first: tracing is paid once per run, not per image.
    """
    from image_classifier.loading import ViewLoader, iter_batches

    count = SweepParams(**sweep).throughput_images
    if count == 0:
        return 0.0
    params, features_params = BackboneParams(**backbone), FeaturesParams(**features)
    batch_size = features_params.batch_size
    test = image_index.loc[image_index["split"] == "test"].head(count)
    items = list(zip(test["path"], test["sha256"], [0] * len(test), strict=True))
    loader = ViewLoader(raw_images, IngestionParams(**ingestion), params.input_size)
    batches = list(iter_batches(items, loader, batch_size, 1))
    engine = engines.backbone_forward(params, features_params)
    engine(batches[0])
    start = time.perf_counter()
    for _ in engine.map(batches):
        pass
    rate = len(items) / (time.perf_counter() - start)
    logger.info("Sweep: %s at %d px: %.1f images/s", params.name, params.input_size, rate)
    return rate


def sweep_record(
    backbone: dict[str, Any],
    head_model: KerasModel,
    head_metrics: dict[str, Any],
    head_history: dict[str, list[float]],
    feature_metrics: dict[str, Any],
    test_features: dict[str, Any],
    class_names: list[str],
    throughput: float,
    training: dict[str, Any],
) -> dict[str, Any]:
    """One backbone's results, under the same names as a default run's, for its own MLflow run."""
    from sklearn.metrics import f1_score

    from image_classifier.fitting import history_metrics

    params = BackboneParams(**backbone)
    predicted = head_model.predict(test_features["features"], verbose=0).argmax(axis=1)
    macro_f1 = float(
        f1_score(
            test_features["labels"],
            predicted,
            labels=range(len(class_names)),
            average="macro",
            zero_division=0,
        )
    )
    metrics = {
        **{name: value["value"] for name, value in head_metrics.items() if isinstance(value, dict)},
        **{name: value["value"] for name, value in feature_metrics.items()},
        "test_macro_f1": macro_f1,
        "features.images_per_s": round(throughput, 2),
    }
    return {
        "name": params.name,
        "params": {
            "backbone.name": params.name,
            "backbone.input_size": params.input_size,
            "backbone.feature_dim": int(test_features["features"].shape[1]),
            **{f"training.{key}": value for key, value in training.items()},
        },
        "metrics": metrics,
        "history": history_metrics(head_history, "head"),
    }


def summarise(*records: dict[str, Any]) -> tuple[pd.DataFrame, Figure]:
    """A table of every backbone's figures, and test accuracy beside images/s as bars."""
    import matplotlib.pyplot as plt

    table = pd.DataFrame(
        [
            {
                "backbone": record["name"],
                "input_size": record["params"]["backbone.input_size"],
                "feature_dim": record["params"]["backbone.feature_dim"],
                "images_per_s": record["metrics"]["features.images_per_s"],
                "head_val_accuracy": record["metrics"]["head.val_accuracy"],
                "head_test_accuracy": record["metrics"]["head.test_accuracy"],
                "test_macro_f1": record["metrics"]["test_macro_f1"],
            }
            for record in records
        ]
    ).sort_values("head_test_accuracy", ascending=False, ignore_index=True)
    figure, (accuracy, speed) = plt.subplots(1, 2, figsize=(11, 0.6 * len(table) + 2), sharey=True)
    positions = np.arange(len(table))
    accuracy.barh(positions, table["head_test_accuracy"], color="tab:blue")
    accuracy.set(yticks=positions, yticklabels=table["backbone"], xlabel="head test accuracy", xlim=(0, 1))
    speed.barh(positions, table["images_per_s"], color="tab:orange")
    speed.set(xlabel="backbone images/s (this machine)")
    for axes, column, fmt in ((accuracy, "head_test_accuracy", "{:.3f}"), (speed, "images_per_s", "{:.0f}")):
        for y, value in zip(positions, table[column], strict=True):
            axes.text(value, y, " " + fmt.format(value), va="center")
    accuracy.invert_yaxis()
    figure.suptitle("Backbone sweep: accuracy vs. speed")
    figure.tight_layout()
    return table, figure
