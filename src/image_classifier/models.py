"""Keras models assembled from a backbone trunk and a classifier head.

Every model that leaves a pipeline takes raw RGB ``uint8`` images of any size: resizing and
normalisation are layers, so a logged model needs no preprocessing code beside it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from image_classifier.backbones import BackboneSpec
from image_classifier.backbones.registry import weighted_layers

# Where a model keeps the fingerprint of its inputs while in memory; the catalog's
# StampedModelDataset writes it into the .keras file and reads it back.
_STAMP = "image_classifier_fingerprint"


def stamp(model: keras.Model, fingerprint: dict[str, str]) -> keras.Model:
    """Record the data and parameters that produced ``model`` (see ``promotion.fingerprint``)."""
    # A JSON string, because Keras wraps dict attributes of a model in its own tracked types.
    setattr(model, _STAMP, json.dumps(fingerprint, sort_keys=True))
    return model


def stamp_of(model: keras.Model) -> dict[str, str] | None:
    text = getattr(model, _STAMP, None)
    return json.loads(text) if text else None


def _raw_images() -> Any:
    """What every model that leaves a pipeline takes: RGB uint8 images of any size."""
    return keras.Input(shape=(None, None, 3), dtype="uint8", name="image")


def _resize(images: Any, input_size: int) -> Any:
    return keras.layers.Resizing(
        input_size, input_size, interpolation="bilinear", antialias=True, name="resize"
    )(images)


def normalise_pixels(x: Any, spec: BackboneSpec) -> Any:
    """Float 0–255 RGB pixels → what ``spec``'s trunk was trained on.

    The one copy of this arithmetic, shared by the logged model and the graphs exported to other
    engines, so their features cannot drift apart. It is a ``Rescaling`` rather than a
    ``Normalization`` because the latter's statistics become extra graph inputs in ONNX.
    """
    if spec.bgr:
        # Caffe-trained networks (VGG, ResNet v1) read BGR: a fixed permutation, never trained.
        flip = keras.layers.Dense(3, use_bias=False, trainable=False, name="rgb_to_bgr")
        x = flip(x)
        flip.set_weights([np.eye(3, dtype="float32")[::-1]])
    mean, std = np.asarray(spec.mean, "float32"), np.asarray(spec.std, "float32")
    return keras.layers.Rescaling(scale=1 / std, offset=-mean / std, name="imagenet_normalise")(x)


def feature_extractor(trunk: keras.Model, spec: BackboneSpec, input_size: int) -> keras.Model:
    """Raw uint8 images → pooled backbone features (batch, feature_dim)."""
    images = _raw_images()
    features = _pooled(_resize(images, input_size), trunk, spec)
    return keras.Model(images, features, name=f"{spec.name.replace(':', '_')}_features")


def _pooled(pixels: Any, trunk: keras.Model, spec: BackboneSpec) -> Any:
    x = normalise_pixels(pixels, spec)
    # training=False keeps BatchNorm on its ImageNet statistics even when the trunk's top
    # layers are unfrozen for fine-tuning: small batches of a new domain would otherwise
    # overwrite the running means and wreck the pretrained features.
    x = trunk(x, training=False)
    return keras.layers.GlobalAveragePooling2D(name="pool")(x)


def unresized_classifier(trunk: keras.Model, spec: BackboneSpec, head: keras.Model) -> keras.Model:
    """Images of any size, fed to ``trunk`` as they are → class probabilities.

    It shares its layers, and so its weights, with the raw-image model built from the same trunk
    and head: fitting it fits that model. For fine-tuning on views smaller than the final model's
    input (``fine_tuning.train_size``) while validating at that input size.
    """
    images = _raw_images()
    return keras.Model(images, head(_pooled(images, trunk, spec)), name="unresized_classifier")


def classifier_head(
    feature_dim: int, num_classes: int, dropout: float, seed: int, hidden_units: int = 0
) -> keras.Model:
    """Pooled features → class probabilities, through an optional ReLU layer."""
    features = keras.Input(shape=(feature_dim,), name="features")
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(features)
    if hidden_units:
        x = _relu_dense(x, hidden_units, dropout, seed + 1, "head_hidden")
    return keras.Model(features, _softmax(x, num_classes, seed, "head_probabilities"), name="head")


def _relu_dense(x: Any, units: int, dropout: float, seed: int, name: str) -> Any:
    x = keras.layers.Dense(
        units, activation="relu", kernel_initializer=keras.initializers.HeUniform(seed=seed), name=name
    )(x)
    return keras.layers.Dropout(dropout, seed=seed, name=f"{name}_dropout")(x)


def _softmax(x: Any, num_classes: int, seed: int, name: str) -> Any:
    return keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name=name,
    )(x)


def compile_classifier(model: keras.Model, learning_rate: Any, label_smoothing: float) -> None:
    """Adam on one-hot labels: Keras only smooths labels in the categorical (not sparse) loss."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )


def full_classifier(extractor: keras.Model, head: keras.Model) -> keras.Model:
    """Raw uint8 images → class probabilities."""
    images = _raw_images()
    probabilities = head(extractor(images, training=False))
    return keras.Model(images, probabilities, name="image_classifier")


def unfreeze_top(
    trunk: keras.Model, count: int, tunable: Callable[[keras.Model], list] = weighted_layers
) -> int:
    """Make the top ``count`` of the trunk's ``tunable`` layers trainable; return how many were.

    BatchNorm layers stay frozen: in Keras a frozen BatchNorm also runs in inference mode,
    which is what fine-tuning on a small dataset needs.
    """
    trunk.trainable = True
    candidates = tunable(trunk)
    top = {id(layer) for layer in candidates[len(candidates) - count :]} if count > 0 else set()
    for layer in trunk.layers:
        layer.trainable = id(layer) in top
    return len(top)


def scratch_convnet(
    num_classes: int,
    input_size: int,
    blocks: list[dict[str, Any]],
    dense_units: int,
    dropout: float,
    seed: int,
) -> keras.Model:
    """The classic small convnet, trained from nothing: raw uint8 images → class probabilities.

    Each block is a ReLU convolution (filters, kernel_size, strides, padding ``valid`` or ``same``)
    followed by 2×2 max or average pooling, or none.
    """
    images = _raw_images()
    x = _resize(images, input_size)
    x = keras.layers.Rescaling(1 / 255, name="scale")(x)
    pooling = {"max": keras.layers.MaxPooling2D, "average": keras.layers.AveragePooling2D}
    for i, block in enumerate(blocks):
        x = keras.layers.Conv2D(
            block["filters"],
            block["kernel_size"],
            strides=block["strides"],
            padding=block["padding"],
            activation="relu",
            kernel_initializer=keras.initializers.HeUniform(seed=seed + i),
            name=f"conv_{i}",
        )(x)
        if block["pooling"] != "none":
            x = pooling[block["pooling"]](2, name=f"pool_{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = _relu_dense(x, dense_units, dropout, seed, "dense")
    return keras.Model(images, _softmax(x, num_classes, seed, "probabilities"), name="scratch_convnet")
