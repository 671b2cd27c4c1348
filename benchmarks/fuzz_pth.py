"""Fuzz the restricted ``.pth`` reader (``image_classifier.backbones.torch_weights``) with crafted files.

    .venv/bin/python benchmarks/fuzz_pth.py                  # 100000 cases, one child per CPU
    .venv/bin/python benchmarks/fuzz_pth.py --cases 20000 --jobs 1 --seed 7
    .venv/bin/python benchmarks/fuzz_pth.py --replay 12345   # one case, in this process, with traceback

Each case is a PyTorch legacy-format file built here without torch: a pickle that uses only the
globals the reader allows (``torch._utils._rebuild_tensor_v2``, ``torch.*Storage``,
``collections.OrderedDict``) with random shapes, strides, offsets, dtypes and storage lengths, then
some of them corrupted field by field, and some byte-mutated. The reader must either return arrays
equal, byte for byte, to a reference computed with pure-Python indexing into the storage bytes, or
raise ``UnsafeWeightsError``. Chunks of cases run in child processes, so that a segfault (a signal
as return code) or a hang (the chunk's timeout) is caught and reported instead of killing the run.
Case ``i`` of seed ``s`` is the same file on every run, hence ``--replay``.

Exits non-zero on any crash, hang, out-of-bounds read, wrong value or foreign exception type. The
builder and the case generator here are also what ``tests/backbones/test_torch_weights_fuzz.py`` uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
READER = ROOT / "src/image_classifier/backbones/torch_weights.py"

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}

# storage class → (struct format of one element, itemsize); what PyTorch's legacy storages hold.
STORAGE_FORMATS = {
    "FloatStorage": ("<f", 4),
    "DoubleStorage": ("<d", 8),
    "HalfStorage": ("<e", 2),
    "LongStorage": ("<q", 8),
    "IntStorage": ("<i", 4),
    "ShortStorage": ("<h", 2),
    "CharStorage": ("<b", 1),
    "ByteStorage": ("<B", 1),
    "BoolStorage": ("<?", 1),
}
NUMPY_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "|i1",
    "ByteStorage": "|u1",
    "BoolStorage": "|b1",
}


# --- A pickle emitter: the allowed globals are named, never imported (torch is not installed). ---


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """``func(*args)`` through REDUCE."""

    func: Any
    args: tuple = ()


@dataclass(frozen=True)
class OrderedDictOf:
    items: tuple = ()


@dataclass(frozen=True)
class PersistentId:
    pid: Any


@dataclass(frozen=True)
class Built:
    """``node``, then BUILD with ``state``: how PyTorch gives a state_dict its ``_metadata``."""

    node: Any
    state: Any


@dataclass(frozen=True)
class Memoized:
    """``node``, then stored in the pickle's memo under ``index`` (LONG_BINPUT)."""

    node: Any
    index: int


@dataclass(frozen=True)
class Deep:
    """``depth`` nested 1-tuples around None: deep nesting without a deep Python structure here."""

    depth: int


def emit(node: Any) -> bytes:
    if isinstance(node, Global):
        return b"c" + f"{node.module}\n{node.name}\n".encode()
    if isinstance(node, Call):
        return emit(node.func) + emit(tuple(node.args)) + b"R"
    if isinstance(node, OrderedDictOf):
        pairs = b"".join(emit(k) + emit(v) for k, v in node.items)
        return emit(Call(Global("collections", "OrderedDict"))) + b"(" + pairs + b"u"
    if isinstance(node, PersistentId):
        return emit(node.pid) + b"Q"
    if isinstance(node, Built):
        return emit(node.node) + emit(node.state) + b"b"
    if isinstance(node, Memoized):
        return emit(node.node) + b"r" + struct.pack("<I", node.index)
    if isinstance(node, Deep):
        return b"(" * node.depth + b"N" + b"t" * node.depth
    if node is None:
        return b"N"
    if node is True or node is False:
        return b"\x88" if node else b"\x89"
    if isinstance(node, int):
        length = (node.bit_length() + 8) // 8 if node else 0
        if length > 255:
            return b"\x8b" + struct.pack("<i", length) + node.to_bytes(length, "little", signed=True)
        return b"\x8a" + bytes([length]) + node.to_bytes(length, "little", signed=True)
    if isinstance(node, float):
        return b"G" + struct.pack(">d", node)
    if isinstance(node, str):
        raw = node.encode("utf-8", "surrogatepass")
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(node, bytes):
        return b"B" + struct.pack("<I", len(node)) + node
    if isinstance(node, tuple):
        return b")" if not node else b"(" + b"".join(map(emit, node)) + b"t"
    if isinstance(node, list):
        return b"]" + (b"(" + b"".join(map(emit, node)) + b"e" if node else b"")
    if isinstance(node, dict):
        return b"}" + (b"(" + b"".join(emit(k) + emit(v) for k, v in node.items()) + b"u" if node else b"")
    raise TypeError(f"cannot emit {type(node).__name__}")


