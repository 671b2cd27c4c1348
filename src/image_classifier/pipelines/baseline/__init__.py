"""Baseline: a small convnet trained from scratch, for comparison; not part of ``__default__``."""

from image_classifier.pipelines.baseline.pipeline import create_pipeline

__all__ = ["create_pipeline"]
