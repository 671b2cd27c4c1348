"""Audit: suspected label errors, near duplicates (above all across splits) and outliers, from the
cached plain-view embeddings; flagged training images can be left out of training."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from image_classifier.config import AuditParams, BackboneParams, FeaturesParams, IngestionParams
from image_classifier.datasets import FeatureStore, ImageFolder
from image_classifier.errors import ProjectError
from image_classifier.feature_cache import ShardWork, backbone_context, cache_key, compute_missing
from image_classifier.hints import Figure
from image_classifier.tracking import scalar_metrics

logger = logging.getLogger(__name__)

REPORT_COLUMNS = [
    "path",
    "split",
    "given_label",
    "issue",
    "score",
    "suggested_label",
    "partner",
    "partner_split",
]
# The names of audit.exclude for the issue kinds of the report.
_EXCLUDABLE = {
    "label_issue": "label_issues",
    "cross_split_duplicate": "cross_split_duplicates",
    "outlier": "outliers",
}


class AuditError(ProjectError):
    """Raised when the audit's inputs cannot be audited."""


def _plain_images(
    train_features: dict[str, Any], validation_features: dict[str, Any], test_features: dict[str, Any]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every image once (its plain view), train then validation then test, with its embedding."""
    frames, vectors = [], []
    for split, data in (
        ("train", train_features),
        ("validation", validation_features),
        ("test", test_features),
    ):
        if "views" not in data:
            raise AuditError(
                f"the {split} features were written by an older version of the features stage, "
                "without their views; run it again: kedro run --pipelines features"
            )
        plain = np.flatnonzero(np.asarray(data["views"]) == 0)
        frames.append(
            pd.DataFrame(
                {"path": np.asarray(data["paths"])[plain], "split": split, "label": data["labels"][plain]}
            )
        )
        vectors.append(data["features"][plain])
    return pd.concat(frames, ignore_index=True), np.concatenate(vectors)


def compute_centre_features(
    train_features: dict[str, Any],
    validation_features: dict[str, Any],
    test_features: dict[str, Any],
    image_index: pd.DataFrame,
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    feature_store: FeatureStore,
    backbone: dict[str, Any],
    features: dict[str, Any],
    audit: dict[str, Any],
    workers: int,
) -> dict[str, Any]:
    """The embedding of the centre (``audit.centre_crop`` of each side) of every photo the features
    stage embedded, through the feature store: computed once, then served. Empty when
    ``audit.centre_crop`` is 1."""
    share = AuditParams(**audit).centre_crop
    if share == 1.0:
        return {"paths": [], "features": np.zeros((0, 0), np.float32)}
    backbone_params, features_params = BackboneParams(**backbone), FeaturesParams(**features)
    context = backbone_context(backbone_params, features_params, share)
    images, _ = _plain_images(train_features, validation_features, test_features)
    wanted = images[["path"]].merge(image_index[["path", "sha256"]], on="path", how="left").assign(view=0)
    unknown = wanted.loc[wanted["sha256"].isna(), "path"]
    if len(unknown):
        raise AuditError(
            f"{len(unknown)} images of the features are not in the image index (first: "
            f"{unknown.iat[0]}); run the features stage again: kedro run --pipelines features,audit"
        )
    wanted["key"] = [cache_key(sha, 0, context, "-", 0) for sha in wanted["sha256"]]
    work = ShardWork.of(
        raw_images,
        feature_store,
        IngestionParams(**ingestion),
        backbone_params,
        features_params,
        (),
        0,
        workers,
        centre_crop=share,
    )
    compute_missing(wanted, feature_store, work, "Audit, photo centres")
    vectors = feature_store.get_many(wanted["key"].tolist()).astype(np.float32, copy=False)
    return {"paths": wanted["path"].tolist(), "features": vectors}


def _with_centres(images: pd.DataFrame, embeddings: np.ndarray, centres: dict[str, Any]) -> np.ndarray:
    """Each plain embedding averaged with its photo's centre embedding; the plain embeddings
    themselves when no centres were computed (``audit.centre_crop`` 1)."""
    if not len(centres["paths"]):
        return embeddings
    row = {path: i for i, path in enumerate(centres["paths"])}
    missing = [path for path in images["path"] if path not in row]
    if missing:
        raise AuditError(
            f"no centre embedding for {len(missing)} images (first: {missing[0]}); the features and "
            "the audit read different image indexes: run both again: kedro run --pipelines features,audit"
        )
    return (embeddings + centres["features"][[row[path] for path in images["path"]]]) / 2


def find_issues(
    train_features: dict[str, Any],
    validation_features: dict[str, Any],
    test_features: dict[str, Any],
    centre_features: dict[str, Any],
    class_names: list[str],
    audit: dict[str, Any],
    seed: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The audit report, one row per (image, issue), and the ``audit.*`` counts.

    Label issues are looked for in the train and validation images only, with out-of-fold
    probabilities: the test labels are read once, by evaluation. Near duplicates and outliers
    need no labels and cover every split, so that a test photo copied into train is found; they
    compare each photo's plain embedding averaged with its centre's (``centre_features``).
    """
    from image_classifier.auditing import (
        cleaned_out_of_fold_probabilities,
        label_issues,
        neighbour_issues,
        usable_folds,
    )

    params = AuditParams(**audit)
    images, embeddings = _plain_images(train_features, validation_features, test_features)
    labelled = np.flatnonzero(images["split"] != "test")
    labels = images["label"].to_numpy()[labelled]
    rows: list[dict[str, Any]] = []

    folds = usable_folds(labels, params.folds)
    if folds:
        probabilities = cleaned_out_of_fold_probabilities(
            embeddings[labelled], labels, len(class_names), folds, seed, params.label_max_score
        )
        verdict = label_issues(labels, probabilities, params.label_max_score)
        for position in np.flatnonzero(verdict["is_issue"].to_numpy()):
            image = images.iloc[labelled[position]]
            rows.append(
                _row(image, class_names, "label_issue", verdict["score"].iat[position])
                | {"suggested_label": class_names[verdict["suggested"].iat[position]]}
            )
    else:
        logger.warning("Audit: some class has a single train/validation image; label issues not looked for")

    if len(images) > 2:
        found = neighbour_issues(
            _with_centres(images, embeddings, centre_features),
            params.neighbours,
            params.near_duplicate_threshold,
            params.outlier_threshold,
        )
        for i in np.flatnonzero(found.near_duplicate):
            image, partners = images.iloc[i], images.iloc[found.partners[i]]
            elsewhere = partners.loc[partners["split"] != image["split"]]
            kind = "cross_split_duplicate" if len(elsewhere) else "near_duplicate"
            row = _row(image, class_names, kind, found.near_duplicate_score[i])
            if len(partners):
                partner = (elsewhere if len(elsewhere) else partners).iloc[0]
                row |= {"partner": partner["path"], "partner_split": partner["split"]}
            rows.append(row)
        for i in np.flatnonzero(found.outlier):
            rows.append(_row(images.iloc[i], class_names, "outlier", found.outlier_score[i]))

    report = pd.DataFrame(rows, columns=REPORT_COLUMNS).sort_values(
        ["issue", "score", "path"], ignore_index=True
    )
    counts = report["issue"].value_counts()
    # Images in a near-duplicate group, whichever splits; each cross-split pair counted once.
    metrics = {
        "audit.label_issues": int(counts.get("label_issue", 0)),
        "audit.near_duplicates": int(
            counts.get("near_duplicate", 0) + counts.get("cross_split_duplicate", 0)
        ),
        "audit.cross_split_duplicates": _cross_split_pairs(report),
        "audit.outliers": int(counts.get("outlier", 0)),
    }
    logger.info(
        "Audit of %d images: %s", len(images), ", ".join(f"{k.split('.')[1]} {v}" for k, v in metrics.items())
    )
    return report, scalar_metrics(metrics)


def _row(image: pd.Series, class_names: list[str], issue: str, score: float) -> dict[str, Any]:
    return {
        "path": image["path"],
        "split": image["split"],
        # A test image's label is not shown to the audit; the report leaves it out too.
        "given_label": class_names[image["label"]] if image["split"] != "test" else None,
        "issue": issue,
        "score": float(score),
        "suggested_label": None,
        "partner": None,
        "partner_split": None,
    }


def _cross_split_pairs(report: pd.DataFrame) -> int:
    crossing = report.loc[report["issue"] == "cross_split_duplicate"]
    return len({frozenset(pair) for pair in zip(crossing["path"], crossing["partner"], strict=True)})


def exclude_flagged(
    image_index: pd.DataFrame, audit_report: pd.DataFrame, audit: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The index training and fine-tuning read (``image_index`` less the flagged training images of
    the kinds in ``audit.exclude``) and the list of what was left out. Validation and test images
    are never dropped: of a cross-split pair, the training side goes. Files are not touched."""
    params = AuditParams(**audit)
    flagged = audit_report.loc[
        (audit_report["split"] == "train") & audit_report["issue"].map(_EXCLUDABLE).isin(params.exclude)
    ]
    excluded = (
        flagged.assign(reason=flagged["issue"].map(_EXCLUDABLE))
        .groupby("path", sort=True)["reason"]
        .agg(lambda reasons: ",".join(sorted(set(reasons))))
        .reset_index()
    )
    keep = ~(image_index["path"].isin(excluded["path"]) & (image_index["split"] == "train"))
    if len(excluded):
        logger.info("Audit: %d training images left out (%s)", len(excluded), ", ".join(params.exclude))
    return image_index.loc[keep].reset_index(drop=True), excluded


def _gallery(
    cells: list[tuple[str, str]],
    raw_images: ImageFolder,
    ingestion: dict[str, Any],
    columns: int,
    title: str,
    empty: str,
) -> Figure:
    from image_classifier.gallery import thumbnail_grid
    from image_classifier.loading import ViewLoader

    loader = ViewLoader(raw_images, IngestionParams(**ingestion), 160)
    return thumbnail_grid(lambda path: loader(path, "", 0), cells, columns, title, empty)


def _of_kind(report: pd.DataFrame, issue: str, limit: int) -> pd.DataFrame:
    # Lowest score first: cleanlab's scores are qualities, low meaning most suspicious.
    return report.loc[report["issue"] == issue].sort_values(["score", "path"]).head(limit)


def plot_label_issues(
    audit_report: pd.DataFrame, raw_images: ImageFolder, ingestion: dict[str, Any], audit: dict[str, Any]
) -> Figure:
    """The most suspect labels: each photo with its given and suggested label."""
    found = _of_kind(audit_report, "label_issue", AuditParams(**audit).gallery_size)
    cells = [
        (row.path, f"{row.split}: {row.given_label} → {row.suggested_label}\nscore {row.score:.3f}")
        for row in found.itertuples()
    ]
    total = int((audit_report["issue"] == "label_issue").sum())
    return _gallery(
        cells,
        raw_images,
        ingestion,
        4,
        f"Suspected label errors ({len(found)} of {total})",
        "no label issues found",
    )


def _caption(split: str, path: str, width: int = 34) -> str:
    """``split`` over the path, its middle cut so that two fit side by side (the CSV has it whole)."""
    short = path if len(path) <= width else f"{path[: width // 2 - 1]}…{path[-(width // 2) :]}"
    return f"{split}\n{short}"


def plot_cross_split_duplicates(
    audit_report: pd.DataFrame, raw_images: ImageFolder, ingestion: dict[str, Any], audit: dict[str, Any]
) -> Figure:
    """Near-identical photos in two splits, side by side: each one inflates the held-out score."""
    crossing = audit_report.loc[audit_report["issue"] == "cross_split_duplicate"]
    # Each pair once, the training side (when there is one) on the left.
    order = {"train": 0, "validation": 1, "test": 2}
    left = [order[a] < order[b] for a, b in zip(crossing["split"], crossing["partner_split"], strict=True)]
    pairs = crossing.loc[np.asarray(left, dtype=bool)]
    pairs = pairs.sort_values(["score", "path"]).head(AuditParams(**audit).gallery_size)
    cells = []
    for row in pairs.itertuples():
        cells += [
            (row.path, _caption(row.split, row.path)),
            (row.partner, _caption(row.partner_split, row.partner)),
        ]
    return _gallery(
        cells,
        raw_images,
        ingestion,
        2,
        f"Near duplicates across splits ({len(pairs)} of {_cross_split_pairs(audit_report)} pairs)",
        "no near duplicates across splits",
    )


def plot_outliers(
    audit_report: pd.DataFrame, raw_images: ImageFolder, ingestion: dict[str, Any], audit: dict[str, Any]
) -> Figure:
    """Photos unlike any other: blank frames, screenshots, wrong subjects."""
    found = _of_kind(audit_report, "outlier", AuditParams(**audit).gallery_size)
    cells = [(row.path, f"{row.split}: score {row.score:.3f}") for row in found.itertuples()]
    total = int((audit_report["issue"] == "outlier").sum())
    return _gallery(
        cells, raw_images, ingestion, 4, f"Outliers ({len(found)} of {total})", "no outliers found"
    )
