"""A content-addressed, append-only store of feature vectors in sharded ``.npz`` files.

Each shard is written under a temporary name and renamed into place, so a reader sees a whole
shard or none of it: a run killed mid-write loses only the batch in flight, and two runs
writing at once each add their own shards. A key computed twice is stored twice, with the
same value, which is harmless. A write that fails (a full disk) removes its partial file, and
partial files left by killed processes are removed when the store is next opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from kedro.io import AbstractDataset, DatasetError

from image_classifier.datasets.atomic import remove_abandoned, written_aside
from image_classifier.errors import ProjectError

_SHARD_GLOB = "shard-*.npz"

logger = logging.getLogger(__name__)


class FeatureCacheError(ProjectError):
    """The feature cache cannot be written (most often: the disk is full)."""


class FeatureStore:
    """Lookup and append of ``key → vector`` under ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self._where: dict[str, tuple[Path, int]] = {}
        remove_abandoned(root)
        for shard in sorted(root.glob(_SHARD_GLOB)):
            keys = self._readable_keys(shard)
            for row, key in enumerate(keys):
                self._where.setdefault(key, (shard, row))

    @staticmethod
    def _readable_keys(shard: Path) -> list[str]:
        """A shard's keys, or none if any part of it fails to read back whole.

        Renames never leave a half shard, but a disk can: such a shard is set aside (not deleted:
        it is derived data, but someone may want to look) and its vectors are simply recomputed.
        """
        try:
            # Reading every member makes zipfile check each one's CRC.
            with np.load(shard) as contents:
                keys, vectors = contents["keys"], contents["features"]
            if keys.ndim != 1 or vectors.ndim != 2 or len(keys) != len(vectors):
                raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        except Exception as error:  # zipfile, numpy and OS errors all mean "unreadable"
            aside = shard.with_name(f".corrupt-{shard.name}")
            logger.warning(
                "Feature shard %s is unreadable (%s); moved to %s, recomputing", shard, error, aside
            )
            with contextlib.suppress(FileNotFoundError):  # another run set it aside first
                shard.replace(aside)
            return []
        return keys.tolist()

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Stack the stored vectors of ``keys`` (all must be present), reading each shard once."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            shard, row = self._where[key]
            by_shard.setdefault(shard, []).append((position, row))
        result: np.ndarray | None = None
        for shard, pairs in by_shard.items():
            with np.load(shard) as contents:
                vectors = contents["features"]
            if result is None:
                result = np.empty((len(keys), vectors.shape[1]), dtype=vectors.dtype)
            positions, rows = zip(*pairs, strict=True)
            result[list(positions)] = vectors[list(rows)]
        if result is None:
            raise KeyError("no keys requested")
        return result

    def append(self, keys: list[str], vectors: np.ndarray) -> Path:
        """Write one shard atomically and make its keys visible to this store."""
        shard = write_shard(self.root, keys, vectors)
        self.adopt(shard, keys)
        return shard

    def adopt(self, shard: Path, keys: list[str]) -> None:
        """Make the keys of a shard that another process wrote (a Dask worker) visible here."""
        for row, key in enumerate(keys):
            self._where.setdefault(key, (shard, row))

    def size_bytes(self) -> int:
        return sum(shard.stat().st_size for shard in self.root.glob(_SHARD_GLOB))


def write_shard(root: Path, keys: list[str], vectors: np.ndarray) -> Path:
    """Write ``keys → vectors`` as one new shard under ``root``, atomically; any process may call
    it, many at once, without opening the store."""
    if len(keys) != len(vectors):
        raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
    final = root / f"shard-{uuid.uuid4().hex}.npz"
    try:
        with written_aside(final) as partial, open(partial, "wb") as handle:
            np.savez(handle, keys=np.asarray(keys), features=vectors)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise FeatureCacheError(
            f"cannot write the feature cache in {root}: {error.strerror or error}. Free "
            "space there (the vectors already cached are kept), or move feature_store.path in "
            "conf/<env>/catalog.yml, then run again"
        ) from None
    return final


class FeatureStoreDataset(AbstractDataset[None, FeatureStore]):
    """Loads a ``FeatureStore`` rooted at ``path``; nodes append to it as they compute."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> FeatureStore:
        return FeatureStore(self._path)

    def save(self, data: None) -> None:
        raise DatasetError("the feature store is appended to through FeatureStore.append")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
