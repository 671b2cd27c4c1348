"""Inference engines for the frozen backbone while caching features: TensorFlow, OpenVINO, ONNX
Runtime. Fine-tuning and the logged model stay in TensorFlow; only feature caching changes.

On this 2-core CPU, ONNX Runtime and OpenVINO run MobileNetV2 2.5× and 2.2× as fast as TensorFlow,
with the same float32 results (within 1e-5). OpenVINO on a CPU with bfloat16 units silently computes
in bf16 unless told otherwise, so its precision hint is always set explicitly.

A converted backbone is cached beside the converted weights, keyed like the features (network,
weights, input size), so conversion happens once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import queue
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image_classifier.backbones import BackboneSpec, get_spec, load_pretrained, weights_identity
from image_classifier.config import BackboneParams, FeaturesParams
from image_classifier.errors import ProjectError
from image_classifier.threads import ordered_map

# TensorFlow and Keras only where a backbone runs: the hooks import this module at every Kedro
# start-up, to resolve `auto` before a run.
if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

# Preference order of `auto`: the fastest exact engine first.
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorflow": "tensorflow"}
_INSTALL = {"openvino": "openvino==2026.4.1", "onnxruntime": "onnxruntime==1.32.0 tf2onnx==1.17.0"}


class EngineUnavailableError(ProjectError):
    """The engine asked for is not installed."""


@dataclass(frozen=True)
class Engine:
    """The frozen backbone on an engine: ``engine(batch)`` computes one uint8 batch's float32
    vectors; ``engine.map(batches)`` computes a stream of batches in order, each shared among
    ``streams`` computations that run side by side."""

    forward: Callable[[np.ndarray], np.ndarray]
    streams: int = 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(batch)

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        if self.streams == 1:
            yield from map(self.forward, batches)
            return
        # Each batch is shared among the streams rather than one batch given to each: the streams
        # then hold one batch's activations between them (a second session computing 64 images
        # of its own raised the peak memory by 0.8 GB).
        counts: deque[int] = deque()

        def parts() -> Iterator[np.ndarray]:
            for batch in batches:
                pieces = np.array_split(batch, max(1, min(self.streams, len(batch))))
                counts.append(len(pieces))
                yield from pieces

        # Two parts per stream in flight, so that a stream never waits for its next part.
        results = ordered_map(self.forward, parts(), self.streams, 2 * self.streams)
        for first in results:
            # The count was noted when this batch's first part was taken, before its result.
            rest = [next(results) for _ in range(counts.popleft() - 1)]
            yield np.concatenate([first, *rest])


def cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def installed(engine: str) -> bool:
    return importlib.util.find_spec(_MODULES[engine]) is not None


def resolve(engine: str) -> str:
    """``auto`` → the first installed engine; a named engine must be installed."""
    if engine == "auto":
        return next(name for name in _MODULES if installed(name))
    if not installed(engine):
        raise EngineUnavailableError(
            f"features.engine: {engine} is not installed. `make setup` installs it "
            f"(`pip install {_INSTALL[engine]}`), or set features.engine=auto to fall back to tensorflow."
        )
    return engine


def inference_core(trunk: keras.Model, spec: BackboneSpec, input_size: int) -> keras.Model:
    """uint8 images already at ``input_size`` → pooled features, for export to another engine.

    Same arithmetic as ``models.feature_extractor`` without its resize (an identity at this size,
    and an op the other engines lack).
    """
    import keras

    from image_classifier.models import normalise_pixels

    images = keras.Input(shape=(input_size, input_size, 3), dtype="uint8", name="image")
    x = keras.ops.cast(images, "float32")
    x = normalise_pixels(x, spec)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(trunk(x, training=False))
    return keras.Model(images, features, name="inference_core")


def _converted_path(backbone: BackboneParams, engine: str) -> Path:
    identity = f"{backbone.name}|{weights_identity(backbone.name, backbone.weights)}|{backbone.input_size}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    stem = backbone.name.replace(":", "_").lower()
    suffix = {"openvino": ".xml", "onnxruntime": ".onnx"}[engine]
    return Path(backbone.cache_dir) / "engines" / f"{stem}-{backbone.input_size}-{digest}{suffix}"


def _convert_openvino(core: keras.Model, size: int, target: Path) -> None:
    import openvino as ov

    partial = target.with_name(f".{uuid.uuid4().hex}.xml")
    with warnings.catch_warnings():
        # The converter calls the model with a tuple where Keras expects the named input: harmless.
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        converted = ov.convert_model(core, input=[(-1, size, size, 3)])
    # save_model would store the weights as fp16 by default: inexact, whatever precision runs them.
    ov.save_model(converted, partial, compress_to_fp16=False)
    # The weights file first: a reader that sees the .xml must find its .bin complete.
    os.replace(partial.with_suffix(".bin"), target.with_suffix(".bin"))
    os.replace(partial, target)


def _convert_onnx(core: keras.Model, size: int, target: Path) -> None:
    partial = target.with_name(f".{uuid.uuid4().hex}.onnx")
    core(np.zeros((1, size, size, 3), np.uint8))  # Keras exports only a model that has been called
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)  # inside Keras
        core.export(str(partial), format="onnx", verbose=False)
    os.replace(partial, target)


def _converted(backbone: BackboneParams, engine: str) -> Path:
    target = _converted_path(backbone, engine)
    if not target.exists():
        logger.info("Converting %s for %s (once; cached in %s)", backbone.name, engine, target)
        spec, size = get_spec(backbone.name), backbone.input_size
        trunk = load_pretrained(spec.name, size, backbone.cache_dir, backbone.weights)
        target.parent.mkdir(parents=True, exist_ok=True)
        convert = _convert_openvino if engine == "openvino" else _convert_onnx
        convert(inference_core(trunk, spec, size), size, target)
    return target


def prepare(backbone: BackboneParams, features: FeaturesParams) -> None:
    """Convert the backbone for the engine now, if it is not cached yet: before many workers start,
    so that they load one converted file instead of each converting it."""
    engine = resolve(features.engine)
    if engine == "tensorflow":
        load_pretrained(backbone.name, backbone.input_size, backbone.cache_dir, backbone.weights)
    else:
        _converted(backbone, engine)


def backbone_forward(backbone: BackboneParams, features: FeaturesParams) -> Engine:
    """The pretrained feature extractor on the configured engine: uint8 batch → float32 vectors."""
    engine, size = resolve(features.engine), backbone.input_size
    if features.precision == "bf16" and engine != "openvino":
        raise EngineUnavailableError(
            f"features.precision: bf16 needs openvino, and features.engine gave {engine}"
        )
    if features.engine_streams > 1 and engine != "onnxruntime":
        raise EngineUnavailableError(
            f"features.engine_streams: {features.engine_streams} needs onnxruntime, and "
            f"features.engine gave {engine}, which computes one batch at a time"
        )
    if engine == "tensorflow":
        import tensorflow as tf

        from image_classifier.models import feature_extractor

        spec = get_spec(backbone.name)
        trunk = load_pretrained(spec.name, size, backbone.cache_dir, backbone.weights)
        extractor = feature_extractor(trunk, spec, size)
        # A fixed signature with a free batch dimension: the last, smaller batch reuses the trace.
        forward = tf.function(
            lambda images: extractor(images, training=False),
            input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)],
        )
        return Engine(lambda batch: forward(tf.constant(batch)).numpy())
    # The trunk is built only to convert it, once: a cached conversion loads without TensorFlow.
    target = _converted(backbone, engine)
    if engine == "openvino":
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "bf16" if features.precision == "bf16" else "f32"}
        if features.engine_threads:
            config["INFERENCE_NUM_THREADS"] = features.engine_threads
        compiled = ov.Core().compile_model(str(target), "CPU", config)
        return Engine(lambda batch: np.asarray(compiled(batch)[0], dtype=np.float32))
    return _onnx_engine(target, features)


def _onnx_engine(target: Path, features: FeaturesParams) -> Engine:
    """``streams`` sessions that compute the parts of each batch side by side. On two cores, two
    single-threaded sessions cache features 11-16% faster end to end than one session on both
    cores: the loader threads share those cores, and a session whose threads wait for each other
    stalls whenever a loader takes one of them (benchmarks/README.md, Inference engines)."""
    import onnxruntime as ort

    streams = features.engine_streams or min(2, cores())
    options = ort.SessionOptions()
    options.intra_op_num_threads = features.engine_threads or max(1, cores() // streams)
    sessions: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(streams):
        session = ort.InferenceSession(str(target), options, providers=["CPUExecutionProvider"])
        sessions.put(session)
    name = session.get_inputs()[0].name  # the same model in every session

    def forward(batch: np.ndarray) -> np.ndarray:
        session = sessions.get()  # a session free for this thread: one batch per session at a time
        try:
            return session.run(None, {name: batch})[0]
        finally:
            sessions.put(session)

    return Engine(forward, streams)
