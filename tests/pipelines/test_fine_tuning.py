import keras
import numpy as np
import pytest

from image_classifier.backbones import load_pretrained
from image_classifier.datasets import ImageFolderDataset
from image_classifier.models import classifier_head
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


def _run(inputs, enabled):
    raw, index, names, backbone = inputs
    head = classifier_head(1280, len(names), 0.2, seed=1)
    # A higher rate than the default, so that a few steps from an untrained head beat chance.
    tuning = {"enabled": enabled, "epochs": 2, "unfreeze_layers": 5, "learning_rate": 1e-3, "batch_size": 8}
    training = {"label_smoothing": 0.1, "class_weight": "balanced"}
    return fine_tune(head, index, raw, {}, names, backbone, tuning, training, AUGMENTATION, 2, 0, "digest")


def test_disabled_returns_the_untrained_raw_image_model(inputs):
    model, metrics, history = _run(inputs, enabled=False)
    assert metrics == {} and history == {}
    # Raw uint8 photos of any size go straight in: preprocessing is part of the model.
    for shape in ((1, 120, 90, 3), (2, 50, 70, 3)):
        probabilities = model.predict(np.zeros(shape, np.uint8), verbose=0)
        assert probabilities.shape == (shape[0], 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_enabled_trains_only_top_layers_and_keeps_batchnorm_frozen(inputs):
    model, metrics, history = _run(inputs, enabled=True)
    # Chance is 1/3; 12 or more right of 24 happens by chance about 4% of the time.
    assert metrics["finetune.val_accuracy"]["value"] >= 0.5
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
