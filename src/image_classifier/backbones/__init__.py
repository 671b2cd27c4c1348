"""Pretrained backbones, ported to Keras, with offline weights.

``registry`` describes them (the table); ``builder`` loads them and checks their weights.
"""

from image_classifier.backbones.builder import check_weights_available, load_pretrained, weights_identity
from image_classifier.backbones.errors import BackboneWeightsError
from image_classifier.backbones.registry import BACKBONES, BackboneSpec, get_spec

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "BackboneWeightsError",
    "check_weights_available",
    "get_spec",
    "load_pretrained",
    "weights_identity",
]
