"""evaluation pipeline."""

from image_classifier.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
