"""Computing the feature vectors that the store lacks: in this process, or shard by shard on the
workers of a Dask cluster (``features.executor``).

Both paths push the same batches through the same engine and write the same shards, so the
vectors do not depend on where they were computed. On Dask, each task is one shard of up to
``features.shard_size`` items: its worker loads the images, runs the engine (loaded once per
worker process), writes the shard to the store and returns only its keys. A worker killed
mid-task leaves at most a partial file, which the store ignores and later removes; the shards
written before stay, and a rerun computes only what is still missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from image_classifier import engines
from image_classifier.backbones import weights_identity
from image_classifier.config import BackboneParams, FeaturesParams, IngestionParams
from image_classifier.datasets import FeatureStore, ImageFolder
from image_classifier.datasets.feature_store import write_shard
from image_classifier.errors import ProjectError
from image_classifier.progress import image_bar

logger = logging.getLogger(__name__)

_STORED_DTYPE = {"fp32": np.float32, "fp16": np.float16}

# (path, sha256, view, key) of one vector to compute.
Item = tuple[str, str, int, str]

# Part of every key: bump it when decoding or resizing changes the pixels the backbone sees, so
# that vectors of the old pixels are not served as if they were the new ones.
# 2: JPEGs at least four times the input size a side are decoded at a reduced scale (images.py).
PIXELS_VERSION = "pil-draft-bilinear-aa-2"


def cache_key(sha256: str, view: int, context: str, augmentation_hash: str, seed: int) -> str:
    """Everything that changes a feature vector, hashed. View 0 ignores the augmentation config
    and the seed, which draws each augmented view's transforms (``augment.view_seed``)."""
    augmentation = f"{augmentation_hash}|seed-{seed}" if view > 0 else "-"
    return hashlib.sha256(f"{context}|{sha256}|{view}|{augmentation}".encode()).hexdigest()


def backbone_context(backbone: BackboneParams, features: FeaturesParams, centre_crop: float = 1.0) -> str:
    """The part of a key that the backbone, the engine and the pixels fed to it decide."""
    weights = weights_identity(backbone.name, backbone.weights)
    # Compute precision joins the key only when it is not fp32, so fp32 caches keep their keys;
    # the same for the centre crop, which only the audit asks for.
    precision = f"|{features.precision}" if features.precision != "fp32" else ""
    crop = f"|centre-{centre_crop:g}" if centre_crop != 1.0 else ""
    return (
        f"{backbone.name}|{weights}|{backbone.input_size}|{engines.resolve(features.engine)}"
        f"|{features.storage}{precision}|{PIXELS_VERSION}{crop}"
    )


class DaskExecutorError(ProjectError):
    """The Dask cluster cannot be reached, or a shard failed on it."""


@dataclass(frozen=True)
class ShardWork:
    """Everything a worker needs to compute vectors, with absolute paths: a worker may run in
    another folder, or on another machine that mounts the same storage."""

    raw_root: Path
    store_root: Path
    limits: IngestionParams
    backbone: BackboneParams
    features: FeaturesParams
    transforms: tuple[dict[str, Any], ...]
    seed: int
    loader_threads: int
    # The share of each side kept, around the centre, before the resize (1: the whole photo).
    centre_crop: float = 1.0

    @classmethod
    def of(
        cls,
        raw: ImageFolder,
        store: FeatureStore,
        limits: IngestionParams,
        backbone: BackboneParams,
        features: FeaturesParams,
        transforms: tuple[dict[str, Any], ...],
        seed: int,
        loader_threads: int,
        centre_crop: float = 1.0,
    ) -> ShardWork:
        weights = str(Path(backbone.weights).resolve()) if backbone.weights else None
        absolute = backbone.model_copy(
            update={"cache_dir": str(Path(backbone.cache_dir).resolve()), "weights": weights}
        )
        return cls(
            raw.root.resolve(),
            store.root.resolve(),
            limits,
            absolute,
            features,
            transforms,
            seed,
            loader_threads,
            centre_crop,
        )


