"""Retraining: the default pipeline, then promotion of the challenger over the champion."""

from image_classifier.pipelines.retraining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
