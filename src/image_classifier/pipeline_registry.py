"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from image_classifier.pipelines import (
    augmentation,
    baseline,
    evaluation,
    features,
    fine_tuning,
    ingestion,
    training,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Each stage alone, ``__default__`` running them all in order, and ``baseline`` (ingestion,
    then a convnet from scratch) for comparison."""
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "augmentation": augmentation.create_pipeline(),
        "features": features.create_pipeline(),
        "training": training.create_pipeline(),
        "fine_tuning": fine_tuning.create_pipeline(),
        "evaluation": evaluation.create_pipeline(),
    }
    return {
        **stages,
        "__default__": sum(stages.values(), Pipeline([])),
        "baseline": stages["ingestion"] + baseline.create_pipeline(),
    }
