"""Crafted legacy ``.pth`` files, using only the globals the reader allows: it returns copies of the
storage's own bytes or raises ``UnsafeWeightsError``, never anything else.

The file builder, the case generator and the pure-Python reference live in
``benchmarks/fuzz_pth.py``, which runs the same cases by the hundred thousand.
"""

import importlib.util
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_classifier.backbones.torch_weights import MAX_RANK, UnsafeWeightsError, read_state_dict

FUZZ_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_pth.py"


def _import_fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_pth", FUZZ_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fuzz = _import_fuzz()
Checkpoint, Storage, Tensor = fuzz.Checkpoint, fuzz.Storage, fuzz.Tensor

# One file path per test, rewritten by every example.
EXAMPLES = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check(case, tmp_path):
    return fuzz.check_case(case, tmp_path / "case.pth", read_state_dict, UnsafeWeightsError)


@EXAMPLES
@given(st.randoms(use_true_random=False))
def test_crafted_files_give_the_storage_bytes_or_unsafe_weights_error(tmp_path, rng):
    case, valid = fuzz.random_case(rng)
    accepted = _check(case, tmp_path)
    assert accepted or not valid, "refused a file PyTorch could have written"


_INTS = st.one_of(st.integers(0, 6), st.integers(-3, 70), st.sampled_from(fuzz.SPECIAL_INTS))


def _valid_geometry(offset, shape, stride, numel):
    """By enumeration, not by the reader's formula: whether PyTorch could have saved this view."""
    if len(shape) > MAX_RANK or len(shape) != len(stride):
        return False
    if not all(0 <= v < 2**63 for v in (offset, *shape, *stride)):
        return False
    if math.prod(shape) == 0:
        return offset <= numel and math.prod(n for n in shape if n) <= 1 << 30
    if math.prod(shape) > numel or any(n > 1 and s == 0 for n, s in zip(shape, stride, strict=True)):
        return False
    return all(
        offset + sum(i * s for i, s in zip(index, stride, strict=True)) < numel
        for index in itertools.product(*(range(n) for n in shape))
    )


@st.composite
def _geometry(draw):
    rank = draw(st.integers(0, MAX_RANK + 1))
    shape = draw(st.lists(_INTS, min_size=rank, max_size=rank))
    return draw(_INTS), shape, draw(st.lists(_INTS, min_size=rank, max_size=rank))


@EXAMPLES
@given(geometry=_geometry(), numel=st.integers(0, 64), cls=st.sampled_from(sorted(fuzz.STORAGE_FORMATS)))
def test_any_geometry_is_read_exactly_when_it_lies_in_the_storage(tmp_path, geometry, numel, cls):
    offset, shape, stride = geometry
    case = Checkpoint([Tensor("w", Storage("0", cls, numel), offset, tuple(shape), tuple(stride))])
    assert _check(case, tmp_path) == _valid_geometry(offset, shape, stride, numel)


def _refused(tmp_path, case, match):
    path = tmp_path / "crafted.pth"
    path.write_bytes(case.to_bytes())
    with pytest.raises(UnsafeWeightsError, match=match) as refusal:
        read_state_dict(path)
    assert str(refusal.value).startswith(f"{path}: "), "the message names the file"
    return str(refusal.value)


def _one(offset, shape, stride, numel=4, cls="FloatStorage", name="features.0.weight"):
    return Checkpoint([Tensor(name, Storage("0", cls, numel), offset, shape, stride)])


