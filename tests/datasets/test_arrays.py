import os

import numpy as np
import pytest
from kedro.io import DatasetError

from image_classifier.datasets import ArraysDataset


def test_features_round_trip_with_their_types(tmp_path):
    dataset = ArraysDataset(str(tmp_path / "train_features.npz"))
    saved = {
        "features": np.arange(6, dtype=np.float32).reshape(2, 3),
        "labels": np.array([0, 1], np.int64),
        "paths": ["train/cat/a.png", "train/dog/b.png"],
    }
    dataset.save(saved)
    loaded = dataset.load()
    np.testing.assert_array_equal(loaded["features"], saved["features"])
    assert loaded["features"].dtype == np.float32 and loaded["labels"].dtype == np.int64
    assert loaded["paths"] == saved["paths"]
    assert [p.name for p in tmp_path.iterdir()] == ["train_features.npz"]  # no partial file left


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_file_asking_to_unpickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    """Under pickle.PickleDataset, loading this file ran a shell command."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "train_features.npz"
    np.savez(path, features=np.array([_Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="holds pickled objects, which are never loaded"):
        ArraysDataset(str(path)).load()
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(DatasetError, match=r"\['features'\] hold Python objects"):
        ArraysDataset(str(tmp_path / "other.npz")).save({"features": np.array([object()], dtype=object)})
