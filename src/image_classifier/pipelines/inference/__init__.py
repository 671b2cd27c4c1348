"""Inference: classify every image in a folder with the champion (or any model URI)."""

from image_classifier.pipelines.inference.pipeline import create_pipeline

__all__ = ["create_pipeline"]