# Each of these read bytes outside the storage (or crashed) before the reader checked geometry.
@pytest.mark.parametrize(
    ("offset", "shape", "stride", "match"),
    [
        pytest.param(
            0,
            (65536,),
            (1,),
            r"'features\.0\.weight': shape \(65536,\) has 65536 elements, its storage only 4",
            id="shape-larger-than-storage",
        ),
        pytest.param(
            0,
            (2,),
            (2**40,),
            r"'features\.0\.weight': .* reach element 1099511627776 of a storage of 4",
            id="huge-stride",
        ),
        pytest.param(
            0, (4, 4), (0, 1), r"'features\.0\.weight': stride 0 on dimension 0 .*broadcast", id="stride-0"
        ),
        pytest.param(
            0,
            (2**16, 2**16),
            (0, 0),
            r"'features\.0\.weight': shape .* spans more elements",
            id="stride-0-huge",
        ),
        pytest.param(
            -(2**20),
            (4,),
            (1,),
            r"'features\.0\.weight': storage offset -1048576 is outside",
            id="negative-offset",
        ),
        pytest.param(
            4,
            (1,),
            (1,),
            r"'features\.0\.weight': .* reach element 4 of a storage of 4",
            id="offset-past-end",
        ),
        pytest.param(
            5,
            (0,),
            (1,),
            r"'features\.0\.weight': storage offset 5 is past the end",
            id="empty-offset-past-end",
        ),
        pytest.param(
            2**64, (1,), (1,), r"storage offset 18446744073709551616 is outside", id="offset-beyond-int64"
        ),
        pytest.param(
            0,
            (2**62, 2**62),
            (1, 1),
            r"'features\.0\.weight': shape .* spans more elements",
            id="size-times-itemsize-overflow",
        ),
        pytest.param(
            0,
            (0, 2**62),
            (1, 1),
            r"'features\.0\.weight': shape .* spans more elements",
            id="empty-with-huge-size",
        ),
        pytest.param(0, (-1,), (1,), r"'features\.0\.weight': size -1 is outside", id="negative-size"),
        pytest.param(3, (2,), (-1,), r"'features\.0\.weight': stride -1 is outside", id="negative-stride"),
        pytest.param(0, (1,) * 100, (1,) * 100, r"'features\.0\.weight': rank 100 is above 8", id="rank-100"),
        pytest.param(0, (2, 2), (1,), r"2 sizes but 1 strides", id="rank-mismatch"),
        pytest.param(0, (True,), (1,), r"size True is not an int", id="bool-size"),
        pytest.param(0.0, (1,), (1,), r"storage offset 0\.0 is not an int", id="float-offset"),
        pytest.param(0, [4], [1], r"are not both tuples", id="list-shape"),
        pytest.param(0, fuzz.Deep(20_000), (1,), r"size a tuple is not an int", id="deeply-nested-shape"),
    ],
)
def test_a_view_outside_its_storage_is_refused_naming_file_and_tensor(tmp_path, offset, shape, stride, match):
    _refused(tmp_path, _one(offset, shape, stride), match)


def test_a_missing_storage_key_is_refused(tmp_path):
    case = _one(0, (4,), (1,))
    case.tensors[0].storage.listed = False
    _refused(tmp_path, case, r"'features\.0\.weight': its storage '0' is not in the file")


def test_a_storage_larger_than_the_file_is_refused_before_it_is_read(tmp_path):
    """The legacy format's zip bomb: a storage header claiming terabytes."""
    case = _one(0, (4,), (1,), numel=2**40)
    case.tensors[0].storage.data = bytes(16)
    _refused(tmp_path, case, r"storage '0' is truncated: 4398046511104 bytes declared, 16 left")


def test_a_storage_whose_header_disagrees_with_its_pickle_is_refused(tmp_path):
    case = _one(0, (4,), (1,))
    case.tensors[0].storage.header_numel = 5
    _refused(tmp_path, case, r"storage '0' holds 5 items, expected 4")


def test_a_storage_declared_with_two_dtypes_is_refused(tmp_path):
    storage = Storage("0", "FloatStorage", 4)
    case = Checkpoint(
        [Tensor("a", storage, 0, (4,), (1,)), Tensor("b", Storage("0", "DoubleStorage", 4), 0, (4,), (1,))]
    )
    _refused(tmp_path, case, r"storage '0' is declared as 4 × float32 and as 4 × float64")


