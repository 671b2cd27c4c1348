import subprocess
import sys
import threading

import numpy as np
import pytest

from image_classifier.datasets import FeatureStoreDataset, feature_store


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


def test_a_truncated_shard_is_set_aside_and_its_keys_recomputed(tmp_path):
    store = FeatureStoreDataset(str(tmp_path)).load()
    kept = store.append(["a"], np.ones((1, 8), np.float32))
    broken = store.append(["b", "c"], np.ones((2, 8), np.float32))
    broken.write_bytes(broken.read_bytes()[:-40])  # a disk that lost the end of the file
    reloaded = FeatureStoreDataset(str(tmp_path)).load()
    assert "a" in reloaded and "b" not in reloaded and "c" not in reloaded
    assert kept.exists() and not broken.exists()
    assert (tmp_path / f".corrupt-{broken.name}").exists()
    reloaded.append(["b"], np.zeros((1, 8), np.float32))
    np.testing.assert_array_equal(FeatureStoreDataset(str(tmp_path)).load().get_many(["b"]), np.zeros((1, 8)))


def test_a_crash_between_write_and_rename_leaves_no_entry(tmp_path, monkeypatch):
    store = FeatureStoreDataset(str(tmp_path)).load()
    store.append(["a"], np.ones((1, 2), np.float32))

    def killed(source, target):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(feature_store.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append(["b"], np.ones((1, 2), np.float32))
    monkeypatch.undo()
    assert list(tmp_path.glob(".partial-*.npz"))  # the full temporary file is there, never renamed
    reloaded = FeatureStoreDataset(str(tmp_path)).load()
    assert len(reloaded) == 1 and "b" not in reloaded


_WRITER = """
import sys
import numpy as np
from image_classifier.datasets import FeatureStoreDataset
store = FeatureStoreDataset(sys.argv[1]).load()
for i in range(int(sys.argv[2]), int(sys.argv[3])):
    store.append([f"k{i}"], np.full((1, 64), i, np.float32))
"""


@pytest.mark.slow
def test_two_processes_writing_the_same_cache_leave_it_consistent(tmp_path):
    # Overlapping ranges: both processes compute k30..k59, as two runs on the same data would.
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), start, stop])
        for start, stop in (("0", "60"), ("30", "90"))
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    store = FeatureStoreDataset(str(tmp_path)).load()
    assert len(store) == 90 and not list(tmp_path.glob(".partial-*"))
    keys = [f"k{i}" for i in range(90)]
    np.testing.assert_array_equal(store.get_many(keys)[:, 0], np.arange(90))
