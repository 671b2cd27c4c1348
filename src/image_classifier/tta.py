"""Test-time augmentation: a photo's probabilities averaged with its mirror image's.

Used by evaluation (to choose it on validation and to score the test split) and by the logged
model (so that serving and inference predict exactly what evaluation scored). Plain numpy around
the model's ``predict_on_batch``: the served model imports it without importing Keras first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODES = ("none", "flip")


def mirrored(images: np.ndarray) -> np.ndarray:
    """A uint8 batch (N, H, W, 3) flipped left to right."""
    return np.ascontiguousarray(images[:, :, ::-1])


def averaged(plain: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    return (plain + mirror) / 2


def predict(model: Any, images: np.ndarray, tta: str, batch_size: int) -> np.ndarray:
    """Class probabilities of a uint8 batch; with ``flip``, averaged with the mirrored batch's."""
    if tta not in MODES:
        raise ValueError(f"test-time augmentation {tta!r}: expected one of {', '.join(MODES)}")
    if tta == "flip":
        # One pass over the photos and their mirror images: a one-photo request is one call.
        both = _predict(model, np.concatenate([images, mirrored(images)]), batch_size)
        return averaged(both[: len(images)], both[len(images) :])
    return _predict(model, images, batch_size)


def _predict(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    # ``model.predict`` builds a data pipeline on every call, which costs several times a photo's
    # forward pass (a served one-photo request took 201 ms with it, 41 ms without: benchmarks/
    # README.md, "Serving"); the compiled function behind ``predict_on_batch`` is traced once.
    return np.concatenate(
        [
            np.asarray(model.predict_on_batch(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
    )
