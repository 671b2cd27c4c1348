"""training pipeline."""

from image_classifier.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