def pickled(node: Any) -> bytes:
    return b"\x80\x02" + emit(node) + b"."


# --- Checkpoints described field by field, so a test can break exactly one thing. ---


@dataclass
class Storage:
    key: Any = "0"
    cls: str = "FloatStorage"
    numel: Any = 4  # what the pickle declares
    data: bytes | None = None  # the bytes written after the header; default: numel distinct elements
    header_numel: int | None = None  # the 8-byte count before the data; default: numel
    listed: bool = True  # named in the storage-keys pickle, and its bytes written
    module: str = "torch"
    location: Any = "cpu"
    view: Any = None
    pid_override: Any = None
    build: Any = None  # a BUILD state applied to the storage the pickle gets back

    def written(self) -> bytes:
        if self.data is not None:
            return self.data
        fmt, size = STORAGE_FORMATS.get(self.cls, ("<B", 1))
        count = self.numel if isinstance(self.numel, int) and 0 <= self.numel < 1 << 20 else 0
        return b"".join(distinct_element(fmt, i) for i in range(count))

    def node(self) -> Any:
        if self.pid_override is not None:
            return PersistentId(self.pid_override)
        pid = ("storage", Global(self.module, self.cls), self.key, self.location, self.numel, self.view)
        return PersistentId(pid) if self.build is None else Built(PersistentId(pid), self.build)


@dataclass
class Tensor:
    name: Any
    storage: Storage | Any
    offset: Any = 0
    shape: Any = ()
    stride: Any = ()
    rebuild: str = "_rebuild_tensor_v2"
    tail: tuple | None = None  # arguments after the stride; default: (requires_grad, backward_hooks)
    build: Any = None  # a BUILD state applied to the rebuilt tensor

    def node(self) -> Any:
        storage = self.storage.node() if isinstance(self.storage, Storage) else self.storage
        tail = self.tail
        if tail is None:
            tail = (False, OrderedDictOf()) if self.rebuild == "_rebuild_tensor_v2" else ()
        args = (storage, self.offset, self.shape, self.stride, *tail)
        call = Call(Global("torch._utils", self.rebuild), args)
        return call if self.build is None else Built(call, self.build)


@dataclass
class Checkpoint:
    tensors: list[Tensor]
    state: Any = None  # replaces the state_dict pickle's object
    metadata: Any = None  # the state_dict's ``_metadata``, set by BUILD as PyTorch does
    memo_index: int | None = None  # stores the state_dict in the pickle's memo under this index
    unused_storages: list[Storage] = field(default_factory=list)  # listed and written, used by no tensor
    keys: Any = None  # replaces the storage-keys list
    sys_info: Any = field(default_factory=lambda: dict(SYS_INFO))
    trailing: bytes = b""
    mutated: bytes | None = None  # these bytes instead of the built file: no reference to check against

    def all_storages(self) -> list[Storage]:
        """In file order: the tensors' own, by first use, then the unused ones."""
        seen: dict[int, Storage] = {}
        for tensor in self.tensors:
            if isinstance(tensor.storage, Storage):
                seen.setdefault(id(tensor.storage), tensor.storage)
        return list(seen.values()) + self.unused_storages

    def to_bytes(self) -> bytes:
        if self.mutated is not None:
            return self.mutated
        return self.pickles() + b"".join(self.storage_sections()) + self.trailing

    def storage_sections(self) -> list[bytes]:
        sections = []
        for storage in self.all_storages():
            if storage.listed:
                header = storage.header_numel if storage.header_numel is not None else storage.numel
                header = header % 2**64 if isinstance(header, int) else 0
                sections.append(header.to_bytes(8, "little") + storage.written())
        return sections

    def storage_bytes(self) -> dict[Any, bytes]:
        """For each listed storage, the bytes of the file where its declared elements are: a
        storage written short reads on into the next one, or into trailing bytes, or is cut off."""
        raw, start = self.to_bytes(), len(self.pickles())
        found = {}
        for storage in self.all_storages():
            if storage.listed:
                itemsize = STORAGE_FORMATS.get(storage.cls, ("", 1))[1]
                count = storage.numel if isinstance(storage.numel, int) and storage.numel > 0 else 0
                start += 8
                found[storage.key] = raw[start : start + count * itemsize]
                start += count * itemsize
        return found

    def pickles(self) -> bytes:
        listed = [s for s in self.all_storages() if s.listed]
        state = self.state
        if state is None:
            state = OrderedDictOf(tuple((t.name, t.node()) for t in self.tensors))
            state = state if self.metadata is None else Built(state, {"_metadata": self.metadata})
        state = state if self.memo_index is None else Memoized(state, self.memo_index)
        keys = self.keys if self.keys is not None else [s.key for s in listed]
        parts = [pickle.dumps(h, protocol=2) for h in (MAGIC, 1001)]
        return b"".join(parts + [pickled(self.sys_info), pickled(state), pickled(keys)])


