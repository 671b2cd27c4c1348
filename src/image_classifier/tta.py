"""Test-time augmentation: a photo's probabilities averaged with its mirror image's.

Used by evaluation (to choose it on validation and to score the test split) and by the logged
model (so that serving and inference predict exactly what evaluation scored). Plain numpy around
``model.predict``: the served model imports it without importing Keras first.
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
    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    if tta == "flip":
        probabilities = averaged(
            probabilities, model.predict(mirrored(images), batch_size=batch_size, verbose=0)
        )
    return probabilities
