"""One namespace per backbone, ``sweep.<backbone>``: the stages given as ``per_backbone`` (the
registry passes features → training) between this package's own nodes, sharing ingestion and
augmentation outputs and every parameter."""

from __future__ import annotations

import warnings
from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from image_classifier.config import sweep_namespace
from image_classifier.pipelines.sweep.nodes import backbone_for, images_per_second, summarise, sweep_record

_SHARED_INPUTS = {"view_plan", "image_index", "raw_images", "feature_store", "class_names"}


def _backbone_pipeline(backbone: str, per_backbone: Pipeline) -> Pipeline:
    choose = update_wrapper(partial(backbone_for, backbone), backbone_for)
    template = Pipeline(
        [
            node(choose, ["params:backbone", "params:sweep"], "backbone", name="backbone"),
            per_backbone,
            node(
                images_per_second,
                [
                    "backbone",
                    "image_index",
                    "raw_images",
                    "params:ingestion",
                    "params:features",
                    "params:sweep",
                ],
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
    parameters = {name for name in template.inputs() if name.startswith("params:")}
    shared = _SHARED_INPUTS & template.inputs()
    return Pipeline(template, namespace=sweep_namespace(backbone), inputs=shared, parameters=parameters)


def create_pipeline(
    backbones: list[str] | tuple[str, ...] = (), per_backbone: Pipeline | None = None
) -> Pipeline:
    """``per_backbone`` reads the backbone's parameters from the dataset ``backbone`` and must
    produce ``train/validation/test_features``, ``feature_metrics`` and ``head_*``."""
    if not backbones or per_backbone is None:
        return Pipeline([])
    namespaced = sum((_backbone_pipeline(name, per_backbone) for name in backbones), Pipeline([]))
    with warnings.catch_warnings():
        # The summary reads each namespace's output by its namespaced (dotted) name on purpose.
        warnings.filterwarnings("ignore", message=".*dataset names contain '.'")
        summary = node(
            summarise,
            [f"{sweep_namespace(name)}.sweep_run" for name in backbones],
            ["sweep_summary", "sweep_chart"],
            name="sweep.summarise",
        )
    return Pipeline([namespaced, summary], tags="sweep")
