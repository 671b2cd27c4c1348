"""Streaming image batches: decode, resize and augment in worker threads, a bounded window ahead.

Only ``workers × prefetch`` batches are ever in memory, so memory stays flat however large the
dataset is. Decoding and resizing (PIL) and augmenting (OpenCV) release the GIL, so threads suffice.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from image_classifier.augment import apply_view, build_compose, view_seed
from image_classifier.config import IngestionParams
from image_classifier.datasets import ImageFolder
from image_classifier.images import centre_crop, decode_rgb, resize
from image_classifier.threads import ordered_map

logger = logging.getLogger(__name__)


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

    def resized(self, path: str) -> np.ndarray:
        """The photo at ``path``, decoded through the guards and resized: the plain view."""
        data = self.raw.read_bytes(path, self.limits.max_file_bytes)
        image = decode_rgb(data, self.limits.max_pixels, self.limits.min_side, self.size)
        return resize(centre_crop(image, self.centre_crop), self.size)

    def _last_resized(self, path: str) -> np.ndarray:
        # The views of one image come one after another in a plan, so remembering the last
        # image decodes and resizes it once instead of once per view.
        local = self._local  # type: ignore[attr-defined]
        if getattr(local, "path", None) != path:
            local.path, local.image = path, self.resized(path)
        return local.image

    def view(self, image: np.ndarray, sha256: str, view: int) -> np.ndarray:
        """View ``view`` of the resized photo ``image`` whose content hash is ``sha256``."""
        if view == 0:
            return image
        return apply_view(self._compose(), image, view_seed(self.seed, sha256, view), view)

    def __call__(self, path: str, sha256: str, view: int) -> np.ndarray:
        return self.view(self._last_resized(path), sha256, view)


class ScratchPixels:
    """The resized pixels of a fixed list of photos, written to an unnamed scratch file at their
    first decode: every later epoch reads 150 KB a photo (at 224 px) instead of decoding and
    resizing it again (2 to 7 s of a 62 s fine-tuning epoch on the demo). The file is read, not mapped,
    so the pixels sit in the system's file cache rather than in this process's memory however
    many photos there are, and it disappears with the process (even a killed one)."""

    def __init__(self, count: int, size: int, what: str, directory: str | None = None):
        self._shape, self._bytes = (size, size, 3), size * size * 3
        self._filled = np.zeros(count, bool)
        directory = directory or tempfile.gettempdir()
        needed = count * self._bytes
        # Room for twice the file, so that the scratch never fills a disk that others write to.
        self._file = (
            None if shutil.disk_usage(directory).free < 2 * needed else tempfile.TemporaryFile(dir=directory)
        )
        if self._file is None:
            logger.info(
                "%s: not enough room in %s for %d MB of decoded photos: decoding them every epoch (set TMPDIR elsewhere)",
                what,
                directory,
                needed >> 20,
            )
        else:
            logger.info(
                "%s: %d photos kept decoded after their first epoch (%d MB in a scratch file in %s; TMPDIR moves it)",
                what,
                count,
                needed >> 20,
                directory,
            )

    def get(self, index: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Photo ``index``'s pixels: read from the scratch file, or ``compute()``-d and stored."""
        scratch = self._file  # another thread may give the file up meanwhile
        if scratch is None:
            return compute()
        offset = index * self._bytes
        if self._filled[index]:
            image = np.empty(self._shape, np.uint8)
            os.preadv(scratch.fileno(), [image], offset)
            return image
        image = compute()
        try:
            if os.pwrite(scratch.fileno(), np.ascontiguousarray(image).data, offset) != self._bytes:
                raise OSError("short write")
        except OSError as error:  # a full disk: carry on decoding, nothing is lost
            logger.warning("Scratch file of decoded photos unusable (%s): decoding them every epoch", error)
            self._file = None
            return image
        self._filled[index] = True
        return image

    def close(self) -> None:
        """Give the scratch file back now (on a tmpfs it holds memory): the photos are no longer
        wanted at this size."""
        scratch, self._file = self._file, None
        if scratch is not None:
            scratch.close()


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

    return ordered_map(load_batch, range(0, len(items), batch_size), workers, workers * prefetch)


