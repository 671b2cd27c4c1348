"""features pipeline."""

from image_classifier.pipelines.features.pipeline import create_pipeline

__all__ = ["create_pipeline"]
