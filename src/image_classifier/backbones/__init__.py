"""Pretrained backbones, ported to Keras, with offline weights."""

from image_classifier.backbones.registry import (
    BACKBONES,
    BackboneSpec,
    BackboneWeightsError,
    check_weights_available,
    get_spec,
    load_pretrained,
    weights_identity,
)

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "BackboneWeightsError",
    "check_weights_available",
    "get_spec",
    "load_pretrained",
    "weights_identity",
]
