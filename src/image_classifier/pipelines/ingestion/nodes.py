"""Ingestion: turn a raw photo folder into a validated, split image index and a report.

Every file ends up either in the index (decodable, upright RGB) or in the report with a reason;
nothing is silently dropped and nothing in the raw folder is written.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from image_classifier.config import IngestionParams, SplitParams
from image_classifier.datasets import ImageFolder, index_digest
from image_classifier.errors import ProjectError
from image_classifier.images import UnusableImage, name_problem, printable, upright_size
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}
# The most held-out split first: a duplicate is kept there, so a test image never trains.
_HELD_OUT_ORDER = {"test": 0, "validation": 1, "train": 2}
INDEX_COLUMNS = ["path", "label", "split", "sha256", "width", "height"]


class IngestionError(ProjectError):
    """The raw folder cannot be turned into a training set."""


@dataclass(frozen=True)
class _Inspected:
    path: str
    label: str
    split: str | None
    sha256: str = ""
    width: int = 0
    height: int = 0
    reason: str | None = None


def _layout(files: tuple[str, ...], root: str) -> tuple[bool, list[_Inspected]]:
    """Whether files sit in ``<split>/<class>/<file>``; plus files that fit neither layout."""
    if not files:
        raise IngestionError(
            f"{root}: no image files found. Put photos in {root}/<class>/<file> "
            f"(or {root}/<split>/<class>/<file>), or pass --params raw_images_dir=<folder>"
        )
    stray, placed = [], []
    for relative in files:
        depth = len(PurePosixPath(relative).parts)
        if depth == 1:
            stray.append(_Inspected(relative, "", None, reason="stray file: not inside a class folder"))
        elif depth > 3:
            stray.append(
                _Inspected(relative, "", None, reason="stray file: nested deeper than <split>/<class>")
            )
        else:
            placed.append(relative)
    depths = Counter(len(PurePosixPath(f).parts) for f in placed)
    if not placed:
        raise IngestionError(f"{root}: no files inside class folders; expected <class>/<file>")
    if set(depths) == {2, 3}:
        examples = [next(f for f in placed if len(PurePosixPath(f).parts) == d) for d in (2, 3)]
        raise IngestionError(
            f"{root}: mixed layouts: {depths[2]} files sit in <class>/<file> (e.g. {examples[0]}) and "
            f"{depths[3]} in <split>/<class>/<file> (e.g. {examples[1]}). Use one layout for everything"
        )
    has_splits = 3 in depths
    if has_splits:
        unknown = sorted({PurePosixPath(f).parts[0] for f in placed} - set(_SPLIT_ALIASES))
        if unknown:
            raise IngestionError(
                f"{root}: split folders {unknown} are not recognised; name them train, validation "
                "(or val) and test, or use <class>/<file> and let split.validation / split.test decide"
            )
    return has_splits, stray


def _inspect(raw: ImageFolder, relative: str, has_splits: bool, limits: IngestionParams) -> _Inspected:
    parts = PurePosixPath(relative).parts
    item = _Inspected(relative, parts[-2], _SPLIT_ALIASES[parts[0]] if has_splits else None)
    if problem := name_problem(relative):
        return replace(item, path=printable(relative), label=printable(item.label), reason=problem)
    try:
        data = raw.read_bytes(relative, limits.max_file_bytes)
        item = replace(item, sha256=hashlib.sha256(data).hexdigest())
        width, height = upright_size(data, limits.max_pixels, limits.min_side)
    except UnusableImage as error:
        return replace(item, reason=str(error))
    return replace(item, width=width, height=height)


def _hash_draw(sha256: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:13], 16) / 16**13


def _hash_split(sha256: str, seed: int, held_out: dict[str, float]) -> str:
    """A split from the content hash alone: independent of listing order, machine and other files.

    Each image's draw is uniform and independent of its class, so every class is split in the
    same proportions (stratified in expectation) and adding images never moves an existing one.
    """
    draw, edge = _hash_draw(sha256, seed), 0.0
    for split_name, fraction in held_out.items():
        edge += fraction
        if draw < edge:
            return split_name
    return "train"


def _deduplicate(good: list[_Inspected]) -> tuple[list[_Inspected], list[_Inspected]]:
    """Keep one copy of each content hash; copies under different labels are all rejected."""
    by_hash: dict[str, list[_Inspected]] = {}
    for item in good:
        by_hash.setdefault(item.sha256, []).append(item)
    kept, dropped = [], []
    for copies in by_hash.values():
        labels = sorted({c.label for c in copies})
        if len(labels) > 1:
            where = ", ".join(sorted(c.path for c in copies))
            reason = f"label conflict: the same image is filed under {labels} ({where})"
            dropped += [replace(c, reason=reason) for c in copies]
            continue
        keep = min(copies, key=lambda c: (_HELD_OUT_ORDER.get(c.split or "train"), c.path))
        kept.append(keep)
        for copy in copies:
            if copy is not keep:
                where = "across splits" if copy.split != keep.split else "within class"
                dropped.append(replace(copy, reason=f"duplicate {where}: same content as {keep.path}"))
    return kept, dropped


def _assign_splits(items: list[_Inspected], seed: int, split: SplitParams) -> list[_Inspected]:
    if all(i.split is None for i in items):
        validation = split.carved_validation(len(items))
        _log_raised(split, validation, len(items), "the photos")
        return [
            replace(i, split=_hash_split(i.sha256, seed, {"test": split.test, "validation": validation}))
            for i in items
        ]
    # Split folders are respected; a held-out split the user did not provide is carved out of
    # train by the same content hash, so it too stays put when images are added.
    missing = {s: getattr(split, s) for s in ("test", "validation") if not any(i.split == s for i in items)}
    if "validation" in missing:
        train = sum(i.split == "train" for i in items)
        missing["validation"] = split.carved_validation(train)
        _log_raised(split, missing["validation"], train, "train")
    if missing:
        logger.info("No %s folder: holding out %s of train by content hash", sorted(missing), missing)
    return [
        replace(i, split=_hash_split(i.sha256, seed, missing)) if i.split == "train" and missing else i
        for i in items
    ]


def _log_raised(split: SplitParams, validation: float, pool: int, what: str) -> None:
    if validation > split.validation:
        logger.info(
            "Validation: %.3g of %s (%d photos) instead of split.validation %g, to reach "
            "split.min_validation %d photos: fewer leave a choice between two models to noise",
            validation,
            what,
            pool,
            split.validation,
            split.min_validation,
        )


def index_images(
    raw: ImageFolder, split: dict[str, Any], ingestion: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Validate every raw file and build the image index and the ingestion report."""
    split_params, limits = SplitParams(**split), IngestionParams(**ingestion)
    root = str(raw.root)
    has_splits, stray = _layout(raw.files, root)
    stray_paths = {s.path for s in stray}
    placed = [f for f in raw.files if f not in stray_paths]
    with ThreadPoolExecutor(limits.workers) as pool:
        inspected = list(
            tqdm(
                pool.map(lambda f: _inspect(raw, f, has_splits, limits), placed),
                total=len(placed),
                desc="ingestion",
                unit="file",
            )
        )
    good = [i for i in inspected if not i.reason]
    kept, duplicates = _deduplicate(good)
    rejected = [
        *({"path": printable(i.path), "reason": i.reason} for i in stray),
        *({"path": i.path, "reason": i.reason} for i in inspected if i.reason),
        *({"path": i.path, "reason": i.reason} for i in duplicates),
    ]
    rows = [
        {
            "path": i.path,
            "label": i.label,
            "split": i.split,
            "sha256": i.sha256,
            "width": i.width,
            "height": i.height,
        }
        for i in _assign_splits(kept, seed, split_params)
    ]
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS).sort_values("path", ignore_index=True)
    _check_usable(index, root, has_splits, split_params)
    report = _report(index, sorted(rejected, key=lambda r: r["path"]), root, has_splits)
    logger.info(_summary(report))
    return index, report


