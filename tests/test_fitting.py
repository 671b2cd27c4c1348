"""fitting.ImageProgress: the bar that replaces Keras' per-epoch line while fine-tuning."""

import re

import keras
import numpy as np

from image_classifier.fitting import ImageProgress


def _bar_lines(stderr: str, desc: str) -> list[str]:
    # tqdm redraws a bar in place with carriage returns: every state is one segment.
    return [line.strip() for line in re.split(r"[\r\n]", stderr) if line.strip().startswith(desc)]


def test_progress_bar_counts_every_training_image_once_per_epoch(capsys):
    rng = np.random.default_rng(0)
    images = rng.random((10, 4), dtype=np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 3, 10), 3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    # Batches of 4 over 10 images: each epoch ends with a short batch of 2.
    model.fit(
        images,
        labels,
        batch_size=4,
        epochs=2,
        validation_data=(images, labels),
        callbacks=[ImageProgress(images=10, batch_size=4, desc="fit")],
        verbose=0,
    )
    lines = _bar_lines(capsys.readouterr().err, "fit epoch")
    counts = [tuple(map(int, re.search(r"\| (\d+)/(\d+) ", line).groups())) for line in lines]
    assert all(total == 10 and done <= 10 for done, total in counts), counts
    for epoch in (1, 2):
        last = [line for line in lines if line.startswith(f"fit epoch {epoch}/2")][-1]
        assert "| 10/10 " in last and "img/s" in last
        assert re.search(r"loss=\d\.\d{4}", last) and "val_accuracy=" in last