class AugmentedImages(keras.utils.PyDataset):
    """Training batches for fine-tuning: each epoch sees fresh, but reproducible, augmentations.

    An epoch is ``passes`` passes over the images, each in its own order (``shuffle=False``: the
    order given, as validation needs to pair each photo's scores with another model's). The view number of an
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
        pixels: ScratchPixels | None = None,
        shuffle: bool = True,
    ):
        super().__init__(workers=workers, use_multiprocessing=False)
        self._loader, self._paths, self._shas, self._labels = loader, list(paths), list(shas), labels
        self._pixels, self._shuffled = pixels, shuffle
        self._batch_size, self._passes = batch_size, passes
        self._rng = np.random.default_rng(seed)
        self._epoch = 0
        self._pass = np.repeat(np.arange(passes), len(self._paths))  # the pass of each position
        self._shuffle()

    def _shuffle(self) -> None:
        count = len(self._paths)
        order = self._rng.permutation if self._shuffled else np.arange
        self._order = np.concatenate([order(count) for _ in range(self._passes)])

    def __len__(self) -> int:
        return -(-len(self._order) // self._batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        batch = slice(index * self._batch_size, (index + 1) * self._batch_size)
        rows = self._order[batch]
        if self._loader.transforms:
            views = self._epoch * self._passes + self._pass[batch] + 1
        else:
            views = np.zeros(len(rows), int)
        images = np.stack([self._view(row, int(view)) for row, view in zip(rows, views, strict=True)])
        return images, self._labels[rows]

    def _view(self, row: int, view: int) -> np.ndarray:
        if self._pixels is None:
            return self._loader(self._paths[row], self._shas[row], view)
        image = self._pixels.get(row, lambda: self._loader.resized(self._paths[row]))
        return self._loader.view(image, self._shas[row], view)

    def on_epoch_end(self) -> None:
        self._epoch += 1
        self._shuffle()

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def size(self) -> int:
        """The side of the square views, in pixels."""
        return self._loader.size

    def release(self) -> None:
        """This size is done with: its scratch file, if any, goes."""
        if self._pixels is not None:
            self._pixels.close()


class ResizedAfter:
    """Progressive resizing: ``first``'s batches for ``epochs`` epochs, then ``later``'s.

    The two are the same photos, batch size, seed and augmentations at two sizes, and both are
    told of every epoch's end, so the switch changes the size of the views and nothing else: the
    order of the photos and the view each gets are those one dataset would have given.
    """

    def __init__(self, first: AugmentedImages, later: AugmentedImages, epochs: int, workers: int):
        self._first, self._later, self._epochs, self._epoch = first, later, epochs, 0
        self._workers = workers

    def __len__(self) -> int:
        return len(self._first)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return (self._first if self._epoch < self._epochs else self._later)[index]

    def on_epoch_end(self) -> None:
        self._epoch += 1
        self._first.on_epoch_end()
        self._later.on_epoch_end()
        if self._epoch == self._epochs:
            self._first.release()
            logger.info(
                "Progressive resizing: from epoch %d on, the training views are %d px (they were %d px)",
                self._epoch + 1,
                self._later.size,
                self._first.size,
            )

    def dataset(self) -> Any:
        """The batches as ``fit`` takes them: a ``tf.data.Dataset`` of images of any size, each
        new iterator over it one epoch. (Keras fixes a ``PyDataset``'s shapes from its first
        batches and would refuse the larger views after the switch.)"""
        import tensorflow as tf

        labels, started = self._first.labels, [False]

        def epoch() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            # Keras takes an epoch's batches from a new iterator and stops at their count, without
            # asking the old one for more: the epoch before ends when the next one starts.
            if started[0]:
                self.on_epoch_end()
            started[0] = True
            yield from ordered_map(self.__getitem__, range(len(self)), self._workers, 2 * self._workers)

        dataset = tf.data.Dataset.from_generator(
            epoch,
            output_signature=(
                tf.TensorSpec((None, None, None, 3), tf.uint8),
                tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype)),
            ),
        )
        # A known length: Keras would otherwise learn it by running out of data in the first epoch
        # (and warn of "interrupting training").
        return dataset.apply(tf.data.experimental.assert_cardinality(len(self)))
