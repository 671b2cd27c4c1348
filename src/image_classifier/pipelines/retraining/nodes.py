"""Promotion: the challenger replaces the champion only when it is better on the same images."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from image_classifier.config import IngestionParams, RetrainingParams
from image_classifier.datasets import ImageFolder
from image_classifier.promotion import fingerprint, trained_on

logger = logging.getLogger(__name__)


def score_models(
    challenger: dict[str, Any],
    champion: dict[str, Any],
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    batch_size: int,
) -> dict[str, float | None]:
    """Test accuracy of both registered models on the current test split, from the encoded
    files, through the same pyfunc path that serves them: the same images for both."""
    test = image_index.loc[image_index["split"] == "test"]
    max_bytes = IngestionParams(**ingestion).max_file_bytes
    truth = test["label"].to_numpy()
    batches = [test["path"].iloc[start : start + batch_size] for start in range(0, len(test), batch_size)]

    def accuracy(model: Any) -> float:
        # Read batch by batch: the whole test split's files at once could be gigabytes.
        predicted: list[str] = []
        for paths in batches:
            files = np.empty(len(paths), dtype=object)
            files[:] = [raw_images.read_bytes(path, max_bytes) for path in paths]
            predicted += model.predict(files)["label"].tolist()
        return float(np.mean(np.asarray(predicted) == truth))

    scores = {"challenger": accuracy(challenger["model"]), "champion": None}
    if champion["model"] is not None:
        scores["champion"] = accuracy(champion["model"])
    return scores


def decide_promotion(
    scores: dict[str, float | None],
    challenger: dict[str, Any],
    champion: dict[str, Any],
    image_index: pd.DataFrame,
    params_digest: str,
    retraining: dict[str, Any],
) -> dict[str, Any]:
    """Promote when there is no champion, or when the challenger gains ``min_improvement`` or
    more (a tie never promotes), unless nothing the model depends on changed since the champion."""
    params = RetrainingParams(**retraining)
    new, old = scores["challenger"], scores["champion"]
    current = fingerprint(image_index, params_digest)
    if champion["version"] is None:
        promote, reason = True, "first model: no champion yet"
    elif trained_on(champion["tags"], current):
        promote, reason = False, f"same data and parameters as champion v{champion['version']}"
    elif new > old and new - old >= params.min_improvement:
        promote, reason = True, f"better by {new - old:.4f} (at least {params.min_improvement} needed)"
    else:
        promote, reason = False, f"not better by {params.min_improvement} or more ({new:.4f} vs {old:.4f})"
    logger.info("Promotion: %s (%s)", "promoted" if promote else "kept the champion", reason)
    return {
        "promote": promote,
        "decision": "promoted" if promote else "kept champion",
        "reason": reason,
        "challenger_version": challenger["version"],
        "challenger_score": new,
        "champion_version": champion["version"],
        "champion_score": old,
        "min_improvement": params.min_improvement,
        **current,
    }
