"""Inference: every file in a folder through the registered pyfunc, the unreadable ones listed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from image_classifier.config import InferenceParams, IngestionParams
from image_classifier.datasets import ImageFolder
from image_classifier.images import UnusableImage, decode_rgb, name_problem, printable, resize
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)


def classify_folder(
    model: Any, images: ImageFolder, ingestion: dict[str, Any], inference: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per file: its label and class probabilities, or the reason it could not be read.

    A file that is not a usable image is a row with an ``error``, never a failed run: one bad
    upload must not stop a folder of thousands. Files pass ingestion's guards (name, size,
    header, decodability), and each image is resized to the model's input as soon as it is
    decoded, so a batch holds ``batch_size`` small images, never the photos at full size.
    """
    limits, batch_size = IngestionParams(**ingestion), InferenceParams(**inference).batch_size
    size = model.unwrap_python_model().input_size
    rows: list[pd.DataFrame] = []
    failures: list[dict[str, str]] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        predicted = model.predict(np.stack([image for _file, image in pending]))
        predicted.insert(0, "file", [file for file, _image in pending])
        rows.append(predicted)
        pending.clear()

    for file in tqdm(images.files, desc="inference", unit="img"):
        try:
            pending.append((file, _load(images, file, limits, size)))
        except UnusableImage as error:
            failures.append({"file": printable(file), "error": str(error)})
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    table = pd.concat([*rows, pd.DataFrame(failures, columns=["file", "error"])], ignore_index=True)
    table["error"] = table.get("error", pd.Series(dtype=object)).fillna("")
    logger.info("Inference: %d classified, %d unreadable", len(images.files) - len(failures), len(failures))
    for failure in failures:
        logger.warning("Unreadable: %s (%s)", failure["file"], failure["error"])
    metrics = scalar_metrics(
        {"inference.classified": len(images.files) - len(failures), "inference.unreadable": len(failures)}
    )
    return table, metrics


def _load(images: ImageFolder, file: str, limits: IngestionParams, size: int) -> np.ndarray:
    if problem := name_problem(file):
        raise UnusableImage(problem)
    data = images.read_bytes(file, limits.max_file_bytes)
    return resize(decode_rgb(data, limits.max_pixels, limits.min_side, size), size)
