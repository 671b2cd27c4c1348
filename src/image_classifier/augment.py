"""Albumentations pipelines built from parameters, with one reproducible seed per view."""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from image_classifier.errors import ProjectError

# albumentations only where transforms are built: the features stage imports this module for
# config_hash, and Kedro imports every stage's nodes at start-up.
if TYPE_CHECKING:
    import albumentations as A


class AugmentationConfigError(ProjectError):
    """A transform in ``augmentation.transforms`` cannot be built."""


def build_compose(transforms: list[dict[str, Any]]) -> A.Compose:
    """``[{name, params}, ...]`` → ``A.Compose``; errors name the offending entry."""
    import albumentations as A

    built = []
    for position, entry in enumerate(transforms):
        name, params = entry.get("name"), entry.get("params") or {}
        where = f"augmentation.transforms[{position}] ({name})"
        transform_class = getattr(A, str(name), None)
        if not (isinstance(transform_class, type) and issubclass(transform_class, A.BasicTransform)):
            raise AugmentationConfigError(f"{where}: albumentations has no transform named {name!r}")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                built.append(transform_class(**params))
        except Exception as error:  # albumentations raises TypeError or pydantic's ValidationError
            raise AugmentationConfigError(f"{where}: invalid params {params}: {error}") from None
        # albumentations only warns about a misspelt argument, then ignores it: refuse instead.
        misspelt = [str(w.message) for w in caught if "not valid for transform" in str(w.message)]
        if misspelt:
            raise AugmentationConfigError(f"{where}: invalid params {params}: {misspelt[0]}")
    return A.Compose(built)


def config_hash(transforms: list[dict[str, Any]]) -> str:
    """A stable digest of the augmentation config: part of every augmented view's cache key."""
    canonical = json.dumps(transforms, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def view_seed(seed: int, sha256: str, view: int) -> int:
    """The seed of one (image, view): independent of listing order, run or machine."""
    digest = hashlib.sha256(f"{seed}:{sha256}:{view}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def apply_view(compose: A.Compose, image: np.ndarray, seed: int, view: int) -> np.ndarray:
    """View 0 is the plain image; view k > 0 is ``compose`` run with its own seed.

    ``compose`` must not be shared between threads: seeding it mutates its random state.
    """
    if view == 0:
        return image
    compose.set_random_seed(seed)
    augmented = compose(image=image)["image"]
    if augmented.shape != image.shape:
        raise AugmentationConfigError(
            f"augmentation.transforms changed the image shape {image.shape} → {augmented.shape}; "
            "use transforms that keep the size (the image is already resized to backbone.input_size)"
        )
    return augmented