def test_many_names_over_one_storage_are_refused_before_they_are_copied(tmp_path):
    storage = Storage("0", numel=1024)
    case = Checkpoint([Tensor(f"alias{i}", storage, 0, (1024,), (1,)) for i in range(3)])
    _refused(tmp_path, case, r"'alias2': the tensors add up to more than 2×")


def test_an_unknown_storage_type_is_refused(tmp_path):
    _refused(
        tmp_path,
        _one(0, (1,), (1,), cls="ComplexFloatStorage"),
        r"refusing to load global torch\.ComplexFloatStorage",
    )


def test_a_wrong_number_of_rebuild_arguments_is_refused(tmp_path):
    case = _one(0, (4,), (1,))
    case.tensors[0].tail = (False,)
    _refused(tmp_path, case, r"'features\.0\.weight': _rebuild_tensor got 5 arguments")


def test_a_zip_format_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "new_format.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    with pytest.raises(UnsafeWeightsError, match="zip-format"):
        read_state_dict(path)


@pytest.mark.parametrize("target", ["storage", "tensor"])
def test_a_pickle_cannot_rewrite_the_readers_objects(tmp_path, target):
    """BUILD on a storage would change its length after its pid was checked."""
    case = _one(0, (4,), (1,))
    owner = case.tensors[0] if target == "tensor" else case.tensors[0].storage
    owner.build = ({}, {"numel": 10**6})
    _refused(tmp_path, case, "set the state of a storage or tensor")


def test_zero_strides_of_size_1_dimensions_are_read(tmp_path):
    """PyTorch leaves any stride on a size-1 dimension, 0 or huge: never used, so not a broadcast."""
    case = _one(1, (1, 3, 1), (0, 1, 2**63 - 1))
    assert _check(case, tmp_path)
    expected = np.frombuffer(case.tensors[0].storage.written(), "<f4")[1:4].reshape(1, 3, 1)
    np.testing.assert_array_equal(read_state_dict(tmp_path / "case.pth")["features.0.weight"], expected)


def test_transposed_and_strided_views_are_copied_in_order(tmp_path):
    case = Checkpoint(
        [
            Tensor("t", Storage("0", "LongStorage", 6), 0, (3, 2), (1, 3)),  # a transpose
            Tensor("s", Storage("1", "HalfStorage", 9), 0, (2, 2), (6, 2)),  # every other element
            Tensor("b", Storage("2", "BoolStorage", 3), 0, (3,), (1,)),  # bytes 0, 1, 2
            Tensor("n", Storage("3", "IntStorage", 2), 1, (), ()),  # a scalar, e.g. num_batches_tracked
        ]
    )
    assert _check(case, tmp_path)
    state = read_state_dict(tmp_path / "case.pth")
    t = np.frombuffer(case.tensors[0].storage.written(), "<i8")
    np.testing.assert_array_equal(state["t"], t.reshape(2, 3).T)
    assert state["t"].flags.c_contiguous and state["t"].flags.writeable
    np.testing.assert_array_equal(state["b"], [False, True, True])
    assert state["n"].shape == () and isinstance(state["n"], np.ndarray)


def test_a_huge_memo_index_costs_no_memory():
    """The C unpickler sizes its memo by the largest LONG_BINPUT index: 4 GiB for a few bytes."""
    code = f"""
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {str(FUZZ_SCRIPT.parent)!r})
import fuzz_pth as f
reader = f.load_reader()
case = f.Checkpoint([f.Tensor("w", f.Storage("0", numel=4), 0, (4,), (1,))])
case.memo_index = 0x0FFFFFFF
path = Path(tempfile.mkdtemp()) / "memo.pth"
path.write_bytes(case.to_bytes())
# VmHWM, not ru_maxrss: the latter starts at the pytest parent's peak, carried over the exec.
hwm = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
before = hwm()
assert reader.read_state_dict(path)["w"].shape == (4,)
print((hwm() - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 100, f"reading grew the process by {done.stdout.strip()} MiB"