def _batches(
    work: ShardWork, engine: engines.Engine, items: list[Item]
) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(keys, vectors)`` a batch at a time, images loaded by threads a few batches ahead."""
    # Keras here, not at the top: Kedro imports every node module at start-up.
    from image_classifier.loading import ViewLoader, iter_batches

    loader = ViewLoader(
        ImageFolder(work.raw_root, ()),
        work.limits,
        work.backbone.input_size,
        work.transforms,
        work.seed,
        work.centre_crop,
    )
    size, dtype = work.features.batch_size, _STORED_DTYPE[work.features.storage]
    loaded = iter_batches([item[:3] for item in items], loader, size, work.loader_threads)
    for offset, vectors in zip(range(0, len(items), size), engine.map(loaded), strict=True):
        yield [item[3] for item in items[offset : offset + len(vectors)]], vectors.astype(dtype)


def _description(work: ShardWork) -> str:
    backbone = work.backbone
    what = "features" if work.centre_crop == 1.0 else f"centres ({work.centre_crop:g} of each side)"
    return f"{what} [{backbone.name}@{backbone.input_size}, {engines.resolve(work.features.engine)}]"


def compute_here(work: ShardWork, items: list[Item], store: FeatureStore) -> None:
    """Compute ``items`` in this process, storing a shard every ``shard_size`` vectors."""
    engine = engines.backbone_forward(work.backbone, work.features)
    keys: list[str] = []
    vectors: list[np.ndarray] = []
    with image_bar(len(items), _description(work)) as bar:
        for batch_keys, batch_vectors in _batches(work, engine, items):
            keys += batch_keys
            vectors.append(batch_vectors)
            if len(keys) >= work.features.shard_size:
                store.append(keys, np.concatenate(vectors))
                keys, vectors = [], []
            bar.update(len(batch_keys))
    if keys:
        store.append(keys, np.concatenate(vectors))


def compute_missing(
    wanted: pd.DataFrame, store: FeatureStore, work: ShardWork, what: str
) -> tuple[int, int, int]:
    """Compute and store the vectors of ``wanted`` (columns path, sha256, view, key) that
    ``store`` lacks, here or on Dask as ``work.features.executor`` says. Returns how many were
    served from the store, how many computed, and how many Dask workers computed them."""
    stored = wanted["key"].map(store.__contains__)
    missing = wanted.loc[~stored].drop_duplicates("key")
    reused = wanted.loc[stored, "key"].nunique()
    logger.info(
        "%s: %d unique vectors needed, %d served from cache, %d to compute",
        what,
        reused + len(missing),
        reused,
        len(missing),
    )
    if not len(missing):
        return reused, 0, 0
    todo = list(
        zip(missing["path"], missing["sha256"], missing["view"].astype(int), missing["key"], strict=True)
    )
    start = time.perf_counter()
    workers_used = 0
    if work.features.executor == "dask":
        workers_used = compute_on_dask(work, todo, store)
    else:
        compute_here(work, todo, store)
    elapsed = time.perf_counter() - start
    logger.info("%s: computed %d in %.1f s (%.1f images/s)", what, len(todo), elapsed, len(todo) / elapsed)
    return reused, len(todo), workers_used


# One engine per worker process and configuration, loaded by its first shard and kept for the rest.
_ENGINES: dict[str, engines.Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(work: ShardWork) -> engines.Engine:
    """The engine of this worker process for ``work``'s configuration, loaded on first use."""
    identity = json.dumps([work.backbone.model_dump(), work.features.model_dump()], sort_keys=True)
    with _ENGINES_LOCK:
        if identity not in _ENGINES:
            _ENGINES[identity] = engines.backbone_forward(work.backbone, work.features)
        return _ENGINES[identity]


def _load_engine(work: ShardWork) -> None:
    _engine(work)


def compute_shard(work: ShardWork, items: list[Item]) -> tuple[str, list[str], str]:
    """A Dask task: compute ``items`` and write them as one shard. Returns the shard's file name,
    its keys and who computed it (host:pid)."""
    batches = list(_batches(work, _engine(work), items))
    keys = [key for batch_keys, _ in batches for key in batch_keys]
    shard = write_shard(work.store_root, keys, np.concatenate([vectors for _, vectors in batches]))
    return shard.name, keys, f"{socket.gethostname()}:{os.getpid()}"


def compute_on_dask(work: ShardWork, items: list[Item], store: FeatureStore) -> int:
    """Compute ``items`` as shards on the Dask cluster at ``features.dask_address`` (or on a
    LocalCluster); returns how many worker processes computed shards."""
    from distributed import as_completed

    size = work.features.shard_size
    shards = [items[start : start + size] for start in range(0, len(items), size)]
    workers_used: set[str] = set()
    with _dask_client(work.features) as (client, engine_settings):
        engines.prepare(work.backbone, work.features)
        if engine_settings:
            work = replace(work, features=work.features.model_copy(update=engine_settings))
        # Every worker loads its engine before the first shard is handed out; otherwise the first
        # worker ready takes most of the shards while the others are still loading.
        client.run(_load_engine, work, on_error="ignore")
        futures = [client.submit(compute_shard, work, shard, pure=False) for shard in shards]
        with image_bar(len(items), f"{_description(work)} on Dask") as bar:
            try:
                for future in as_completed(futures):
                    name, keys, worker = future.result()
                    store.adopt(work.store_root / name, keys)
                    workers_used.add(worker)
                    bar.update(len(keys))
            except Exception as error:
                client.cancel(futures)
                if isinstance(error, ProjectError):  # already says what to do (a full disk, ...)
                    raise
                raise DaskExecutorError(
                    f"a feature shard failed on the Dask cluster ({type(error).__name__}: {error}). "
                    f"The {len(store)} vectors already in {work.store_root} are kept; run again "
                    "to compute only the rest."
                ) from error
    logger.info("Features: %d shards computed by %d Dask workers", len(shards), len(workers_used))
    return len(workers_used)


@contextmanager
def _dask_client(features: FeaturesParams) -> Iterator[tuple[Any, dict[str, int]]]:
    """A client of the cluster at ``dask_address``, or of a LocalCluster started (and stopped)
    here; yielded with the engine settings each worker should use instead of the run's."""
    from distributed import Client, LocalCluster

    address = features.dask_address
    if address:
        try:
            # Waits distributed.comm.timeouts.connect (Dask's config; 30 s unless set).
            client = Client(address)
        except OSError as error:
            raise DaskExecutorError(
                f"features.dask_address: cannot reach a Dask scheduler at {address} ({error}). Start "
                "one (`dask scheduler`, then `dask worker <address>` on each machine), or leave "
                "features.dask_address empty for a LocalCluster on this machine."
            ) from None
        with client:
            yield client, {}
        return
    started = time.perf_counter()
    # One thread a worker: a worker computes one shard at a time, and its engine has the threads.
    # Left to themselves, the engines of all the workers would each take every core.
    with (
        LocalCluster(
            n_workers=features.dask_workers,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        logger.info(
            "Started a Dask LocalCluster of %d workers in %.1f s",
            features.dask_workers,
            time.perf_counter() - started,
        )
        # The workers share this machine's cores: one stream each, on its share of the cores.
        threads = features.engine_threads or max(1, engines.cores() // features.dask_workers)
        yield client, {"engine_threads": threads, "engine_streams": features.engine_streams or 1}
