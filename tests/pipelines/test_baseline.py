import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_classifier.datasets import ImageFolderDataset
from image_classifier.models import scratch_convnet
from image_classifier.pipelines.baseline.nodes import train_baseline
from image_classifier.pipelines.ingestion.nodes import class_names, index_images


def _side(n: int, kernel: int, stride: int, padding: str, pooling: str) -> int:
    """The textbook output size: valid loses kernel - 1 pixels, same none; then stride, then 2×2 pool."""
    n = (n - kernel) // stride + 1 if padding == "valid" else -(-n // stride)
    return n // 2 if pooling != "none" else n


@pytest.mark.parametrize(
    ("padding", "pooling"), itertools.product(["valid", "same"], ["max", "average", "none"])
)
def test_convnet_builds_for_each_padding_and_pooling(padding, pooling):
    block = {"filters": 4, "kernel_size": 3, "strides": 1, "padding": padding, "pooling": pooling}
    model = scratch_convnet(3, 32, [block, {**block, "strides": 2}], dense_units=8, dropout=0.1, seed=0)
    side = _side(_side(32, 3, 1, padding, pooling), 3, 2, padding, pooling)
    assert model.get_layer("flatten").output.shape[-1] == side * side * 4
    assert [type(layer).__name__ for layer in model.layers if "pool" in layer.name] == (
        [] if pooling == "none" else [f"{pooling.capitalize()}Pooling2D"] * 2
    )
    probabilities = model.predict(np.zeros((2, 50, 40, 3), np.uint8), verbose=0)
    assert probabilities.shape == (2, 3)


def _tinted_folder(root: Path) -> Path:
    """Three classes a convnet can tell apart in a few epochs: noisy photos tinted red, green or
    blue. Chance is 1/3, so an accuracy well above it means the baseline really learned."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("validation", 6), ("test", 6)):
        for channel, label in enumerate(("red", "green", "blue")):
            for i in range(count):
                pixels = rng.integers(0, 120, (40, 48, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                (root / split / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


@pytest.mark.slow
def test_baseline_learns_and_reports_its_metrics(tmp_path, capsys):
    raw = ImageFolderDataset(str(_tinted_folder(tmp_path / "raw"))).load()
    index, _ = index_images(raw, {"validation": 0.1, "test": 0.1}, {}, seed=0)
    baseline = {
        "input_size": 32,
        "conv_blocks": [{"filters": 8, "kernel_size": 3, "padding": "valid", "pooling": "average"}],
        "dense_units": 16,
        "epochs": 8,
        "batch_size": 8,
        "patience": 8,
    }
    augmentation = {"transforms": [{"name": "HorizontalFlip", "params": {"p": 0.5}}]}
    model, metrics, history = train_baseline(
        index, raw, {}, class_names(index), baseline, augmentation, 2, seed=0
    )
    assert model.name == "scratch_convnet"
    assert sorted(history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert metrics["baseline.test_accuracy"]["value"] > 0.7
    assert [p["step"] for p in metrics["history/baseline.loss"]] == list(range(len(history["loss"])))
    # A bar over the training photos each epoch, as fine-tuning shows.
    train_photos = int((index["split"] == "train").sum())
    shown = capsys.readouterr().err
    assert "baseline epoch 1/8: 100%" in shown and f"| {train_photos}/{train_photos} " in shown