def distinct_element(fmt: str, index: int) -> bytes:
    """Element ``index`` of a default storage: distinct values, so a wrong offset or stride shows."""
    if fmt in ("<f", "<d", "<e"):
        return struct.pack(fmt, index + 0.5)
    if fmt == "<?":
        return bytes([index % 3])  # 2 too: not every true byte of a file is 1
    size = struct.calcsize(fmt)
    return (index * 0x9E3779B1 + 1).to_bytes(size + 8, "little")[:size]


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


# --- The reference: what a correct reader returns, by pure-Python indexing into the written bytes. ---


class OutOfBounds(AssertionError):
    pass


def reference_bytes(tensor: Tensor, written: bytes) -> bytes:
    """The tensor's elements in C order, each cut out of ``written`` by its own index arithmetic."""
    fmt, itemsize = STORAGE_FORMATS[tensor.storage.cls]
    available = len(written) // itemsize
    shape, stride = tuple(tensor.shape), tuple(tensor.stride)
    if math.prod(shape) > available:
        raise OutOfBounds(
            f"{tensor.name!r}: accepted {math.prod(shape)} elements from a storage of {available}"
        )
    out = bytearray()
    for index in itertools.product(*(range(size) for size in shape)):
        flat = tensor.offset + sum(i * s for i, s in zip(index, stride, strict=True))
        if not 0 <= flat < available:
            raise OutOfBounds(f"{tensor.name!r}: element {index} is storage element {flat} of {available}")
        item = written[flat * itemsize : (flat + 1) * itemsize]
        out += b"\x01" if fmt == "<?" and item != b"\x00" else b"\x00" if fmt == "<?" else item
    return bytes(out)


def check_case(case: Checkpoint, path: Path, read: Callable[[Path], dict], error: type[Exception]) -> bool:
    """Write ``case`` to ``path`` and read it back: True when accepted (and right), False when refused.

    Raises AssertionError when the reader accepts something wrong; lets any exception other than
    ``error`` through, since the reader must raise nothing else.
    """
    raw = case.to_bytes()
    path.write_bytes(raw)
    try:
        state = read(path)
    except error:
        return False
    assert isinstance(state, dict), type(state)
    if case.mutated is not None:
        for name, array in state.items():
            assert type(array).__name__ == "ndarray", (name, type(array))
            # A storage's bytes are part of the file: more than the file holds came from elsewhere.
            if array.nbytes > len(raw):
                raise OutOfBounds(f"{name!r}: {array.nbytes} bytes out of a {len(raw)}-byte file")
        return True
    by_name = {t.name: t for t in case.tensors}
    written = case.storage_bytes()
    assert set(state) == set(by_name), (sorted(map(repr, state)), sorted(map(repr, by_name)))
    for name, array in state.items():
        tensor = by_name[name]
        assert isinstance(tensor.storage, Storage) and tensor.storage.key in written, f"{name!r}: no storage"
        expected = reference_bytes(tensor, written[tensor.storage.key])
        assert array.dtype.str == NUMPY_DTYPES[tensor.storage.cls], (name, array.dtype)
        assert array.shape == tuple(tensor.shape), (name, array.shape, tensor.shape)
        assert array.tobytes() == expected, f"{name!r}: values differ from the reference"
    return True


# --- Random cases: valid ones, then the same with fields broken, then byte mutations. ---

