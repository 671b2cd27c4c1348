"""audit pipeline."""

from image_classifier.pipelines.audit.pipeline import create_pipeline

__all__ = ["create_pipeline"]
