"""Features: backbone features of every planned view and every val/test image, cached by content."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from image_classifier.augment import config_hash
from image_classifier.config import AugmentationParams, BackboneParams, FeaturesParams, IngestionParams
from image_classifier.datasets import FeatureStore, ImageFolder
from image_classifier.feature_cache import ShardWork, backbone_context, cache_key, compute_missing
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)


def _items(view_plan: pd.DataFrame, image_index: pd.DataFrame) -> dict[str, pd.DataFrame]:
    held_out = image_index.loc[image_index["split"] != "train", ["path", "label", "sha256", "split"]]
    items = {"train": view_plan.assign(split="train")}
    for split in ("validation", "test"):
        items[split] = held_out.loc[held_out["split"] == split].assign(view=0)
    return items


def compute_features(
    view_plan: pd.DataFrame,
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    feature_store: FeatureStore,
    class_names: list[str],
    backbone: dict[str, Any],
    features: dict[str, Any],
    augmentation: dict[str, Any],
    workers: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Serve each needed vector from the store, computing (and storing) only the missing ones.

    Returns the train/validation/test feature sets and the ``features.*`` metrics.
    """
    backbone_params, features_params = BackboneParams(**backbone), FeaturesParams(**features)
    augmentation_params = AugmentationParams(**augmentation)
    context = backbone_context(backbone_params, features_params)
    augmentation_hash = config_hash([t.model_dump() for t in augmentation_params.transforms])
    items = _items(view_plan, image_index)
    for frame in items.values():
        frame["key"] = [
            cache_key(sha, int(view), context, augmentation_hash, seed)
            for sha, view in zip(frame["sha256"], frame["view"], strict=True)
        ]
    work = ShardWork.of(
        raw_images,
        feature_store,
        IngestionParams(**ingestion),
        backbone_params,
        features_params,
        tuple(t.model_dump() for t in augmentation_params.transforms),
        seed,
        workers,
    )
    reused, computed, workers_used = compute_missing(
        pd.concat(items.values(), ignore_index=True), feature_store, work, "Features"
    )

    label_ids = {label: i for i, label in enumerate(class_names)}
    sets = {
        split: {
            # fp16 saves disk; the head trains in fp32 either way.
            "features": feature_store.get_many(frame["key"].tolist()).astype(np.float32, copy=False),
            "labels": frame["label"].map(label_ids).to_numpy(dtype=np.int64),
            "paths": frame["path"].tolist(),
            # Which view each vector is of (0: the plain image): the audit reads the plain ones.
            "views": frame["view"].to_numpy(dtype=np.int64),
        }
        for split, frame in items.items()
    }
    metrics = scalar_metrics(
        {
            "features.computed": computed,
            "features.reused": reused,
            "diagnostics/features.cache_bytes": feature_store.size_bytes(),
            **({"diagnostics/features.dask_workers": workers_used} if workers_used else {}),
        }
    )
    return sets["train"], sets["validation"], sets["test"], metrics
