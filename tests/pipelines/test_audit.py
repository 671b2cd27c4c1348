"""The data audit: planted problems found with the right kind, and left out of training on request."""

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from conftest import latest_run, run_session, scratch_project, tracked
from image_classifier.config import ParameterError, validate_parameters
from image_classifier.datasets import index_digest
from image_classifier.pipelines.audit.nodes import (
    REPORT_COLUMNS,
    AuditError,
    compute_centre_features,
    exclude_flagged,
    find_issues,
)

FAST = {"backbone.input_size": 96, "augmentation.views": 2, "training.epochs": 5}
EVERYTHING = "[label_issues,cross_split_duplicates,outliers]"


def _tree_digest(folder):
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_demo):
    """The tiny demo set with a hat photo filed under pants, a mirrored copy of a test dress and
    the middle 90% of a test pair of pants in train, and a blank frame among the training hats."""
    raw = tmp_path_factory.mktemp("planted") / "images"
    shutil.copytree(tiny_demo, raw)
    hat = sorted((raw / "train" / "hat").iterdir())[0]
    flipped = f"train/pants/{hat.name}"
    hat.rename(raw / flipped)
    original = sorted((raw / "test" / "dress").iterdir())[0]
    with Image.open(original) as photo:
        ImageOps.mirror(photo.convert("RGB")).save(raw / "train" / "dress" / "mirrored.jpg", quality=92)
    Image.new("RGB", (200, 160), (128, 128, 128)).save(raw / "train" / "hat" / "blank.png")
    cropped = sorted((raw / "test" / "pants").iterdir())[0]
    with Image.open(cropped) as photo:
        width, height = photo.size
        box = (width // 20, height // 20, width - width // 20, height - height // 20)
        photo.convert("RGB").crop(box).save(raw / "train" / "pants" / "cropped.jpg", quality=92)
    return raw, {
        "flipped": flipped,
        "copy": "train/dress/mirrored.jpg",
        "original": f"test/dress/{original.name}",
        "blank": "train/hat/blank.png",
        "crop": "train/pants/cropped.jpg",
        "cropped": f"test/pants/{cropped.name}",
    }


@pytest.mark.slow
def test_the_audit_flags_each_planted_problem_and_excluding_them_leaves_the_raw_folder_alone(
    tmp_path, planted
):
    raw, files = planted
    project = scratch_project(tmp_path / "project", raw)
    before = _tree_digest(project / "data" / "01_raw" / "images")
    with tracked(project) as client:
        run_session(project, ["ingestion", "augmentation", "features", "audit"], **FAST)
        report = pd.read_csv(project / "data" / "08_reporting" / "audit.csv")
        assert list(report.columns) == REPORT_COLUMNS
        flags = {(row.path, row.issue): row for row in report.itertuples()}

        label = flags[(files["flipped"], "label_issue")]
        assert (label.split, label.given_label, label.suggested_label) == ("train", "pants", "hat")
        copy = flags[(files["copy"], "cross_split_duplicate")]
        assert (copy.partner, copy.partner_split) == (files["original"], "test")
        assert (files["original"], "cross_split_duplicate") in flags
        crop = flags[(files["crop"], "cross_split_duplicate")]
        assert (crop.partner, crop.partner_split) == (files["cropped"], "test")
        assert (files["blank"], "outlier") in flags

        run = latest_run(client)
        assert run.data.metrics["audit.label_issues"] >= 1
        assert run.data.metrics["audit.cross_split_duplicates"] >= 2
        assert run.data.metrics["audit.outliers"] >= 1
        assert run.data.metrics["audit.near_duplicates"] >= 2
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {
            "audit.csv",
            "audit_label_issues.png",
            "audit_cross_split_duplicates.png",
            "audit_outliers.png",
            "audit_excluded.csv",
        } <= artifacts
        index = pd.read_csv(project / "data" / "02_intermediate" / "image_index.csv")
        # Nothing excluded by default: training reads the whole index.
        assert run.data.tags["dataset_digest"] == index_digest(index)

        run_session(project, ["audit", "training"], **FAST, **{"audit.exclude": EVERYTHING})
        trained_on = pd.read_csv(project / "data" / "05_model_input" / "training_index.csv")
        left_out = {files["flipped"], files["copy"], files["crop"], files["blank"]}
        assert left_out.isdisjoint(trained_on["path"])
        assert files["original"] in set(trained_on["path"])  # the test side of the pair stays
        assert set(index["path"]) - set(trained_on["path"]) <= set(
            report.loc[report["split"] == "train", "path"]
        )
        excluded = pd.read_csv(project / "data" / "08_reporting" / "audit_excluded.csv")
        reasons = dict(zip(excluded["path"], excluded["reason"], strict=True))
        assert "label_issues" in reasons[files["flipped"]]
        assert reasons[files["copy"]] == "cross_split_duplicates" and reasons[files["blank"]] == "outliers"
        run = latest_run(client)
        assert run.data.tags["dataset_digest"] == index_digest(trained_on) != index_digest(index)
        # The run's description counts the images trained on.
        trained = int((trained_on["split"] == "train").sum())
        assert trained < int((index["split"] == "train").sum())
        assert f"train {trained}" in run.data.tags["mlflow.note.content"]
        assert "audit_excluded.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert _tree_digest(project / "data" / "01_raw" / "images") == before


def _report(rows):
    return pd.DataFrame([dict.fromkeys(REPORT_COLUMNS) | row for row in rows], columns=REPORT_COLUMNS)


def test_exclusion_drops_only_training_images_of_the_chosen_kinds():
    index = pd.DataFrame(
        {
            "path": ["train/a/1.jpg", "train/a/2.jpg", "train/b/3.jpg", "validation/a/4.jpg", "test/b/5.jpg"],
            "label": ["a", "a", "b", "a", "b"],
            "split": ["train", "train", "train", "validation", "test"],
            "sha256": list("12345"),
        }
    )
    report = _report(
        [
            {"path": "train/a/1.jpg", "split": "train", "issue": "label_issue"},
            {"path": "validation/a/4.jpg", "split": "validation", "issue": "label_issue"},
            {
                "path": "train/b/3.jpg",
                "split": "train",
                "issue": "cross_split_duplicate",
                "partner": "test/b/5.jpg",
            },
            {
                "path": "test/b/5.jpg",
                "split": "test",
                "issue": "cross_split_duplicate",
                "partner": "train/b/3.jpg",
            },
            {"path": "train/a/2.jpg", "split": "train", "issue": "near_duplicate"},
        ]
    )
    kept, excluded = exclude_flagged(index, report, {"exclude": ["label_issues", "cross_split_duplicates"]})
    assert list(kept["path"]) == ["train/a/2.jpg", "validation/a/4.jpg", "test/b/5.jpg"]
    assert dict(zip(excluded["path"], excluded["reason"], strict=True)) == {
        "train/a/1.jpg": "label_issues",
        "train/b/3.jpg": "cross_split_duplicates",
    }
    kept, excluded = exclude_flagged(index, report, {"exclude": []})
    assert kept.equals(index) and excluded.empty and list(excluded.columns) == ["path", "reason"]


def test_an_unknown_exclusion_kind_is_refused_by_name():
    with pytest.raises(ParameterError, match=r"audit\.exclude\.0"):
        validate_parameters({"audit": {"exclude": ["near_duplicates"]}})


def _features(rng, split, labels, centres):
    vectors = centres[labels] + rng.normal(scale=0.5, size=(len(labels), centres.shape[1]))
    paths = [f"{split}/{'abc'[label]}/{i}.png" for i, label in enumerate(labels)]
    return {
        "features": vectors.astype(np.float32),
        "labels": labels,
        "paths": paths,
        "views": np.zeros(len(labels), int),
    }


_NO_CENTRES = {"paths": [], "features": np.zeros((0, 0), np.float32)}


def _three_splits(seed):
    """Features of 3 well-separated classes: 30 train, 8 validation and 8 test images each split."""
    rng = np.random.default_rng(seed)
    class_means = np.abs(rng.normal(size=(3, 24))) * 4
    sets = [
        _features(rng, split, np.repeat(np.arange(3), n), class_means)
        for split, n in (("train", 30), ("validation", 8), ("test", 8))
    ]
    return rng, sets


def test_the_same_features_and_seed_give_the_same_report():
    _, sets = _three_splits(0)
    sets[0]["labels"][0] = 1  # a flipped label
    sets[0]["features"][-1] = sets[2]["features"][0] + 1e-4  # a test photo copied into train
    reports = [find_issues(*sets, _NO_CENTRES, ["a", "b", "c"], {}, seed=7) for _ in range(2)]
    pd.testing.assert_frame_equal(reports[0][0], reports[1][0])
    assert reports[0][1] == reports[1][1]
    flags = set(zip(reports[0][0]["path"], reports[0][0]["issue"], strict=True))
    assert ("train/a/0.png", "label_issue") in flags
    assert ("train/c/89.png", "cross_split_duplicate") in flags and (
        "test/a/0.png",
        "cross_split_duplicate",
    ) in flags


def test_a_copy_of_a_photos_centre_is_found_through_the_centre_embeddings():
    rng, sets = _three_splits(1)
    paths = [path for data in sets for path in data["paths"]]
    # Each photo's centre looks like the photo, but for the copy: it is the test photo's centre
    # blown up, so its whole is like the test photo's centre and unlike the test photo's whole.
    centre_vectors = np.concatenate([data["features"] for data in sets]) + 0.05
    original, copy = sets[2]["features"][0], rng.normal(size=24).astype(np.float32) * 4
    sets[0]["features"][-1] = copy
    centre_vectors[paths.index("test/a/0.png")] = copy
    centre_vectors[paths.index("train/c/89.png")] = original
    with_centres = {"paths": paths, "features": centre_vectors}

    def crossing(centre_features):
        report, _ = find_issues(*sets, centre_features, ["a", "b", "c"], {}, seed=7)
        return set(report.loc[report["issue"] == "cross_split_duplicate", "path"])

    assert "train/c/89.png" not in crossing(_NO_CENTRES)
    assert {"train/c/89.png", "test/a/0.png"} <= crossing(with_centres)
    partial = {"paths": paths[1:], "features": centre_vectors[1:]}
    with pytest.raises(AuditError, match=f"no centre embedding for 1 images .first: {paths[0]}"):
        crossing(partial)


def test_centres_of_images_missing_from_the_index_are_refused_by_name():
    rng = np.random.default_rng(2)
    sets = [_features(rng, split, np.arange(3), np.ones((3, 4))) for split in ("train", "validation", "test")]
    paths = [path for data in sets for path in data["paths"]]
    index = pd.DataFrame({"path": paths[:-1], "sha256": [f"{i:064x}" for i in range(len(paths) - 1)]})
    with pytest.raises(
        AuditError, match=f"1 images of the features are not in the image index .first: {paths[-1]}"
    ):
        compute_centre_features(*sets, index, None, {}, None, {}, {}, {}, 1)
