"""Streaming image batches: decode, resize and augment in worker threads, a bounded window ahead.

Only ``workers × prefetch`` batches are ever in memory, so memory stays flat however large the
dataset is. Decoding (PIL) and resizing (TensorFlow) release the GIL, so threads suffice.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from image_classifier.augment import apply_view, build_compose, view_seed
from image_classifier.config import IngestionParams
from image_classifier.datasets import ImageFolder
from image_classifier.images import centre_crop, decode_rgb, resize


@dataclass(frozen=True)
class ViewLoader:
    """Loads one (image, view) as a square uint8 array; safe to call from many threads.

    Files are read through ingestion's guards (``limits``): a photo replaced after ingestion by
    a decompression bomb or a huge file is refused from its header, never decoded.
    """

    raw: ImageFolder
    limits: IngestionParams
    size: int
    transforms: tuple[dict[str, Any], ...] = ()
    seed: int = 0
    # The share of each side kept around the centre before the resize; the audit compares each
    # photo's centre with the others so that a cropped copy is found (1: the whole photo).
    centre_crop: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_local", threading.local())

    def _compose(self):
        # Seeding a Compose mutates it, so each thread gets its own.
        local = self._local  # type: ignore[attr-defined]
        if not hasattr(local, "compose"):
            local.compose = build_compose(list(self.transforms))
        return local.compose

    def _resized(self, path: str) -> np.ndarray:
        # The views of one image come one after another in a plan, so remembering the last
        # image decodes and resizes it once instead of once per view.
        local = self._local  # type: ignore[attr-defined]
        if getattr(local, "path", None) != path:
            data = self.raw.read_bytes(path, self.limits.max_file_bytes)
            image = decode_rgb(data, self.limits.max_pixels, self.limits.min_side, self.size)
            local.path, local.image = path, resize(centre_crop(image, self.centre_crop), self.size)
        return local.image

    def __call__(self, path: str, sha256: str, view: int) -> np.ndarray:
        image = self._resized(path)
        if view == 0:
            return image
        return apply_view(self._compose(), image, view_seed(self.seed, sha256, view), view)


def iter_batches(
    items: Sequence[tuple[str, str, int]],
    load: Callable[[str, str, int], np.ndarray],
    batch_size: int,
    workers: int,
    prefetch: int = 2,
) -> Iterator[np.ndarray]:
    """Yield stacked batches of ``load(*item)`` in order, keeping a bounded window in flight."""

    def load_batch(start: int) -> np.ndarray:
        return np.stack([load(*item) for item in items[start : start + batch_size]])

    starts = iter(range(0, len(items), batch_size))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for start in starts:
            pending.append(pool.submit(load_batch, start))
            if len(pending) >= workers * prefetch:
                break
        while pending:
            batch = pending.popleft().result()
            next_start = next(starts, None)
            if next_start is not None:
                pending.append(pool.submit(load_batch, next_start))
            yield batch


class AugmentedImages(keras.utils.PyDataset):
    """Training batches for fine-tuning: each epoch sees fresh, but reproducible, augmentations.

    An epoch is ``passes`` passes over the images, each in its own order. The view number of an
    image in pass ``p`` of epoch ``e`` is ``e * passes + p + 1``, so the first pass sees the same
    augmentation as cached view 1 and no pass sees the plain image unless transforms are empty.
    """

    def __init__(
        self,
        loader: ViewLoader,
        paths: Sequence[str],
        shas: Sequence[str],
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        workers: int,
        passes: int = 1,
    ):
        super().__init__(workers=workers, use_multiprocessing=False)
        self._loader, self._paths, self._shas, self._labels = loader, list(paths), list(shas), labels
        self._batch_size, self._passes = batch_size, passes
        self._rng = np.random.default_rng(seed)
        self._epoch = 0
        self._pass = np.repeat(np.arange(passes), len(self._paths))  # the pass of each position
        self._shuffle()

    def _shuffle(self) -> None:
        count = len(self._paths)
        self._order = np.concatenate([self._rng.permutation(count) for _ in range(self._passes)])

    def __len__(self) -> int:
        return -(-len(self._order) // self._batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch = slice(index * self._batch_size, (index + 1) * self._batch_size)
        rows = self._order[batch]
        if self._loader.transforms:
            views = self._epoch * self._passes + self._pass[batch] + 1
        else:
            views = np.zeros(len(rows), int)
        images = np.stack(
            [self._loader(self._paths[r], self._shas[r], int(v)) for r, v in zip(rows, views, strict=True)]
        )
        return images, self._labels[rows]

    def on_epoch_end(self) -> None:
        self._epoch += 1
        self._shuffle()
