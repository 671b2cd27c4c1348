"""One namespace per backbone, ``sweep.<backbone>``, sharing ingestion and augmentation outputs."""

from __future__ import annotations

import re
import warnings
from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from image_classifier.pipelines.features.nodes import compute_features
from image_classifier.pipelines.sweep.nodes import backbone_for, images_per_second, summarise, sweep_record
from image_classifier.pipelines.training.nodes import train_head


def namespace(backbone: str) -> str:
    """``keras:Xception`` → ``sweep.keras_xception``: a name Kedro accepts in dataset names."""
    return "sweep." + re.sub(r"[^0-9a-z]+", "_", backbone.lower()).strip("_")


_SHARED_INPUTS = {"view_plan", "image_index", "raw_images", "feature_store", "class_names"}
_PARAMETERS = {
    "params:backbone",
    "params:sweep",
    "params:features",
    "params:augmentation",
    "params:seed",
    "params:training",
}


def _backbone_pipeline(backbone: str) -> Pipeline:
    """The template, namespaced: its own datasets are ``sweep.<backbone>.*``; ingestion and
    augmentation outputs and the parameters are shared."""
    choose = update_wrapper(partial(backbone_for, backbone), backbone_for)
    template = Pipeline(
        [
            node(choose, ["params:backbone", "params:sweep"], "backbone", name="backbone"),
            node(
                compute_features,
                [
                    "view_plan",
                    "image_index",
                    "raw_images",
                    "feature_store",
                    "class_names",
                    "backbone",
                    "params:features",
                    "params:augmentation",
                    "params:seed",
                ],
                ["train_features", "validation_features", "test_features", "feature_metrics"],
                name="compute_features",
            ),
            node(
                train_head,
                [
                    "train_features",
                    "validation_features",
                    "test_features",
                    "class_names",
                    "params:training",
                    "params:seed",
                ],
                ["head_model", "head_metrics", "head_history"],
                name="train_head",
            ),
            node(
                images_per_second,
                ["backbone", "image_index", "raw_images", "params:features", "params:sweep"],
                "images_per_s",
                name="images_per_second",
            ),
            node(
                sweep_record,
                [
                    "backbone",
                    "head_model",
                    "head_metrics",
                    "head_history",
                    "feature_metrics",
                    "test_features",
                    "class_names",
                    "images_per_s",
                    "params:training",
                ],
                "sweep_run",
                name="sweep_record",
            ),
        ]
    )
    return Pipeline(template, namespace=namespace(backbone), inputs=_SHARED_INPUTS, parameters=_PARAMETERS)


def create_pipeline(backbones: list[str] | tuple[str, ...] = (), **kwargs) -> Pipeline:
    if not backbones:
        return Pipeline([])
    per_backbone = sum((_backbone_pipeline(name) for name in backbones), Pipeline([]))
    with warnings.catch_warnings():
        # The summary reads each namespace's output by its namespaced (dotted) name on purpose.
        warnings.filterwarnings("ignore", message=".*dataset names contain '.'")
        summary = node(
            summarise,
            [f"{namespace(name)}.sweep_run" for name in backbones],
            ["sweep_summary", "sweep_chart"],
            name="sweep.summarise",
        )
    return Pipeline([per_backbone, summary], tags="sweep")
