"""Project pipelines: the one place where stage pipelines are put together."""

from __future__ import annotations

import os
from pathlib import Path

from kedro.config import MissingConfigException
from kedro.framework.project import settings
from kedro.pipeline import Pipeline
from kedro.utils import find_kedro_project

from image_classifier.pipelines import (
    audit,
    augmentation,
    baseline,
    evaluation,
    features,
    fine_tuning,
    inference,
    ingestion,
    retraining,
    sweep,
    training,
)

# The stages of `__default__`, in order; each stage pipeline's nodes carry its name as a tag.
DEFAULT_STAGES = ("ingestion", "augmentation", "features", "audit", "training", "fine_tuning", "evaluation")


def _sweep_backbones() -> list[str]:
    """``sweep.backbones`` from the project's conf/ (base, then the run's environment), read once
    at registration: the list decides how many namespaced pipelines the sweep has. The project's
    ``kedro run --env`` and ``image-classifier-retrain --env`` put the environment in KEDRO_ENV,
    as Kedro's own ``kedro ipython --env`` does."""
    # The project's root, also from a folder under it (a notebook's kernel starts in notebooks/):
    # a loader over a missing conf/ would leave OmegaConf's `globals` resolver, which the last
    # loader created owns, empty, and the session's catalog would then fail to resolve.
    root = find_kedro_project(Path.cwd()) or Path.cwd()
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(root / settings.CONF_SOURCE),
        env=os.environ.get("KEDRO_ENV"),
        **settings.CONFIG_LOADER_ARGS,
    )
    try:
        parameters = loader["parameters"]
    except (MissingConfigException, ValueError):
        return []
    return list(parameters.get("sweep", {}).get("backbones", []))


def register_pipelines() -> dict[str, Pipeline]:
    """Each stage alone, ``__default__`` running them all in order (the audit after features),
    ``baseline`` (ingestion, then a convnet from scratch) and ``sweep`` (ingestion, augmentation, then the features and training
    stages again for every backbone of ``sweep.backbones``) for comparison; ``retraining`` (the
    default stages, then promotion over the champion) and ``inference`` (a folder → predictions)."""
    stages = {
        "ingestion": ingestion.create_pipeline(),
        "augmentation": augmentation.create_pipeline(),
        "features": features.create_pipeline(),
        "audit": audit.create_pipeline(),
        # They read the index less what audit.exclude leaves out.
        **{
            name: Pipeline(stage.create_pipeline(), inputs={"image_index": "training_index"})
            for name, stage in (
                ("training", training),
                ("fine_tuning", fine_tuning),
                ("evaluation", evaluation),
            )
        },
    }
    default = sum((stages[name] for name in DEFAULT_STAGES), Pipeline([]))
    per_backbone = features.create_pipeline(backbone="backbone") + training.create_pipeline()
    return {
        **stages,
        "__default__": default,
        "retraining": default + retraining.create_pipeline(),
        "retraining_check": stages["ingestion"],
        "inference": inference.create_pipeline(),
        "baseline": stages["ingestion"] + baseline.create_pipeline(),
        "sweep": stages["ingestion"]
        + stages["augmentation"]
        + sweep.create_pipeline(_sweep_backbones(), per_backbone),
    }
