import numpy as np
import pandas as pd
import pytest

from image_classifier.fitting import TrainingDiverged, class_weights
from image_classifier.pipelines.training.nodes import train_head

PARAMS = {"epochs": 30, "batch_size": 16, "learning_rate": 0.01, "dropout": 0.1, "patience": 3}


def _blobs(seed, n_per_class=40, dim=16):
    """Three well-separated Gaussian clusters: a head that learns anything gets them right."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, dim) * 6
    features = np.concatenate([centres[c] + rng.normal(size=(n_per_class, dim)) for c in range(3)])
    labels = np.repeat(np.arange(3), n_per_class)
    paths = [f"train/{'abc'[c]}/{seed}-{i}.png" for i, c in enumerate(labels)]
    return {"features": features.astype(np.float32), "labels": labels, "paths": paths}


def _index(*feature_sets):
    """The image index of these training sets: every image trained on."""
    return pd.DataFrame({"path": [p for s in feature_sets for p in s["paths"]], "split": "train"})


@pytest.mark.slow
def test_head_learns_and_reports_contract_metrics():
    head, metrics, history = train_head(
        _blobs(0), _blobs(1, 10), _blobs(2, 10), _index(_blobs(0)), ["a", "b", "c"], PARAMS, seed=3
    )
    assert metrics["head.val_accuracy"]["value"] > 0.95
    assert metrics["head.test_accuracy"]["value"] > 0.95
    epochs = len(history["loss"])
    assert [p["step"] for p in metrics["history/head.val_loss"]] == list(range(epochs))
    assert history["loss"][-1] < history["loss"][0]
    assert head.output_shape == (None, 3)


@pytest.mark.slow
def test_only_the_training_images_the_index_lists_are_trained_on():
    """The audit leaves images out of training by leaving them out of the index: the head is the
    one trained (same seed) on the features without those images."""
    train, validation, test = _blobs(0), _blobs(1, 10), _blobs(2, 10)
    kept = np.arange(len(train["labels"])) % 4 != 0
    smaller = {name: np.asarray(values)[kept] for name, values in train.items()}
    heads = [
        train_head(features, validation, test, _index(smaller), ["a", "b", "c"], PARAMS, seed=3)[0]
        for features in (train, smaller)
    ]
    for a, b in zip(heads[0].get_weights(), heads[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    everything = train_head(train, validation, test, _index(train), ["a", "b", "c"], PARAMS, seed=3)[0]
    assert not np.array_equal(everything.get_weights()[0], heads[0].get_weights()[0])


@pytest.mark.slow
def test_same_seed_same_metrics_and_weights():
    runs = [
        train_head(
            _blobs(0), _blobs(1, 10), _blobs(2, 10), _index(_blobs(0)), ["a", "b", "c"], PARAMS, seed=5
        )
        for _ in range(2)
    ]
    (head_a, metrics_a, _), (head_b, metrics_b, _) = runs
    assert metrics_a == metrics_b
    for a, b in zip(head_a.get_weights(), head_b.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_hidden_layer_label_smoothing_and_class_weights():
    params = {**PARAMS, "hidden_units": 32, "label_smoothing": 0.1, "class_weight": "balanced"}
    head, metrics, _ = train_head(
        _blobs(0), _blobs(1, 10), _blobs(2, 10), _index(_blobs(0)), ["a", "b", "c"], params, seed=3
    )
    assert head.get_layer("head_hidden").units == 32
    assert metrics["head.test_accuracy"]["value"] > 0.95
    # Smoothed targets keep the loss away from zero even when every prediction is right.
    assert metrics["history/head.loss"][-1]["value"] > 0.1
    assert metrics["diagnostics/training.label_smoothing"]["value"] == 0.1


@pytest.mark.slow
def test_a_null_label_smoothing_is_decided_by_the_number_of_training_photos():
    params = {**PARAMS, "label_smoothing": None}
    for per_class, smoothing in ((40, 0.0), (334, 0.1)):  # 120 and 1002 training photos
        train = _blobs(0, per_class)
        _, metrics, _ = train_head(
            train, _blobs(1, 10), _blobs(2, 10), _index(train), ["a", "b", "c"], params, seed=3
        )
        assert metrics["diagnostics/training.label_smoothing"]["value"] == smoothing
        # Smoothed by 0.1 over 3 classes, the loss cannot fall below the targets' entropy, 0.29;
        # the unsmoothed head gets every blob right and ends near 0.15.
        assert (metrics["history/head.loss"][-1]["value"] > 0.25) == (smoothing > 0)


def test_balanced_class_weights_equalise_each_class_total():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    weights = class_weights(labels, 3, "balanced")
    totals = [weights[c] * (labels == c).sum() for c in range(3)]
    np.testing.assert_allclose(totals, [100 / 3] * 3)
    assert class_weights(labels, 3, "none") is None


@pytest.mark.slow
def test_a_diverging_loss_fails_the_node_instead_of_saving_garbage():
    """A loss that became NaN used to train on silently and register a model at chance accuracy."""
    poisoned = _blobs(0)
    poisoned["features"][0] = np.nan
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 1.*Lower training\.learning_rate"):
        train_head(poisoned, _blobs(1, 10), _blobs(2, 10), _index(poisoned), ["a", "b", "c"], PARAMS, seed=3)
