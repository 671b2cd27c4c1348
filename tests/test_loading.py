"""loading: the fine-tuning batches, one or several passes per epoch, and the pixels every path decodes."""

from collections import Counter

import numpy as np
from PIL import Image

from image_classifier.config import IngestionParams
from image_classifier.datasets import ImageFolderDataset
from image_classifier.images import decode_rgb, resize
from image_classifier.loading import AugmentedImages, ViewLoader
from image_classifier.pipelines.inference.nodes import _load
from image_classifier.serving import as_batch

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
