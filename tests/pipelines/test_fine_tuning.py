import re

import keras
import numpy as np
import pytest

from image_classifier.backbones import get_spec, load_pretrained
from image_classifier.config import IngestionParams
from image_classifier.datasets import ImageFolderDataset, StampedModelDataset
from image_classifier.loading import ViewLoader
from image_classifier.models import classifier_head, feature_extractor, full_classifier
from image_classifier.pipelines.fine_tuning.nodes import fine_tune
from image_classifier.pipelines.ingestion.nodes import class_names, index_images

# Builds the backbone and fine-tunes it.
pytestmark = pytest.mark.slow

AUGMENTATION = {"views": 2, "transforms": [{"name": "HorizontalFlip", "params": {"p": 0.5}}]}


@pytest.fixture(scope="module")
def inputs(tiny_demo, tmp_path_factory):
    raw = ImageFolderDataset(str(tiny_demo)).load()
    index, _ = index_images(raw, {"validation": 0.1, "test": 0.1}, {}, seed=0)
    backbone = {"name": "mobilenet_v2", "input_size": 64, "cache_dir": str(tmp_path_factory.mktemp("w"))}
    return raw, index, class_names(index), backbone


def _run(inputs, enabled, head=None, alpha=0.05, **tuning):
    raw, index, names, backbone = inputs
    head = head or classifier_head(1280, len(names), 0.2, seed=1)
    # A higher rate than the default, so that a few steps from an untrained head beat chance.
    tuning = {
        "enabled": enabled,
        "epochs": 2,
        "unfreeze_layers": 5,
        "learning_rate": 1e-3,
        "batch_size": 8,
        "min_epoch_images": 0,
        **tuning,
    }
    training = {"label_smoothing": 0.1, "class_weight": "balanced"}
    validation = _validation_features(inputs)
    return fine_tune(
        head,
        validation,
        index,
        raw,
        {},
        names,
        backbone,
        tuning,
        training,
        AUGMENTATION,
        2,
        0,
        "digest",
        alpha,
    )


def _validation_features(inputs):
    """What the features stage hands fine-tuning: the validation photos' plain-view features, in
    an order of their own (the feature store's is not the index's)."""
    images, labels = _photos(inputs, "validation")
    extractor = feature_extractor(
        load_pretrained("mobilenet_v2", 64, inputs[3]["cache_dir"]), get_spec("mobilenet_v2"), 64
    )
    paths = inputs[1].loc[inputs[1]["split"] == "validation", "path"].to_numpy()
    order = np.argsort(paths)[::-1]
    features = extractor.predict(images, verbose=0)
    return {"features": features[order], "labels": labels[order], "paths": paths[order]}


def _photos(inputs, split):
    raw, index, names, _ = inputs
    rows = index[index["split"] == split]
    loader = ViewLoader(raw, IngestionParams(), 64)
    images = np.stack([loader(path, sha, 0) for path, sha in zip(rows["path"], rows["sha256"], strict=True)])
    return images, rows["label"].map({name: i for i, name in enumerate(names)}).to_numpy()


