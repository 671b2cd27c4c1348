"""Augmentation: the plan of deterministic views whose features the head trains on."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from image_classifier.augment import build_compose
from image_classifier.config import AugmentationParams

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
