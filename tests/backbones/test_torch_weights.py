import pickle

import numpy as np
import pytest

from image_classifier.backbones import get_spec
from image_classifier.backbones.torch_weights import UnsafeWeightsError, assign_state_dict, read_state_dict

MOBILENET = get_spec("mobilenet_v2").wheel_weights


def test_reads_every_tensor_of_the_wheel_file():
    state = read_state_dict(MOBILENET.path(), MOBILENET.sha256)
    assert len(state) == 314
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.0.0.weight"].dtype == np.float32
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.1.num_batches_tracked"].dtype == np.int64
    # A real BatchNorm running variance is positive: wrong offsets would give garbage.
    assert (state["features.18.1.running_var"] > 0).all()


def test_rejects_a_wrong_checksum():
    with pytest.raises(ValueError, match="sha256"):
        read_state_dict(MOBILENET.path(), "0" * 64)


def _legacy_file(path, payload):
    with open(path, "wb") as handle:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        pickle.dump(payload, handle, protocol=2)
        pickle.dump([], handle, protocol=2)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_pickles_that_would_run_code(tmp_path):
    path = tmp_path / "evil.pth"
    _legacy_file(path, {"weight": _RunsCode()})
    with pytest.raises(UnsafeWeightsError, match="system"):
        read_state_dict(path)


def test_refuses_files_in_another_format(tmp_path):
    path = tmp_path / "plain.pth"
    with open(path, "wb") as handle:
        pickle.dump({"weight": [1.0]}, handle, protocol=2)
    with pytest.raises(ValueError, match="legacy"):
        read_state_dict(path)


def _tiny_port():
    """Layer names encode PyTorch's prefixes with ``.`` → ``__``, as the EfficientNet-Lite port does."""
    import keras

    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 3, use_bias=False, name="stem__conv")(inputs)
    x = keras.layers.DepthwiseConv2D(1, use_bias=False, name="block__dw")(x)
    x = keras.layers.BatchNormalization(name="block__bn")(x)
    return keras.Model(inputs, x, name="tiny")


def _tiny_state_dict():
    rng = np.random.default_rng(0)
    return {
        "stem.conv.weight": rng.normal(size=(3, 2, 3, 3)).astype("float32"),  # (out, in, kh, kw)
        "block.dw.weight": rng.normal(size=(3, 1, 1, 1)).astype("float32"),  # (channels, 1, kh, kw)
        **{f"block.bn.{p}": rng.uniform(0.5, 1, 3).astype("float32") for p in ("weight", "bias")},
        **{
            f"block.bn.{p}": rng.uniform(0.5, 1, 3).astype("float32") for p in ("running_mean", "running_var")
        },
        "block.bn.num_batches_tracked": np.array(7),
        "head.weight": np.zeros((10, 3), "float32"),  # the ImageNet classifier: never assigned
    }


def _assign(model, state):
    assign_state_dict(model, state, lambda name: name.replace("__", "."), classifier="head.", network="Tiny")


def test_assigns_torch_layouts_to_keras_layers_and_skips_the_classifier():
    model, state = _tiny_port(), _tiny_state_dict()
    _assign(model, state)
    kernel = model.get_layer("stem__conv").get_weights()[0]
    np.testing.assert_array_equal(kernel[1, 2, 0, :], state["stem.conv.weight"][:, 0, 1, 2])
    np.testing.assert_array_equal(
        model.get_layer("block__dw").get_weights()[0].ravel(), state["block.dw.weight"].ravel()
    )
    bn = model.get_layer("block__bn").get_weights()
    np.testing.assert_array_equal(bn[3], state["block.bn.running_var"])


def test_a_tensor_the_port_does_not_use_is_named_with_the_network():
    state = _tiny_state_dict() | {"block.extra.weight": np.zeros(3, "float32")}
    with pytest.raises(ValueError, match=r"not used by the Tiny port: \['block\.extra\.weight'\]"):
        _assign(_tiny_port(), state)
