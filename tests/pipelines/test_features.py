import numpy as np
import pytest

from image_classifier.datasets import FeatureStoreDataset, ImageFolderDataset
from image_classifier.pipelines.augmentation.nodes import plan_views
from image_classifier.pipelines.features.nodes import compute_features
from image_classifier.pipelines.ingestion.nodes import class_names, index_images

AUGMENTATION = {"views": 2, "transforms": [{"name": "HorizontalFlip", "params": {"p": 1.0}}]}


@pytest.fixture(scope="module")
def inputs(tiny_demo):
    raw = ImageFolderDataset(str(tiny_demo)).load()
    index, _ = index_images(raw, {"validation": 0.1, "test": 0.1}, {}, seed=0)
    return raw, index, plan_views(index, AUGMENTATION), class_names(index)


def _run(inputs, store_dir, weights_dir, input_size=64, augmentation=AUGMENTATION):
    raw, index, plan, names = inputs
    return compute_features(
        plan,
        index,
        raw,
        FeatureStoreDataset(str(store_dir)).load(),
        names,
        {"name": "mobilenet_v2", "input_size": input_size, "cache_dir": str(weights_dir)},
        {"batch_size": 16, "workers": 2},
        augmentation,
        42,
    )


def test_second_run_computes_nothing_and_returns_the_same_features(inputs, tmp_path):
    train, validation, test, metrics = _run(inputs, tmp_path / "store", tmp_path / "weights")
    assert train["features"].shape == (48, 1280) and validation["features"].shape == (24, 1280)
    assert metrics["features.computed"]["value"] == 24 * 2 + 48  # 24 plain + 24 flipped + val/test
    assert metrics["features.reused"]["value"] == 0
    np.testing.assert_array_equal(train["labels"][:2], [0, 0])

    train2, _, test2, metrics2 = _run(inputs, tmp_path / "store", tmp_path / "weights")
    assert metrics2["features.computed"]["value"] == 0 and metrics2["features.reused"]["value"] == 96
    np.testing.assert_array_equal(train2["features"], train["features"])
    np.testing.assert_array_equal(test2["features"], test["features"])
    # The flipped view really differs from the plain one.
    assert not np.allclose(train["features"][0], train["features"][1])


def test_changed_augmentation_recomputes_only_augmented_views(inputs, tmp_path):
    _run(inputs, tmp_path / "store", tmp_path / "weights")
    rotated = {"views": 2, "transforms": [{"name": "Rotate", "params": {"limit": 30, "p": 1.0}}]}
    _, _, _, metrics = _run(inputs, tmp_path / "store", tmp_path / "weights", augmentation=rotated)
    assert metrics["features.computed"]["value"] == 24
    assert metrics["features.reused"]["value"] == 72


def test_changed_input_size_recomputes_everything(inputs, tmp_path):
    _run(inputs, tmp_path / "store", tmp_path / "weights", input_size=64)
    _, _, _, metrics = _run(inputs, tmp_path / "store", tmp_path / "weights", input_size=96)
    assert metrics["features.reused"]["value"] == 0 and metrics["features.computed"]["value"] == 96
