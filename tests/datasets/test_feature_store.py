import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from image_classifier.datasets import FeatureStoreDataset
from image_classifier.datasets.atomic import written_aside


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


def test_partial_files_of_dead_writers_are_removed_and_a_live_writers_kept(tmp_path):
    store = FeatureStoreDataset(str(tmp_path)).load()
    store.append(["a"], np.ones((1, 2), np.float32))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    abandoned = tmp_path / f".partial-{dead.stdout.strip()}-0f0f.npz"
    older_format = tmp_path / ".partial-deadbeef.npz"  # from before partial names carried a pid
    in_flight = tmp_path / f".partial-{os.getpid()}-1e1e.npz"
    for path in (abandoned, older_format, in_flight):
        path.write_bytes(b"PK\x03\x04" + bytes(4096))
    assert len(FeatureStoreDataset(str(tmp_path)).load()) == 1
    assert not abandoned.exists() and not older_format.exists() and in_flight.exists()


def test_partial_files_from_other_hosts_are_kept_until_a_day_old(tmp_path):
    """On shared storage a Dask worker on another machine may be writing: its pid means nothing
    here, so only its age can say that it was abandoned."""
    with written_aside(tmp_path / "shard-x.npz") as own:
        assert re.fullmatch(r"\.partial-\d+\.[0-9a-f]{8}-shard-x\.npz", own.name)
        host = own.name.split(".")[2].split("-")[0]
        own.write_bytes(b"")
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    recent = tmp_path / f".partial-1.{other_host}-shard-a.npz"  # pid 1 exists here: irrelevant
    stale = tmp_path / f".partial-{os.getpid()}.{other_host}-shard-b.npz"
    for path in (recent, stale):
        path.write_bytes(b"PK\x03\x04")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    FeatureStoreDataset(str(tmp_path)).load()
    assert recent.exists() and not stale.exists()


@pytest.fixture
def full_disk(tmp_path):
    """A real 64 KiB file system that fills up, where this machine lets us mount one (CI runs as
    root); elsewhere a file-size limit, which fails the same write with a real EFBIG instead."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode == 0:
        yield mount, None
        subprocess.run(["umount", str(mount)], check=True)
    else:
        print("tmpfs mount not permitted here: using RLIMIT_FSIZE for the failing write")
        yield mount, 65536


_FILL = """
import resource, signal, sys
import numpy as np
from image_classifier.datasets import FeatureStoreDataset
if sys.argv[2] != "None":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]),) * 2)
store = FeatureStoreDataset(sys.argv[1]).load()
store.append(["small"], np.ones((1, 8), np.float32))
store.append([f"k{i}" for i in range(64)], np.ones((64, 1280), np.float32))  # 320 KiB
"""


def test_a_full_disk_is_one_clear_error_and_leaves_no_partial_file(full_disk):
    root, limit = full_disk
    result = subprocess.run(
        [sys.executable, "-c", _FILL, str(root / "store"), str(limit)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "FeatureCacheError: cannot write the feature cache in " + str(root / "store") in result.stderr
    assert "Free space there" in result.stderr
    assert sorted(p.name for p in (root / "store").iterdir() if p.name.startswith(".partial")) == []
    assert len(FeatureStoreDataset(str(root / "store")).load()) == 1  # what was cached survives


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


_KILLED_BEFORE_RENAME = """
import os, signal, sys
import numpy as np
from image_classifier.datasets import FeatureStoreDataset
store = FeatureStoreDataset(sys.argv[1]).load()
store.append(["a"], np.ones((1, 2), np.float32))
os.replace = lambda source, target: os.kill(os.getpid(), signal.SIGKILL)  # the kill lands here
store.append(["b"], np.ones((1, 2), np.float32))
"""


def test_a_process_killed_between_write_and_rename_leaves_no_entry_and_its_partial_is_removed(tmp_path):
    killed = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_RENAME, str(tmp_path)])
    assert killed.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".partial-*.npz"))  # the whole new shard, never renamed
    reloaded = FeatureStoreDataset(str(tmp_path)).load()
    assert len(reloaded) == 1 and "b" not in reloaded
    assert not list(tmp_path.glob(".partial-*"))  # its writer is dead: removed on open


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
