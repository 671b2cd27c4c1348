"""Pretrained backbones, ported to Keras, with offline weights."""

from image_classifier.backbones.registry import BACKBONES, BackboneSpec, get_spec, load_pretrained

__all__ = ["BACKBONES", "BackboneSpec", "get_spec", "load_pretrained"]
