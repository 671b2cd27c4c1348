"""augmentation pipeline."""

from image_classifier.pipelines.augmentation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