SPECIAL_INTS = (
    0,
    -1,
    -(2**31),
    -(2**63),
    2**31,
    2**32 + 1,
    2**62,
    2**63 - 1,
    2**63,
    2**64,
    2**64 + 1,
    2**200,
)
WRONG_TYPES = (True, False, 1.0, float("nan"), "1", None, (1,), [1], b"", Deep(3))


def valid_tensor(rng: random.Random, index: int) -> Tensor:
    """A tensor PyTorch could have saved: in bounds, no broadcast, possibly transposed or strided."""
    cls = rng.choice(list(STORAGE_FORMATS))
    rank = rng.choice((0, 1, 1, 2, 2, 3, 4))
    shape = [rng.choice((0, 1, 1, 2, 3, 4, 5)) for _ in range(rank)]
    if shape and rng.random() < 0.2:  # one long dimension now and then, e.g. a layer's channels
        shape[rng.randrange(rank)] = rng.randrange(6, 300)
    shape = tuple(shape)
    stride = list(contiguous_strides(shape))
    layout = rng.randrange(4)
    if layout == 1 and rank > 1:  # a transpose (a permuted contiguous layout)
        order = list(range(rank))
        rng.shuffle(order)
        stride = list(contiguous_strides(tuple(shape[i] for i in order)))
        stride = [stride[order.index(i)] for i in range(rank)]
    elif layout == 2:  # every k-th element
        k = rng.randrange(1, 4)
        stride = [s * k for s in stride]
    for i, size in enumerate(shape):  # a size-1 dimension's stride is never used: PyTorch leaves any
        if size == 1 and rng.random() < 0.3:
            stride[i] = rng.choice((0, 7, 2**40, 2**63 - 1))
    span = sum((size - 1) * s for size, s in zip(shape, stride, strict=True)) if 0 not in shape else -1
    offset = rng.randrange(4) if rng.random() < 0.7 else 0
    numel = offset + span + 1 + rng.randrange(3)
    storage = Storage(key=str(index), cls=cls, numel=numel)
    return Tensor(
        f"layer{index}.weight",
        storage,
        offset,
        shape,
        tuple(stride),
        rng.choice(("_rebuild_tensor_v2",) * 3 + ("_rebuild_tensor",)),
    )


def valid_case(rng: random.Random) -> Checkpoint:
    metadata = OrderedDictOf((("", {"version": 1}),)) if rng.random() < 0.5 else None
    return Checkpoint([valid_tensor(rng, i) for i in range(rng.randrange(5))], metadata=metadata)


def _some_int(rng: random.Random, near: int) -> Any:
    pick = rng.randrange(4)
    if pick == 0:
        return rng.choice(SPECIAL_INTS)
    if pick == 1:
        return rng.choice(WRONG_TYPES)
    return (near if type(near) is int else 0) + rng.choice((-2, -1, 1, 2, 3, 100, 2**20))


