"""ingestion pipeline."""

from image_classifier.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