def _check_usable(index: pd.DataFrame, root: str, has_splits: bool, split: SplitParams) -> None:
    if index.empty:
        raise IngestionError(
            f"{root}: none of the files is a usable image; see the rejected files in the log"
        )
    labels = sorted(index["label"].unique())
    if len(labels) < 2:
        raise IngestionError(
            f"{root}: only one class ({labels[0]!r}) has usable images; a classifier needs at least "
            "two class folders"
        )
    counts = (
        index.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=SPLITS, fill_value=0)
    )
    short = {label: row for label, row in counts.iterrows() if (row == 0).any()}
    if not short:
        return
    problems = []
    for label, row in short.items():
        empty = [s for s in SPLITS if row[s] == 0]
        if has_splits:
            problems.append(f"class {label!r} has no images in {empty}")
        else:
            smallest = min(split.validation, split.test) or 1.0
            problems.append(
                f"class {label!r} has {int(row.sum())} usable images and none landed in {empty}; "
                f"a split of {split.validation} / {split.test} needs about {int(3 / smallest)} per class"
            )
    raise IngestionError(
        f"{root}: every class needs images in train, validation and test:\n  - "
        + "\n  - ".join(problems)
        + "\nAdd images to those classes, change split.validation / split.test, or provide split folders."
    )


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def _report(
    index: pd.DataFrame, rejected: list[dict[str, str]], root: str, has_splits: bool
) -> dict[str, Any]:
    counts = (
        index.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=SPLITS, fill_value=0)
    )
    train = counts["train"]
    return {
        "raw_images_dir": root,
        "layout": "<split>/<class>/<file>" if has_splits else "<class>/<file>",
        "dataset_digest": index_digest(index),
        "accepted": len(index),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(Counter(_reason_kind(r["reason"]) for r in rejected).items())),
        "counts_per_split": {s: int(counts[s].sum()) for s in SPLITS},
        "counts_per_class": {label: {s: int(row[s]) for s in SPLITS} for label, row in counts.iterrows()},
        "imbalance": {
            # Largest over smallest training class: 1 is balanced; above ~3 consider class weights.
            "ratio": round(float(train.max() / max(train.min(), 1)), 3),
            "largest_class": str(train.idxmax()),
            "smallest_class": str(train.idxmin()),
            "train_share": {label: round(float(n / train.sum()), 4) for label, n in train.items()},
        },
        "rejected_files": rejected,
    }


