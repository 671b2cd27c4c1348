"""Augmentation: the plan of deterministic views whose features the head trains on."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from image_classifier.augment import build_compose
from image_classifier.config import AugmentationParams, BackboneParams, IngestionParams
from image_classifier.datasets import ImageFolder
from image_classifier.hints import Figure

logger = logging.getLogger(__name__)

PLAN_COLUMNS = ["path", "label", "sha256", "view"]


def plan_views(image_index: pd.DataFrame, augmentation: dict[str, Any]) -> pd.DataFrame:
    """K rows per training image, view 0 (the plain image) to K-1.

    The transforms are built here, so that a bad config fails before any backbone work.
    """
    params = AugmentationParams(**augmentation)
    build_compose([t.model_dump() for t in params.transforms])
    train = image_index.loc[image_index["split"] == "train", ["path", "label", "sha256"]]
    plan = train.merge(pd.DataFrame({"view": range(params.views)}), how="cross")
    plan = plan.sort_values(["path", "view"], ignore_index=True)[PLAN_COLUMNS]
    logger.info("Augmentation: %d training images × %d views = %d views", len(train), params.views, len(plan))
    return plan


def preview_views(
    view_plan: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    backbone: dict[str, Any],
    augmentation: dict[str, Any],
    seed: int,
    max_images: int = 6,
    max_views: int = 6,
) -> Figure:
    """A grid of one training image per class (rows) × its first views (columns), exactly as the
    backbone receives them: the quickest check that the transforms do what was meant."""
    # matplotlib and the loader (Keras) here: Kedro imports every node module at start-up.
    import matplotlib.pyplot as plt

    from image_classifier.loading import ViewLoader

    params = AugmentationParams(**augmentation)
    loader = ViewLoader(
        raw_images,
        IngestionParams(**ingestion),
        BackboneParams(**backbone).input_size,
        tuple(t.model_dump() for t in params.transforms),
        seed,
    )
    rows = view_plan.loc[view_plan["view"] == 0].drop_duplicates("label").head(max_images)
    views = min(params.views, max_views)
    figure, axes = plt.subplots(
        len(rows), views, figsize=(1.8 * views, 1.9 * len(rows)), squeeze=False, layout="constrained"
    )
    for r, (_, image) in enumerate(rows.iterrows()):
        for view in range(views):
            cell = axes[r][view]
            cell.imshow(loader(image["path"], image["sha256"], view))
            cell.set_xticks([])
            cell.set_yticks([])
            if r == 0:
                cell.set_title("plain (view 0)" if view == 0 else f"view {view}", fontsize="small")
            if view == 0:
                cell.set_ylabel(image["label"], fontsize="small")
    return figure
