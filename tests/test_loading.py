"""loading: the fine-tuning batches, one or several passes per epoch, and the pixels every path decodes."""

import shutil
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from image_classifier.config import IngestionParams
from image_classifier.datasets import ImageFolderDataset
from image_classifier.images import UnusableImage, decode_rgb, resize
from image_classifier.loading import AugmentedImages, ResizedAfter, ScratchPixels, ViewLoader
from image_classifier.pipelines.inference.nodes import _load
from image_classifier.serving import as_batch
from image_classifier.threads import ordered_map

FLIP = ({"name": "HorizontalFlip", "params": {"p": 0.5}},)


class _Recording(ViewLoader):
    """The real loader, noting which (photo, view) each batch asked for."""

    def __call__(self, path: str, sha256: str, view: int) -> np.ndarray:
        self.calls.append((path, view))
        return super().__call__(path, sha256, view)


def _epochs(folder, passes: int, epochs: int) -> list[list[tuple[str, int]]]:
    paths = list(folder.files)
    loader = _Recording(folder, IngestionParams(), 16, FLIP, seed=3)
    object.__setattr__(loader, "calls", [])
    batches = AugmentedImages(
        loader, paths, [f"sha-{p}" for p in paths], np.arange(len(paths)), 4, 0, 1, passes
    )
    seen = []
    for _ in range(epochs):
        for index in range(len(batches)):
            images, labels = batches[index]
            assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
            # Each photo's label travels with it (label i belongs to photo i).
            assert [paths[label] for label in labels] == [p for p, _ in loader.calls[-len(labels) :]]
        batches.on_epoch_end()
        seen.append(loader.calls.copy())
        loader.calls.clear()
    return seen


def test_several_passes_per_epoch_see_every_photo_once_per_pass_with_fresh_views(make_folder):
    folder = make_folder({f"c/{i}.png": i for i in range(5)})
    first, second = _epochs(folder, passes=3, epochs=2)
    # 5 photos × 3 passes in batches of 4: 4 batches, the last one short, 15 photos an epoch.
    assert len(first) == len(second) == 15
    assert Counter(path for path, _ in first) == {path: 3 for path in folder.files}
    # Views 1-3 in the first epoch, 4-6 in the second: no view repeats, none is the plain image.
    assert {path: sorted(v for p, v in first if p == path) for path in folder.files} == {
        path: [1, 2, 3] for path in folder.files
    }
    assert sorted({view for _, view in second}) == [4, 5, 6]
    # Each pass has its own order.
    orders = [[p for p, _ in first[i * 5 : (i + 1) * 5]] for i in range(3)]
    assert all(sorted(order) == sorted(folder.files) for order in orders)
    assert len({tuple(order) for order in orders}) > 1


def test_one_pass_is_one_view_per_photo_and_epoch(make_folder):
    folder = make_folder({f"c/{i}.png": i for i in range(5)})
    first, second = _epochs(folder, passes=1, epochs=2)
    assert sorted(p for p, _ in first) == sorted(folder.files) and {v for _, v in first} == {1}
    assert {v for _, v in second} == {2}


def _two_epochs(folder, pixels: ScratchPixels | None, delete_after_first: bool = False) -> list[np.ndarray]:
    paths = list(folder.files)
    loader = ViewLoader(folder, IngestionParams(), 16, FLIP, seed=3)
    batches = AugmentedImages(loader, paths, [f"sha-{p}" for p in paths], np.arange(5), 4, 0, 1, 3, pixels)
    seen = []
    for _ in range(2):
        seen += [batches[index][0] for index in range(len(batches))]
        batches.on_epoch_end()
        if delete_after_first:
            for path in paths:
                (folder.root / path).unlink(missing_ok=True)
    return seen


def test_scratch_pixels_decode_each_photo_once_and_change_no_batch(make_folder, tmp_path):
    """With the scratch file, the second epoch reads no photo (they are gone after the first), and
    every batch of both epochs is the one the loader alone makes."""
    folder = make_folder({f"c/{i}.png": i for i in range(5)})
    plain = _two_epochs(folder, None)
    scratch = _two_epochs(folder, ScratchPixels(5, 16, "test", str(tmp_path)), delete_after_first=True)
    assert len(plain) == len(scratch) == 8
    assert all(np.array_equal(a, b) for a, b in zip(plain, scratch, strict=True))


