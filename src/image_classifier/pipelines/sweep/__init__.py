"""Backbone sweep: features → head → test scores for several backbones, one nested MLflow run each."""

from image_classifier.pipelines.sweep.pipeline import create_pipeline

__all__ = ["create_pipeline"]
