import os
import shutil

import numpy as np
import pytest

from conftest import write_photo
from image_classifier.config import BackboneParams, FeaturesParams
from image_classifier.datasets import FeatureStoreDataset, ImageFolderDataset, feature_store
from image_classifier.pipelines.augmentation.nodes import plan_views
from image_classifier.pipelines.features.nodes import backbone_context, cache_key, compute_features
from image_classifier.pipelines.ingestion.nodes import class_names, index_images

AUGMENTATION = {"views": 2, "transforms": [{"name": "HorizontalFlip", "params": {"p": 1.0}}]}


def _inputs(folder):
    raw = ImageFolderDataset(str(folder)).load()
    index, _ = index_images(raw, {"validation": 0.1, "test": 0.1}, {}, seed=0)
    return raw, index, plan_views(index, AUGMENTATION), class_names(index)


@pytest.fixture(scope="module")
def inputs(tiny_demo):
    return _inputs(tiny_demo)


def _run(inputs, store_dir, weights_dir, input_size=64, augmentation=AUGMENTATION, seed=42, **features):
    raw, index, plan, names = inputs
    return compute_features(
        plan,
        index,
        raw,
        {},
        FeatureStoreDataset(str(store_dir)).load(),
        names,
        {"name": "mobilenet_v2", "input_size": input_size, "cache_dir": str(weights_dir)},
        {"batch_size": 16, **features},
        augmentation,
        2,
        seed,
    )


def test_every_key_field_changes_the_key():
    context = backbone_context(BackboneParams(input_size=96), FeaturesParams())
    base = cache_key("a" * 64, 1, context, "aug1", 42)
    variants = [
        cache_key("a" * 64, 1, context, "aug1", 43),  # seed
        cache_key("b" * 64, 1, context, "aug1", 42),  # image content
        cache_key("a" * 64, 2, context, "aug1", 42),  # view index
        cache_key("a" * 64, 1, context, "aug2", 42),  # augmentation config
        cache_key(
            "a" * 64, 1, backbone_context(BackboneParams(input_size=128), FeaturesParams()), "aug1", 42
        ),
        cache_key(
            "a" * 64, 1, backbone_context(BackboneParams(), FeaturesParams(storage="fp16")), "aug1", 42
        ),
        cache_key(
            "a" * 64,
            1,
            backbone_context(BackboneParams(), FeaturesParams(engine="openvino", precision="bf16")),
            "aug1",
            42,
        ),
        cache_key(
            "a" * 64, 1, backbone_context(BackboneParams(), FeaturesParams(engine="tensorflow")), "aug1", 42
        ),
        # The audit's centre crops
        cache_key(
            "a" * 64, 1, backbone_context(BackboneParams(input_size=96), FeaturesParams(), 0.9), "aug1", 42
        ),
    ]
    assert len({base, *variants}) == 1 + len(variants)
    # Backbone name and weights hash are in the context string that every key hashes.
    assert context.startswith("mobilenet_v2|b03531047ffacf1e") and "|96|" in context
    # The plain view depends on neither the augmentation config nor the seed: view 0 stays cached.
    assert cache_key("a" * 64, 0, context, "aug1", 42) == cache_key("a" * 64, 0, context, "aug2", 43)


@pytest.mark.slow
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


@pytest.mark.slow
def test_changed_augmentation_recomputes_only_augmented_views(inputs, tmp_path):
    _run(inputs, tmp_path / "store", tmp_path / "weights")
    rotated = {"views": 2, "transforms": [{"name": "Rotate", "params": {"limit": 30, "p": 1.0}}]}
    _, _, _, metrics = _run(inputs, tmp_path / "store", tmp_path / "weights", augmentation=rotated)
    assert metrics["features.computed"]["value"] == 24
    assert metrics["features.reused"]["value"] == 72


@pytest.mark.slow
def test_another_seed_recomputes_only_augmented_views_and_they_differ(inputs, tmp_path):
    # A rotation by a random angle: the seed decides each view's pixels (a flip with p=1 would not).
    rotated = {"views": 2, "transforms": [{"name": "Rotate", "params": {"limit": 30, "p": 1.0}}]}
    first = _run(inputs, tmp_path / "store", tmp_path / "weights", augmentation=rotated, seed=1)
    second = _run(inputs, tmp_path / "store", tmp_path / "weights", augmentation=rotated, seed=2)
    assert second[3]["features.computed"]["value"] == 24 and second[3]["features.reused"]["value"] == 72
    augmented = first[0]["views"] > 0
    np.testing.assert_array_equal(first[0]["features"][~augmented], second[0]["features"][~augmented])
    assert not np.allclose(first[0]["features"][augmented], second[0]["features"][augmented])


@pytest.mark.slow
def test_changed_input_size_recomputes_everything(inputs, tmp_path):
    _run(inputs, tmp_path / "store", tmp_path / "weights", input_size=64)
    _, _, _, metrics = _run(inputs, tmp_path / "store", tmp_path / "weights", input_size=96)
    assert metrics["features.reused"]["value"] == 0 and metrics["features.computed"]["value"] == 96


@pytest.mark.slow
def test_new_images_compute_only_their_views(inputs, tiny_demo, tmp_path):
    _run(inputs, tmp_path / "store", tmp_path / "weights")
    grown = tmp_path / "grown"
    shutil.copytree(tiny_demo, grown)
    for i in range(3):
        write_photo(grown / "train" / "hat" / f"new{i}.png", seed=500 + i, size=(80, 96))
    _, _, _, metrics = _run(_inputs(grown), tmp_path / "store", tmp_path / "weights")
    assert metrics["features.computed"]["value"] == 3 * AUGMENTATION["views"]
    assert metrics["features.reused"]["value"] == 96


@pytest.mark.slow
def test_a_killed_run_is_finished_by_the_next_one(inputs, tmp_path, monkeypatch):
    renames: list[str] = []
    real_replace = feature_store.os.replace

    def dies_on_third_shard(source, target):
        if os.path.basename(target).startswith("shard-"):
            renames.append(target)
        if len(renames) == 3:
            raise KeyboardInterrupt("killed")
        real_replace(source, target)

    monkeypatch.setattr(feature_store.os, "replace", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        _run(inputs, tmp_path / "store", tmp_path / "weights", shard_size=16)
    monkeypatch.setattr(feature_store.os, "replace", real_replace)
    train, _, _, metrics = _run(inputs, tmp_path / "store", tmp_path / "weights")
    assert metrics["features.reused"]["value"] == 32  # the two shards that were renamed
    assert metrics["features.computed"]["value"] == 96 - 32
    clean_train, _, _, _ = _run(inputs, tmp_path / "clean", tmp_path / "weights")
    np.testing.assert_allclose(train["features"], clean_train["features"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fp16_storage_halves_the_cache_and_keeps_the_features(inputs, tmp_path):
    train32, _, _, metrics32 = _run(inputs, tmp_path / "fp32", tmp_path / "weights")
    train16, _, _, metrics16 = _run(inputs, tmp_path / "fp16", tmp_path / "weights", storage="fp16")
    assert train16["features"].dtype == np.float32  # widened again for training
    np.testing.assert_allclose(train16["features"], train32["features"], rtol=2e-3, atol=2e-3)
    ratio = (
        metrics16["diagnostics/features.cache_bytes"]["value"]
        / metrics32["diagnostics/features.cache_bytes"]["value"]
    )
    assert 0.45 < ratio < 0.6
