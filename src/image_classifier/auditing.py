"""cleanlab glue for the data audit: out-of-fold probabilities from small heads on cached
embeddings, and cleanlab's Datalab over them (label issues, near duplicates, outliers)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# Datalab converts its data to a Hugging Face `datasets.Dataset`; nothing may reach the Hub.
for _name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")

# The heads' inverse regularisation is C = this / (images a head is fitted on): scikit-learn sums
# the loss over images, so this keeps the penalty's weight against the mean loss the same for any
# folder size. Strong: on the benchmark's corrupted demo (5% of labels flipped, 2,727 images a
# head) C = 0.005 was the most accurate out of fold of 1, 0.1, 0.03, 0.01, 0.005 and 0.002, and the
# least sure of itself where wrong: with cleanlab's verdict and audit.label_max_score 0.05, 0.68
# of its flags were flips, against 0.44 for C = 1 (benchmarks/README.md).
_HEAD_C_TIMES_IMAGES = 0.005 * 2727


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int,
    seed: int,
    fit_on: np.ndarray | None = None,
) -> np.ndarray:
    """Each image's class probabilities from a head that never saw it: ``folds`` standardised
    logistic regressions, each fitted on the other folds (stratified, shuffled by ``seed``), and
    only on their images where ``fit_on`` (a mask; all of them without it) is true."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probabilities = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (fit_rows, held_rows) in enumerate(splitter.split(features, labels), start=1):
        if fit_on is not None:
            trusted = fit_rows[fit_on[fit_rows]]
            # A head needs two classes; a fold whose trusted images have fewer is fitted on all.
            fit_rows = trusted if len(np.unique(labels[trusted])) > 1 else fit_rows
        strength = _HEAD_C_TIMES_IMAGES / len(fit_rows)
        head = make_pipeline(StandardScaler(), LogisticRegression(C=strength, max_iter=300))
        head.fit(features[fit_rows], labels[fit_rows])
        # A class missing from a fold's training rows gets no column: it keeps probability 0.
        probabilities[np.ix_(held_rows, head.classes_)] = head.predict_proba(features[held_rows])
        logger.info("Audit: head %d of %d fitted on %d images", fold, folds, len(fit_rows))
    return probabilities


def cleaned_out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int, max_score: float
) -> np.ndarray:
    """Out-of-fold probabilities from heads refitted without the images that a first round of
    heads doubts (given label's probability below ``max_score``); every image is still scored.

    Flipped labels in a head's training rows pull it towards the wrong class, and so hide the
    flips like them: on the benchmark's corrupted demo (5% of the training labels flipped, a
    corruption the cut-off was not chosen on), the flips found below 0.04 went from 0.752 to
    0.804 at precision 0.673 -> 0.687, for twice the heads' time (benchmarks/README.md)."""
    first = out_of_fold_probabilities(features, labels, num_classes, folds, seed)
    trusted = first[np.arange(len(labels)), labels] >= max_score
    return out_of_fold_probabilities(features, labels, num_classes, folds, seed, fit_on=trusted)


def usable_folds(labels: np.ndarray, folds: int) -> int:
    """The most folds (up to ``folds``) that leave every class in each fold's training rows;
    0 when some class has a single image, which no held-out head can then predict."""
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min()) if len(labels) else 0
    return min(folds, smallest) if smallest >= 2 else 0


def label_issues(labels: np.ndarray, probabilities: np.ndarray, max_score: float) -> pd.DataFrame:
    """Images whose cleanlab label quality score (the out-of-fold probability of the given label,
    low = the heads doubt it) is below ``max_score``: columns ``is_issue``, ``score``,
    ``suggested`` (cleanlab's predicted label).

    The score alone decides, not also cleanlab's own verdict (prune by noise rate): with both, the
    benchmark's flips were found at recall 0.81 and precision 0.68 (cut-off 0.05); the score alone
    reached 0.83 and 0.78 (0.03) or 0.89 and 0.66 (0.05)."""
    from cleanlab import Datalab

    lab = Datalab(pd.DataFrame({"label": labels}), label_name="label", verbosity=0)
    lab.find_issues(pred_probs=probabilities, issue_types={"label": {}})
    found = lab.get_issues("label")
    return pd.DataFrame(
        {
            "is_issue": found["label_score"].to_numpy() < max_score,
            "score": found["label_score"].to_numpy(),
            "suggested": found["predicted_label"].to_numpy(dtype=np.int64),
        }
    )


@dataclass(frozen=True)
class NeighbourIssues:
    """Per image: near-duplicate flag, score and partners (row numbers); outlier flag and score."""

    near_duplicate: np.ndarray
    near_duplicate_score: np.ndarray
    partners: list[list[int]]
    outlier: np.ndarray
    outlier_score: np.ndarray


def neighbour_issues(
    features: np.ndarray, neighbours: int, near_duplicate_threshold: float, outlier_threshold: float
) -> NeighbourIssues:
    """Near duplicates (an embedding closer to another than ``near_duplicate_threshold`` times
    the median distance to a nearest neighbour) and outliers (mean distance to the nearest
    ``neighbours`` beyond Q3 + (1/``outlier_threshold`` - 1) × IQR), from cleanlab's k-NN graph."""
    from cleanlab import Datalab

    k = min(neighbours, len(features) - 1)
    lab = Datalab(pd.DataFrame({"row": np.arange(len(features))}), verbosity=0)
    lab.find_issues(
        features=features,
        issue_types={
            "near_duplicate": {"threshold": near_duplicate_threshold, "k": k},
            "outlier": {"threshold": outlier_threshold, "k": k},
        },
    )
    duplicates, outliers = lab.get_issues("near_duplicate"), lab.get_issues("outlier")
    return NeighbourIssues(
        near_duplicate=duplicates["is_near_duplicate_issue"].to_numpy(),
        near_duplicate_score=duplicates["near_duplicate_score"].to_numpy(),
        partners=[list(map(int, members)) for members in duplicates["near_duplicate_sets"]],
        outlier=outliers["is_outlier_issue"].to_numpy(),
        outlier_score=outliers["outlier_score"].to_numpy(),
    )
