"""Known answers: the port with torchvision's ImageNet weights recognises real photos."""

import numpy as np
import pytest
import skimage.data

from image_classifier.backbones import get_spec, load_pretrained
from image_classifier.backbones import mobilenet_v2 as port
from image_classifier.backbones.torch_weights import read_state_dict
from image_classifier.models import feature_extractor

# Every test here builds a network, most also convert its weights.
pytestmark = pytest.mark.slow

SPEC = get_spec("mobilenet_v2")


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    """Raw uint8 photo → ImageNet class probabilities, preprocessing inside."""
    trunk = load_pretrained("mobilenet_v2", 224, tmp_path_factory.mktemp("weights"))
    extractor = feature_extractor(trunk, SPEC, 224)
    logits = port.imagenet_classifier(read_state_dict(SPEC.wheel_weights.path(), SPEC.wheel_weights.sha256))

    def classify(photo: np.ndarray) -> np.ndarray:
        return logits(extractor(photo[None], training=False)).numpy()[0]

    return classify


def test_chelsea_is_a_cat(imagenet_model):
    top = int(imagenet_model(skimage.data.chelsea()).argmax())
    assert 281 <= top <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_coffee_is_espresso(imagenet_model):
    assert int(imagenet_model(skimage.data.coffee()).argmax()) == 967


def test_converted_weights_are_cached_and_identical(tmp_path):
    first = load_pretrained("mobilenet_v2", 64, tmp_path)
    cached = list(tmp_path.glob("*.weights.h5"))
    assert len(cached) == 1 and SPEC.wheel_weights.sha256[:16] in cached[0].name
    second = load_pretrained("mobilenet_v2", 64, tmp_path)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_tensor_is_used_and_unknown_backbones_fail():
    trunk = port.build(64)
    state = read_state_dict(SPEC.wheel_weights.path(), SPEC.wheel_weights.sha256)
    state["features.99.0.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"MobileNetV2 port: \['features\.99"):
        port.assign_weights(trunk, state)
    with pytest.raises(ValueError, match="backbone.name"):
        get_spec("resnet9000")