def test_disabled_returns_the_untrained_raw_image_model(inputs):
    model, metrics, history, outcome = _run(inputs, enabled=False)
    assert metrics == {} and history == {}
    assert outcome == {"final_model": "head", "reason": "fine_tuning.enabled is false"}
    # Raw uint8 photos of any size go straight in: preprocessing is part of the model.
    for shape in ((1, 120, 90, 3), (2, 50, 70, 3)):
        probabilities = model.predict(np.zeros(shape, np.uint8), verbose=0)
        assert probabilities.shape == (shape[0], 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.fixture(scope="module")
def trained_head(inputs):
    """A head trained on the frozen features of the training photos, and the frozen model it makes."""
    raw, index, names, backbone = inputs
    extractor = feature_extractor(
        load_pretrained("mobilenet_v2", 64, backbone["cache_dir"]), get_spec("mobilenet_v2"), 64
    )
    images, labels = _photos(inputs, "train")
    head = classifier_head(1280, len(names), 0.0, seed=1)
    head.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    head.fit(extractor.predict(images, verbose=0), labels, epochs=40, verbose=0)
    return head, full_classifier(extractor, head)


def test_a_fine_tuning_that_cannot_help_costs_patience_epochs_and_the_frozen_model_is_final(
    inputs, trained_head
):
    """A head trained on the frozen features, then a rate that wrecks the trunk: no epoch beats
    the frozen model, so fine-tuning stops after ``patience`` of its 8 epochs, and the model
    returned is the frozen backbone with that head, weight for weight. (``fixable_share: 0``:
    the frozen model is good enough that fine-tuning would otherwise not start.)"""
    head, frozen = trained_head
    validation, _ = _photos(inputs, "validation")

    # Epochs of at least 2 × the training photos + 1: three passes over them.
    photos = int((inputs[1]["split"] == "train").sum())
    model, metrics, history, outcome = _run(
        inputs,
        True,
        head=head,
        epochs=8,
        learning_rate=5.0,
        patience=2,
        min_epoch_images=2 * photos + 1,
        fixable_share=0.0,
    )
    assert outcome["final_model"] == "head" and outcome["epochs_run"] == 2
    assert outcome["epoch_images"] == 3 * photos
    assert outcome["fine_tuned"]["loss"] > outcome["frozen"]["loss"]
    assert metrics["diagnostics/finetune.kept"]["value"] == 0.0
    assert metrics["diagnostics/finetune.epochs_run"]["value"] == 2
    assert len(history["loss"]) == 2
    # Warmed up to the peak within the first epoch, then held (each epoch improved on the last).
    assert history["learning_rate"] == pytest.approx([5.0, 5.0])
    np.testing.assert_allclose(
        model.predict(validation, verbose=0), frozen.predict(validation, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_fine_tuning_does_not_start_when_it_could_not_be_chosen_over_the_frozen_model(inputs, trained_head):
    """The frozen model makes so few validation mistakes that righting half of them could not be
    significant: no epoch is spent, the frozen model is final, and the run says why."""
    head, frozen = trained_head
    validation, labels = _photos(inputs, "validation")
    mistakes = int((frozen.predict(validation, verbose=0).argmax(axis=1) != labels).sum())
    assert mistakes < 10  # at alpha 0.05, righting 5 of them with none lost is p = 0.031
    model, metrics, history, outcome = _run(inputs, True, head=head, epochs=8)
    assert outcome["final_model"] == "head" and outcome["epochs_run"] == 0 and history == {}
    assert f"makes {mistakes} mistakes on {len(labels)} validation photos" in outcome["reason"]
    assert metrics["diagnostics/finetune.epochs_run"]["value"] == 0
    # The contract's metric is the stage's result: the frozen model's.
    assert metrics["finetune.val_accuracy"]["value"] == pytest.approx(1 - mistakes / len(labels))
    assert metrics["diagnostics/finetune.kept"]["value"] == 0.0
    np.testing.assert_allclose(
        model.predict(validation, verbose=0), frozen.predict(validation, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_the_rate_probe_keeps_the_rate_that_does_not_wreck_the_frozen_features(inputs, trained_head):
    """Two peak rates tried from the same start: 0.5 wrecks what the frozen features knew within
    its probe, 1e-4 does not, and fine-tuning then runs at 1e-4."""
    head, _ = trained_head
    model, metrics, history, outcome = _run(
        inputs, True, head=head, epochs=1, rate_probe=[0.5, 1e-4], rate_probe_epochs=1.0, fixable_share=0.0
    )
    probe = outcome["rate_probe"]
    assert set(probe) == {"0.5", "0.0001"} and probe["0.0001"] < probe["0.5"]
    assert outcome["learning_rate"] == 1e-4 and history["learning_rate"] == pytest.approx([1e-4])
    assert metrics["diagnostics/finetune.probe_val_loss.0.0001"]["value"] == pytest.approx(probe["0.0001"])


def test_a_null_rate_warms_up_to_the_rate_for_few_photos_and_says_so(inputs):
    model, metrics, history, outcome = _run(inputs, True, epochs=1, learning_rate=None)
    assert outcome["learning_rate"] == 1e-4  # a tiny folder: far fewer than 1000 training photos
    assert metrics["diagnostics/finetune.learning_rate"]["value"] == 1e-4
    assert history["learning_rate"] == pytest.approx([1e-4])


def test_enabled_trains_only_top_layers_and_keeps_batchnorm_frozen(inputs, tmp_path):
    model, metrics, history, outcome = _run(inputs, enabled=True)
    # Chance is 1/3; 12 or more right of 24 happens by chance about 4% of the time.
    assert metrics["finetune.val_accuracy"]["value"] >= 0.5
    # From an untrained head, the frozen model is at chance: the fine-tuned one is final.
    assert outcome["final_model"] == "fine-tuned" and metrics["diagnostics/finetune.kept"]["value"] == 1.0
    assert outcome["fine_tuned"]["accuracy"] > outcome["frozen"]["accuracy"]
    assert [p["step"] for p in metrics["history/finetune.loss"]] == [0, 1]
    trunk = model.get_layer("mobilenet_v2_features").get_layer("mobilenet_v2")
    trainable = [layer for layer in trunk.layers if layer.trainable and layer.weights]
    assert 0 < len(trainable) <= 5
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) and layer.trainable for layer in trunk.layers
    )
    assert not trunk.get_layer("features_0_0_conv").trainable  # the stem stays frozen
    # Inference-mode BatchNorm: the ImageNet statistics are untouched by the new domain's batches.
    pretrained = load_pretrained("mobilenet_v2", 64, inputs[3]["cache_dir"])
    top_norms = [layer for layer in trunk.layers if isinstance(layer, keras.layers.BatchNormalization)][-3:]
    for layer in top_norms:
        for after, before in zip(layer.weights, pretrained.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(after.numpy(), before.numpy())
    # The file holds the model, not the optimizer's state, and answers as the model does.
    dataset = StampedModelDataset(str(tmp_path / "classifier.keras"))
    dataset.save(model)
    loaded = dataset.load()
    assert not loaded.compiled
    images, _ = _photos(inputs, "validation")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_training_on_smaller_views_validates_and_returns_the_model_at_the_input_size(inputs, caplog):
    """fine_tuning.train_size: the steps see 48 px views, while the best epoch is chosen on, and
    the model returned takes, photos resized to backbone.input_size (64): the validation accuracy
    reported is the returned model's on those photos."""
    with caplog.at_level("INFO"):
        # alpha 0.5: on 24 photos a real gain is rarely significant, and this is about sizes.
        model, metrics, _, outcome = _run(inputs, enabled=True, alpha=0.5, train_size=48)
    assert "at 48 px" in caplog.text
    assert outcome["final_model"] == "fine-tuned"
    assert model.get_layer("mobilenet_v2_features").get_layer("resize").height == 64
    images, labels = _photos(inputs, "validation")
    accuracy = (model.predict(images, verbose=0).argmax(axis=1) == labels).mean()
    assert accuracy == pytest.approx(metrics["finetune.val_accuracy"]["value"])
    assert accuracy >= 0.5  # chance is 1/3: the fitted weights are the returned model's


def test_progressive_resizing_trains_at_train_size_then_at_the_input_size(inputs, caplog, recwarn):
    """fine_tuning.train_size_epochs: the first epoch's steps see 48 px views, the second's 64 px
    ones, in one fit; the model returned is the raw-image model at 64 px, as without it."""
    with caplog.at_level("INFO"):
        model, metrics, _, outcome = _run(inputs, enabled=True, alpha=0.5, train_size=48, train_size_epochs=1)
    assert "at 48 px for 1, then 64 px" in caplog.text
    # The switch happened between the two epochs, during the fit.
    epoch_lines = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(("fine-tuning epoch", "Progressive resizing"))
    ]
    assert [line.split(":")[0] for line in epoch_lines] == [
        "fine-tuning epoch 1/2",
        "Progressive resizing",
        "fine-tuning epoch 2/2",
    ]
    assert "from epoch 2 on, the training views are 64 px (they were 48 px)" in epoch_lines[1]
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]
    # Each epoch leaves a line in the log, with its time and validation scores.
    assert re.search(
        r"fine-tuning epoch 2/2: \d+ s \(validation included\), accuracy .*val_accuracy", caplog.text
    )
    assert [p["step"] for p in metrics["history/finetune.loss"]] == [0, 1]
    assert model.get_layer("mobilenet_v2_features").get_layer("resize").height == 64
    images, labels = _photos(inputs, "validation")
    accuracy = (model.predict(images, verbose=0).argmax(axis=1) == labels).mean()
    assert accuracy == pytest.approx(metrics["finetune.val_accuracy"]["value"])
    assert outcome["final_model"] == "fine-tuned" and accuracy >= 0.5