def corrupt(rng: random.Random, case: Checkpoint) -> None:
    """Break one field of ``case`` in a way a crafted file could."""
    tensors = case.tensors
    if not tensors or rng.random() < 0.15:
        how = rng.randrange(7)
        if how == 0:
            case.state = rng.choice(
                ([], 5, {1: 2}, OrderedDictOf((("w", 1.5),)), Deep(rng.choice((10, 50_000))))
            )
        elif how == 1:
            case.keys = rng.choice((None, ["missing"], "0", [0], [Deep(100)], 7))
            case.keys = case.keys if case.keys is not None else []
        elif how == 2:
            case.sys_info = rng.choice(({"little_endian": False}, [], None, 3, {}))
        elif how == 3:
            case.trailing = rng.randbytes(rng.randrange(1, 64))
        elif how == 4 and rng.random() < 0.5:
            case.memo_index = rng.choice((2**28 - 1, 2**32 - 1))
        elif how == 4:
            case.unused_storages.append(Storage(key="extra", numel=3))
        elif how == 5:
            rows = rng.choice((2, 1000, 2**20))
            case.tensors.append(Tensor("broadcast", Storage("b", numel=4), 0, (rows, 4), (0, 1)))
        else:  # many names for one storage: copies that add up to far more than the file
            storage = Storage("shared", numel=1024)
            case.tensors.extend(
                Tensor(f"alias{i}", storage, 0, (1024,), (1,)) for i in range(rng.randrange(2, 40))
            )
        return
    tensor = rng.choice(tensors)
    # A field broken earlier may have replaced the storage: break a detached one then, to no effect.
    storage = tensor.storage if isinstance(tensor.storage, Storage) else Storage("detached")
    shape, stride = list(tensor.shape), list(tensor.stride)
    how = rng.randrange(18)
    if how == 0 and shape:
        i = rng.randrange(len(shape))
        shape[i] = _some_int(rng, shape[i])
    elif how == 1 and stride:
        i = rng.randrange(len(stride))
        stride[i] = _some_int(rng, stride[i])
    elif how == 2:
        tensor.offset = _some_int(rng, tensor.offset)
    elif how == 3:  # a longer tensor than its storage
        if shape:
            i = rng.randrange(len(shape))
            shape[i] = (shape[i] if type(shape[i]) is int else 0) + rng.choice((1, 2, 1000, 2**31, 2**62))
        else:
            tensor.offset = storage.numel if isinstance(storage.numel, int) else 0
    elif how == 4:
        rank = rng.choice((9, 100, 2000))
        shape, stride = [1] * rank, [1] * rank
    elif how == 5 and stride:
        stride.pop()
    elif how == 6:
        storage.numel = _some_int(rng, storage.numel if isinstance(storage.numel, int) else 0)
    elif how == 7:
        storage.header_numel = (storage.numel if isinstance(storage.numel, int) else 0) + rng.choice(
            (-1, 1, 2**40, 2**63)
        )
    elif how == 8:
        data = storage.written()
        storage.data = data[: rng.randrange(len(data))] if data else b"\x00"
    elif how == 9:
        storage.listed = False  # referenced, never written: the storage key is missing
    elif how == 10:
        storage.cls = rng.choice(("ComplexFloatStorage", "Storage", "UntypedStorage", "cuda.FloatStorage"))
    elif how == 11:
        storage.view = rng.choice(((storage.key, 0, 1), "view", 0))
    elif how == 12:
        tensor.tail = rng.choice(((), (False,), (False, OrderedDictOf(), None, None), (Deep(1000),)))
    elif how == 13:
        tensor.storage = rng.choice((None, 0, "storage", Deep(5), OrderedDictOf()))
    elif how == 14:
        other = rng.choice(tensors).storage
        if isinstance(other, Storage):  # the same key, declared with another dtype or length
            tensor.storage = replace(
                other, cls=rng.choice(list(STORAGE_FORMATS)), numel=other.numel if rng.random() < 0.5 else 1
            )
    elif how == 16:  # rewrite what the reader handed to the pickle, after its checks
        state = rng.choice(
            ({"numel": 10**6}, ({}, {"numel": 10**6}), ({}, {"args": ()}), (1, "<f8", 5), None)
        )
        if rng.random() < 0.5:
            storage.build = state
        else:
            tensor.build = state
    elif how == 15:
        tensor.name = rng.choice((0, None, Deep(10), ("a",), "x" * 100_000))
    else:
        storage.pid_override = rng.choice(
            (
                ("storage",),
                ("tensor", Global("torch", "FloatStorage"), "0", "cpu", 1, None),
                ("storage", Global("torch", "FloatStorage"), 0, "cpu", 1, None),
                ("storage", "FloatStorage", "0", "cpu", 1, None),
                "storage",
                Deep(200),
            )
        )
    # Now and then a list where PyTorch writes a tuple.
    tensor.shape, tensor.stride = tuple(shape), (stride if rng.random() < 0.05 else tuple(stride))


# The magic number, protocol and system information: most mutations go past them, to the tensors.
HEADER_BYTES = len(pickle.dumps(MAGIC, protocol=2) + pickle.dumps(1001, protocol=2) + pickled(SYS_INFO))


def mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 9)):
        if len(data) <= HEADER_BYTES:
            break
        where = rng.randrange(len(data)) if rng.random() < 0.1 else rng.randrange(HEADER_BYTES, len(data))
        how = rng.randrange(5)
        if how == 0:
            data[where] ^= 1 << rng.randrange(8)
        elif how == 1:
            data[where] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
        elif how == 2:
            data[where : where + 8] = rng.randbytes(8)
        elif how == 3:
            del data[where : where + rng.randrange(1, 16)]
        else:
            data[where:where] = rng.randbytes(rng.randrange(1, 16))
    if rng.random() < 0.1:
        del data[rng.randrange(len(data) + 1) :]
    return bytes(data)


def random_case(rng: random.Random) -> tuple[Checkpoint, bool]:
    """One case, and whether it is valid: a third are, most of the rest have 1 to 3 broken fields,
    a fifth are byte-mutated."""
    case = valid_case(rng)
    kind = rng.randrange(15)
    if kind < 5:
        return case, True
    if kind < 12:
        for _ in range(rng.randrange(1, 4)):
            corrupt(rng, case)
        return case, False
    return Checkpoint([], mutated=mutate(rng, case.to_bytes())), False


