"""fine_tuning pipeline."""

from image_classifier.pipelines.fine_tuning.pipeline import create_pipeline

__all__ = ["create_pipeline"]