def test_without_room_for_the_scratch_file_photos_are_decoded_every_epoch(make_folder, tmp_path, monkeypatch):
    folder = make_folder({f"c/{i}.png": i for i in range(5)})
    plain = _two_epochs(folder, None)
    monkeypatch.setattr("shutil.disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9, 0))
    scratch = _two_epochs(folder, ScratchPixels(5, 16, "test", str(tmp_path)))
    assert all(np.array_equal(a, b) for a, b in zip(plain, scratch, strict=True))
    with pytest.raises(
        UnusableImage, match="disappeared"
    ):  # the photos are read each epoch: without them, no batch
        _two_epochs(folder, ScratchPixels(5, 16, "test", str(tmp_path)), delete_after_first=True)


def test_progressive_resizing_changes_the_size_after_its_epochs_and_nothing_else(make_folder, tmp_path):
    """Two epochs at 12 px, then 16 px: each batch is the one a single-size dataset gives in that
    epoch (same photos, order, labels and views), and the small size's scratch file goes at the
    switch."""
    folder = make_folder({f"c/{i}.png": i for i in range(5)})
    paths = list(folder.files)

    def images(size: int, pixels: ScratchPixels | None = None) -> AugmentedImages:
        loader = ViewLoader(folder, IngestionParams(), size, FLIP, seed=3)
        return AugmentedImages(loader, paths, [f"sha-{p}" for p in paths], np.arange(5), 4, 0, 1, 2, pixels)

    small_pixels = ScratchPixels(5, 12, "test", str(tmp_path))
    progressive = ResizedAfter(images(12, small_pixels), images(16), epochs=2, workers=1)
    small, large = images(12), images(16)
    for epoch in range(4):
        expected = small if epoch < 2 else large
        assert len(progressive) == len(expected) == 3
        for index in range(len(progressive)):
            got, want = progressive[index], expected[index]
            assert got[0].shape[1:] == ((12, 12, 3) if epoch < 2 else (16, 16, 3))
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        for dataset in (progressive, small, large):
            dataset.on_epoch_end()
        assert (small_pixels._file is None) == (epoch >= 1)

    # Through tf.data, as fit takes it: each epoch a new iterator, read for exactly its batches.
    small_pixels = ScratchPixels(5, 12, "test", str(tmp_path))
    dataset = ResizedAfter(images(12, small_pixels), images(16), epochs=2, workers=1).dataset()
    small, large = images(12), images(16)
    assert int(dataset.cardinality()) == 3
    for epoch in range(4):
        expected = small if epoch < 2 else large
        iterator = iter(dataset)
        for index in range(3):
            got, want = next(iterator), expected[index]
            assert np.array_equal(got[0].numpy(), want[0]) and np.array_equal(got[1].numpy(), want[1])
        for single_size in (small, large):
            single_size.on_epoch_end()
    assert small_pixels._file is None


def test_training_inference_and_serving_decode_a_large_jpeg_alike(tiny_demo, tmp_path):
    # A camera-sized photo is decoded at a reduced scale; every path must use the same one, or
    # the served model would see other pixels than it was trained on.
    with Image.open(sorted((tiny_demo / "train" / "hat").iterdir())[0]) as small:
        large = small.convert("RGB").resize((small.width * 4, small.height * 4), Image.Resampling.BICUBIC)
    (tmp_path / "raw").mkdir()
    large.save(tmp_path / "raw" / "large.jpg", quality=90)
    folder, limits = ImageFolderDataset(str(tmp_path / "raw")).load(), IngestionParams()
    data = (tmp_path / "raw" / "large.jpg").read_bytes()
    expected = resize(decode_rgb(data, for_size=64), 64)
    assert not np.array_equal(expected, resize(decode_rgb(data), 64))
    assert np.array_equal(ViewLoader(folder, limits, 64)("large.jpg", "sha", 0), expected)
    assert np.array_equal(_load(folder, "large.jpg", limits, 64), expected)
    served = np.empty(1, dtype=object)
    served[0] = data
    assert np.array_equal(as_batch(served, 64, limits)[0], expected)


def test_ordered_map_keeps_the_order_and_its_window():
    """Results come back in input order however the threads finish, and no more than the window
    of inputs is ever taken ahead of what was yielded: memory stays bounded."""
    taken: list[int] = []

    def inputs():
        for number in range(30):
            taken.append(number)
            yield number

    def slow_square(number: int) -> int:
        time.sleep(0.004 * (number % 3))  # later inputs often finish first
        return number * number

    results = []
    for result in ordered_map(slow_square, inputs(), workers=3, window=4):
        results.append(result)
        assert len(taken) - len(results) <= 4
    assert results == [number * number for number in range(30)]