def case_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"fuzz_pth:{seed}:{index}")


# --- The runner: chunks of cases in child processes. ---


def load_reader(path: Path = READER) -> Any:
    """The reader module, loaded from its file: importing the package would start TensorFlow
    (seconds per child process) for a module that needs only numpy."""
    spec = importlib.util.spec_from_file_location("fuzzed_torch_weights", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_chunk(reader_path: Path, seed: int, start: int, count: int) -> dict:
    reader = load_reader(reader_path)
    accepted = refused = 0
    failures = []
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as scratch:
        path = Path(scratch) / "case.pth"
        for index in range(start, start + count):
            case, must_accept = random_case(case_rng(seed, index))
            try:
                ok = check_case(case, path, reader.read_state_dict, reader.UnsafeWeightsError)
                if must_accept and not ok:
                    raise AssertionError("refused a valid case")
            except Exception as problem:  # every other outcome is a finding, reported with its case
                failures.append({"case": index, "error": f"{type(problem).__name__}: {problem}"[:500]})
                continue
            accepted += ok
            refused += not ok
    return {"accepted": accepted, "refused": refused, "failures": failures}


def replay(reader_path: Path, seed: int, index: int) -> int:
    reader = load_reader(reader_path)
    case, must_accept = random_case(case_rng(seed, index))
    print(case if case.mutated is None else f"mutated file of {len(case.mutated)} bytes")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            ok = check_case(
                case, Path(scratch) / "case.pth", reader.read_state_dict, reader.UnsafeWeightsError
            )
        except Exception:
            traceback.print_exc()
            return 1
    print("accepted" if ok else "refused", "(a valid case)" if must_accept else "")
    return 0 if ok or not must_accept else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=5000, help="cases per child process")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="child processes at a time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds a chunk may take before it counts as a hang"
    )
    parser.add_argument(
        "--reader", type=Path, default=READER, help="another copy of torch_weights.py to fuzz"
    )
    parser.add_argument("--replay", type=int, metavar="CASE", help="run one case here and show what happens")
    parser.add_argument("--worker", type=int, nargs=2, metavar=("START", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay is not None:
        return replay(args.reader, args.seed, args.replay)
    if args.worker:
        print(json.dumps(run_chunk(args.reader, args.seed, *args.worker)))
        return 0

    def chunk(start: int) -> dict:
        count = min(args.chunk, args.cases - start)
        command = [sys.executable, __file__, "--seed", str(args.seed), "--reader", str(args.reader)]
        command += ["--worker", str(start), str(count)]
        where = f"cases {start}..{start + count - 1}"
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"cases": count, "hang": f"{where}: no result after {args.timeout:.0f} s"}
        if done.returncode < 0:
            return {"cases": count, "crash": f"{where}: killed by signal {-done.returncode}"}
        if done.returncode != 0:
            return {"cases": count, "crash": f"{where}: exit status {done.returncode}: {done.stderr[-2000:]}"}
        return {"cases": count, **json.loads(done.stdout.splitlines()[-1])}

    began = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(chunk, range(0, args.cases, args.chunk)))
    wall = time.perf_counter() - began

    crashes = [r["crash"] for r in results if "crash" in r]
    hangs = [r["hang"] for r in results if "hang" in r]
    failures = [f for r in results for f in r.get("failures", [])]
    out_of_bounds = [f for f in failures if f["error"].startswith("OutOfBounds")]
    accepted = sum(r.get("accepted", 0) for r in results)
    refused = sum(r.get("refused", 0) for r in results)
    print(
        f"{args.cases} cases (seed {args.seed}) in {wall:.1f} s: {args.cases / wall:.0f} cases/s with {args.jobs} jobs"
    )
    print(f"accepted {accepted}, refused {refused}")
    print(
        f"crashes {len(crashes)}, hangs {len(hangs)}, out-of-bounds {len(out_of_bounds)}, other failures {len(failures) - len(out_of_bounds)}"
    )
    for line in crashes + hangs:
        print("  ", line)
    for failure in failures[:20]:
        print(
            f"   case {failure['case']} (--replay {failure['case']} --seed {args.seed}): {failure['error']}"
        )
    return 1 if crashes or hangs or failures else 0


if __name__ == "__main__":
    sys.exit(main())
