"""Ingestion: turn a raw photo folder into a validated, split image index."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from image_classifier.config import SplitParams
from image_classifier.datasets import ImageFolder
from image_classifier.images import decode_rgb

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
INDEX_COLUMNS = ["path", "label", "split", "sha256", "width", "height"]


class IngestionError(ValueError):
    """The raw folder cannot be turned into a training set."""


@dataclass(frozen=True)
class _Inspected:
    path: str
    label: str
    split: str | None
    sha256: str
    width: int = 0
    height: int = 0
    reason: str | None = None


def _layout(files: tuple[str, ...], root: str) -> bool:
    """True when files sit in ``<split>/<class>/<file>``, False for ``<class>/<file>``."""
    depths = Counter(len(PurePosixPath(f).parts) for f in files)
    if not files:
        raise IngestionError(f"{root}: no files found; expected <class>/<file> or <split>/<class>/<file>")
    if set(depths) == {2}:
        return False
    if set(depths) == {3}:
        unknown = sorted({PurePosixPath(f).parts[0] for f in files} - set(_SPLIT_ALIASES))
        if unknown:
            raise IngestionError(
                f"{root}: split folders {unknown} are not recognised; use train, validation (or val), test"
            )
        return True
    raise IngestionError(
        f"{root}: mixed layouts (files at depths {sorted(depths)}); use either <class>/<file> "
        "for everything or <split>/<class>/<file> for everything"
    )


def _inspect(raw: ImageFolder, relative: str, has_splits: bool) -> _Inspected:
    parts = PurePosixPath(relative).parts
    split = _SPLIT_ALIASES[parts[0]] if has_splits else None
    label = parts[-2]
    data = raw.read_bytes(relative)
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return _Inspected(relative, label, split, sha, reason="empty file")
    try:
        image = decode_rgb(data)
    except Exception as error:  # PIL raises many types for bad files; each becomes a reason
        return _Inspected(relative, label, split, sha, reason=f"not a readable image: {error}")
    return _Inspected(relative, label, split, sha, width=image.shape[1], height=image.shape[0])


def _hash_split(sha256: str, seed: int, split: SplitParams) -> str:
    """Assign a split from the content hash alone: stable under reordering and new files."""
    draw = int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:12], 16) / 16**12
    if draw < split.test:
        return "test"
    if draw < split.test + split.validation:
        return "validation"
    return "train"


def index_images(
    raw: ImageFolder, split: dict[str, Any], seed: int, workers: int = 4
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Validate every raw file and build the image index and the ingestion report."""
    split_params = SplitParams(**split)
    has_splits = _layout(raw.files, str(raw.root))
    with ThreadPoolExecutor(workers) as pool:
        inspected = list(
            tqdm(
                pool.map(lambda f: _inspect(raw, f, has_splits), raw.files),
                total=len(raw.files),
                desc="ingestion",
                unit="img",
            )
        )
    rejected = [{"path": i.path, "reason": i.reason} for i in inspected if i.reason]
    good = [i for i in inspected if not i.reason]

    accepted: list[_Inspected] = []
    by_hash: dict[str, list[_Inspected]] = {}
    for item in good:
        by_hash.setdefault(item.sha256, []).append(item)
    split_rank = {"test": 0, "validation": 1, "train": 2, None: 3}
    for copies in by_hash.values():
        labels = sorted({c.label for c in copies})
        if len(labels) > 1:
            rejected += [
                {"path": c.path, "reason": f"label conflict: same image filed under {labels}"} for c in copies
            ]
            continue
        # One copy survives; keeping the most held-out one means a duplicate can never leak
        # a test image into training.
        keep = min(copies, key=lambda c: (split_rank[c.split], c.path))
        accepted.append(keep)
        rejected += [{"path": c.path, "reason": f"duplicate of {keep.path}"} for c in copies if c is not keep]

    rows = [
        {
            "path": item.path,
            "label": item.label,
            "split": item.split or _hash_split(item.sha256, seed, split_params),
            "sha256": item.sha256,
            "width": item.width,
            "height": item.height,
        }
        for item in accepted
    ]
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values("path", ignore_index=True)
    _check_usable(index, str(raw.root))
    report = _report(index, sorted(rejected, key=lambda r: r["path"]))
    logger.info(
        "Ingestion: %d accepted, %d rejected; %s",
        len(index),
        len(rejected),
        ", ".join(f"{s}={n}" for s, n in report["counts_per_split"].items()),
    )
    return index, report


def _check_usable(index: pd.DataFrame, root: str) -> None:
    labels = sorted(index["label"].unique())
    if len(labels) < 2:
        raise IngestionError(f"{root}: found {len(labels)} class(es) {labels}; a classifier needs at least 2")
    for split_name in ("train", "validation", "test"):
        present = set(index.loc[index["split"] == split_name, "label"])
        missing = sorted(set(labels) - present)
        if missing:
            raise IngestionError(
                f"{root}: split {split_name!r} has no images of {missing}; add images to those "
                "classes or change split.validation / split.test"
            )


def _report(index: pd.DataFrame, rejected: list[dict[str, str]]) -> dict[str, Any]:
    per_class = index.groupby(["label", "split"]).size().unstack(fill_value=0)
    train_counts = index.loc[index["split"] == "train", "label"].value_counts()
    return {
        "accepted": len(index),
        "rejected": len(rejected),
        "counts_per_split": {s: int((index["split"] == s).sum()) for s in SPLITS},
        "counts_per_class": {
            label: {s: int(per_class.loc[label].get(s, 0)) for s in SPLITS} for label in per_class.index
        },
        "imbalance_ratio": float(train_counts.max() / train_counts.min()) if len(train_counts) else 0.0,
        "rejected_files": rejected,
    }


def class_names(index: pd.DataFrame) -> list[str]:
    """Sorted class labels: the order of the model's outputs."""
    return sorted(index["label"].unique().tolist())


def ingestion_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        "ingestion.accepted": {"value": float(report["accepted"]), "step": 0},
        "ingestion.rejected": {"value": float(report["rejected"]), "step": 0},
    }
