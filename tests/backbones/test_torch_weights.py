import pickle

import numpy as np
import pytest

from image_classifier.backbones import get_spec
from image_classifier.backbones.torch_weights import UnsafeWeightsError, read_state_dict

MOBILENET = get_spec("mobilenet_v2").wheel_weights


def test_reads_every_tensor_of_the_wheel_file():
    state = read_state_dict(MOBILENET.path(), MOBILENET.sha256)
    assert len(state) == 314
    assert state["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state["features.0.0.weight"].dtype == np.float32
    assert state["classifier.1.weight"].shape == (1000, 1280)
    assert state["features.0.1.num_batches_tracked"].dtype == np.int64
    # A real BatchNorm running variance is positive: wrong offsets would give garbage.
    assert (state["features.18.1.running_var"] > 0).all()


def test_rejects_a_wrong_checksum():
    with pytest.raises(ValueError, match="sha256"):
        read_state_dict(MOBILENET.path(), "0" * 64)


def _legacy_file(path, payload):
    with open(path, "wb") as handle:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, handle, protocol=2)
        pickle.dump(payload, handle, protocol=2)
        pickle.dump([], handle, protocol=2)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_refuses_pickles_that_would_run_code(tmp_path):
    path = tmp_path / "evil.pth"
    _legacy_file(path, {"weight": _RunsCode()})
    with pytest.raises(UnsafeWeightsError, match="system"):
        read_state_dict(path)


def test_refuses_files_in_another_format(tmp_path):
    path = tmp_path / "plain.pth"
    with open(path, "wb") as handle:
        pickle.dump({"weight": [1.0]}, handle, protocol=2)
    with pytest.raises(ValueError, match="legacy"):
        read_state_dict(path)
