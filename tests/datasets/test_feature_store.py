import threading

import numpy as np
import pytest

from image_classifier.datasets import FeatureStoreDataset


def test_appended_vectors_survive_a_reload(tmp_path):
    store = FeatureStoreDataset(str(tmp_path)).load()
    store.append(["a", "b"], np.array([[1, 2], [3, 4]], np.float32))
    store.append(["c"], np.array([[5, 6]], np.float32))
    reloaded = FeatureStoreDataset(str(tmp_path)).load()
    assert len(reloaded) == 3 and "b" in reloaded and "z" not in reloaded
    np.testing.assert_array_equal(reloaded.get_many(["c", "a"]), [[5, 6], [1, 2]])


def test_a_half_written_shard_is_invisible(tmp_path):
    store = FeatureStoreDataset(str(tmp_path)).load()
    store.append(["a"], np.ones((1, 2), np.float32))
    # What a run killed mid-write leaves behind: a partial file under its temporary name.
    (tmp_path / ".partial-deadbeef.npz").write_bytes(b"PK\x03\x04 truncated")
    reloaded = FeatureStoreDataset(str(tmp_path)).load()
    assert len(reloaded) == 1


def test_concurrent_writers_do_not_corrupt_each_other(tmp_path):
    def writer(offset):
        store = FeatureStoreDataset(str(tmp_path)).load()
        for i in range(20):
            key = f"k{offset + i}"
            store.append([key], np.full((1, 4), offset + i, np.float32))

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = FeatureStoreDataset(str(tmp_path)).load()
    assert len(store) == 40
    np.testing.assert_array_equal(store.get_many(["k119", "k0"])[:, 0], [119, 0])


def test_mismatched_append_is_refused(tmp_path):
    with pytest.raises(ValueError, match="2 keys for 1 vectors"):
        FeatureStoreDataset(str(tmp_path)).load().append(["a", "b"], np.ones((1, 2)))
