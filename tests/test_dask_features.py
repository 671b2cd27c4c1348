"""Feature caching on a real Dask cluster: the vectors of the in-process executor, and nothing lost
or corrupt when a worker process is killed with SIGKILL in the middle of a run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from conftest import free_port
from image_classifier.datasets import FeatureStoreDataset, ImageFolderDataset
from image_classifier.feature_cache import DaskExecutorError
from image_classifier.pipelines.augmentation.nodes import plan_views
from image_classifier.pipelines.features.nodes import compute_features
from image_classifier.pipelines.ingestion.nodes import class_names, index_images

pytestmark = pytest.mark.slow

AUGMENTATION = {"views": 2, "transforms": [{"name": "HorizontalFlip", "params": {"p": 1.0}}]}
TOTAL = 24 * 2 + 48  # 24 training photos in 2 views, 48 validation and test photos
# Small shards: many tasks, so that a worker is killed with work still queued.
SHARD = 4


@pytest.fixture(scope="module")
def inputs(tiny_demo):
    raw = ImageFolderDataset(str(tiny_demo)).load()
    index, _ = index_images(raw, {"validation": 0.1, "test": 0.1}, {}, seed=0)
    return raw, index, plan_views(index, AUGMENTATION), class_names(index)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


def _run(inputs, store: Path, weights: Path, **features) -> tuple[dict, dict, dict, dict]:
    raw, index, plan, names = inputs
    return compute_features(
        plan,
        index,
        raw,
        {},
        FeatureStoreDataset(str(store)).load(),
        names,
        {"name": "mobilenet_v2", "input_size": 64, "cache_dir": str(weights)},
        {"batch_size": 2, "shard_size": SHARD, **features},
        AUGMENTATION,
        2,
        42,
    )


@pytest.fixture(scope="module")
def local(inputs, weights, tmp_path_factory) -> tuple[tuple, dict[str, np.ndarray]]:
    """What the in-process executor returns and stores: the reference."""
    store = tmp_path_factory.mktemp("local_store")
    return _run(inputs, store, weights), _stored(store)


def _stored(store: Path) -> dict[str, np.ndarray]:
    """Every shard's vectors by key, after checking that each shard reads back whole."""
    assert not list(store.glob(".corrupt-*")), "a shard was unreadable"
    vectors: dict[str, np.ndarray] = {}
    for shard in store.glob("shard-*.npz"):
        with np.load(shard) as contents:
            assert len(contents["keys"]) == len(contents["features"])
            vectors.update(zip(contents["keys"].tolist(), contents["features"], strict=True))
    return vectors


def _assert_same_as_local(result, store: Path, local) -> None:
    """The same feature sets returned, and the same keys and vectors stored."""
    local_result, local_stored = local
    for split in range(3):
        assert result[split]["paths"] == local_result[split]["paths"]
        np.testing.assert_allclose(
            result[split]["features"], local_result[split]["features"], rtol=0, atol=1e-6
        )
    stored = _stored(store)
    assert set(stored) == set(local_stored)
    for key, vector in stored.items():
        np.testing.assert_allclose(vector, local_stored[key], rtol=0, atol=1e-6)


def _kill_a_worker_once_a_shard_is_stored(
    store: Path, workers: Callable[[], list[psutil.Process]]
) -> tuple[threading.Thread, list[int]]:
    """In the background: wait for the first shard, then SIGKILL a worker process while the
    others still have shards queued. Appends to the list returned how many shards were stored
    when it killed."""
    killed: list[int] = []

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not list(store.glob("shard-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.005)
        workers()[0].send_signal(signal.SIGKILL)
        killed.append(len(list(store.glob("shard-*.npz"))))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread, killed


def _spawned_children(parent: psutil.Process) -> list[psutil.Process]:
    # Dask's nanny starts each worker with multiprocessing's spawn.
    return [child for child in parent.children(recursive=True) if "spawn_main" in " ".join(child.cmdline())]


def test_a_local_cluster_stores_the_local_vectors_even_when_a_worker_is_killed(
    inputs, weights, local, tmp_path
):
    store = tmp_path / "store"
    watcher, killed = _kill_a_worker_once_a_shard_is_stored(
        store, lambda: _spawned_children(psutil.Process())
    )
    result = _run(inputs, store, weights, executor="dask", dask_workers=2)
    watcher.join(timeout=5)
    assert killed and killed[0] < TOTAL // SHARD, f"no worker killed mid-run: {killed}"
    metrics = result[3]
    # Dask gave the killed worker's shard to another worker (or to its restarted self). How many
    # workers reported shards is not fixed: the one killed may have written its shard and died
    # before reporting it, and the survivor may then take every shard left.
    assert metrics["features.computed"]["value"] == TOTAL
    assert metrics["diagnostics/features.dask_workers"]["value"] >= 1
    _assert_same_as_local(result, store, local)


@pytest.fixture
def dask_cli_cluster(tmp_path) -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """A scheduler and two workers started with the README's commands, from a folder of their own:
    every path a worker gets must be absolute. A task running on a killed worker fails at once
    (allowed-failures 0) instead of being retried, so that the driver's run fails."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    log = (tmp_path / "dask.log").open("w")
    commands = [[dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]]
    commands += [[dask, "worker", address, "--nthreads", "1", "--name", f"worker-{i}"] for i in range(2)]
    processes: list[subprocess.Popen] = []
    try:
        for command in commands:
            processes.append(
                subprocess.Popen(
                    [*command, "--no-dashboard"],
                    cwd=tmp_path,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, processes
    finally:
        for process in reversed(processes):
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def _wait_until_idle(address: str) -> None:
    """Shards that workers had started go on after the driver gave up: wait for them."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
                return
            time.sleep(0.2)
    raise TimeoutError("the Dask workers are still busy after 60 s")


def test_a_failed_shard_keeps_the_stored_ones_and_the_rerun_computes_only_the_rest(
    inputs, weights, local, tmp_path, dask_cli_cluster
):
    address, processes = dask_cli_cluster
    store = tmp_path / "store"
    nanny = psutil.Process(processes[1].pid)
    watcher, killed = _kill_a_worker_once_a_shard_is_stored(store, lambda: _spawned_children(nanny))
    with pytest.raises(DaskExecutorError, match="KilledWorker.*run again to compute only the rest"):
        _run(inputs, store, weights, executor="dask", dask_address=address)
    watcher.join(timeout=5)
    assert killed and killed[0] < TOTAL // SHARD, f"no worker killed mid-run: {killed}"
    _wait_until_idle(address)
    kept = _stored(store)
    assert 0 < len(kept) < TOTAL

    result = _run(inputs, store, weights, executor="dask", dask_address=address)
    metrics = result[3]
    assert metrics["features.reused"]["value"] == len(kept)
    assert metrics["features.computed"]["value"] == TOTAL - len(kept)
    _assert_same_as_local(result, store, local)
    # The killed worker's unfinished shard, if it was writing one, was removed on opening.
    assert not list(store.glob(".partial-*"))


def test_an_unreachable_scheduler_is_named_in_the_error(inputs, weights, tmp_path):
    import dask

    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(DaskExecutorError, match=f"features.dask_address: cannot reach .*{address}"),
    ):
        _run(inputs, tmp_path / "store", weights, executor="dask", dask_address=address)