def _summary(report: dict[str, Any]) -> str:
    lines = [
        f"Ingestion of {report['raw_images_dir']} ({report['layout']}): "
        f"{report['accepted']} accepted, {report['rejected']} rejected",
        "  per split: " + ", ".join(f"{s} {n}" for s, n in report["counts_per_split"].items()),
        f"  classes: {len(report['counts_per_class'])}; imbalance {report['imbalance']['ratio']} "
        f"({report['imbalance']['largest_class']} / {report['imbalance']['smallest_class']})",
    ]
    if report["rejected_by_reason"]:
        lines.append("  rejected: " + ", ".join(f"{k} {n}" for k, n in report["rejected_by_reason"].items()))
        lines += [f"    {r['path']}: {r['reason']}" for r in report["rejected_files"][:10]]
        if report["rejected"] > 10:
            lines.append(f"    … {report['rejected'] - 10} more in data/08_reporting/ingestion_report.json")
    lines.append(f"  dataset digest: {report['dataset_digest']}")
    return "\n".join(lines)


def class_names(index: pd.DataFrame) -> list[str]:
    """Sorted class labels: the order of the model's outputs."""
    return sorted(index["label"].unique().tolist())


def ingestion_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return scalar_metrics(
        {
            "diagnostics/ingestion.accepted": report["accepted"],
            "diagnostics/ingestion.rejected": report["rejected"],
        }
    )
