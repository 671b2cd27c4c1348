"""fitting: the bar that replaces Keras' per-epoch line while fine-tuning, early stopping, paired
validation and the rate probe."""

import re

import keras
import numpy as np
import pytest

from image_classifier.fitting import BestEpoch, ImageProgress, PairedValidation, probe_rates


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


def _epochs(stopper: BestEpoch, scores: list[tuple[float, float]]) -> int:
    """Feeds ``stopper`` (val_loss, val_accuracy) per epoch, as ``fit`` would, with a real model
    whose single weight records the epoch; returns the epochs run before it stopped."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, use_bias=False)])
    stopper.set_model(model)
    model.stop_training = False  # as fit() sets it before the first epoch
    stopper.on_train_begin()
    for epoch, (loss, accuracy) in enumerate(scores):
        model.set_weights([np.full((1, 1), epoch, np.float32)])
        stopper.on_epoch_end(epoch, {"val_loss": loss, "val_accuracy": accuracy})
        if model.stop_training:
            break
    stopper.on_train_end()
    assert model.get_weights()[0][0, 0] == stopper.best_epoch
    return epoch + 1


def test_a_fine_tuning_whose_accuracy_climbs_while_its_loss_rises_runs_on_and_keeps_its_best_accuracy():
    """Seen with 20 training photos per class: the loss never gets back below the frozen model's,
    but every epoch is more accurate; stopping on loss alone cut it after 2 epochs."""
    frozen = {"loss": 0.88, "accuracy": 0.68}
    climbing = [(0.95, 0.66), (0.97, 0.70), (1.00, 0.72), (1.02, 0.74), (1.05, 0.73), (1.06, 0.73)]
    stopper = BestEpoch(patience=2, baseline=frozen)
    assert _epochs(stopper, climbing) == 6
    assert stopper.best_epoch == 3
    # As accurate as the best epoch and at a lower loss than it: a new best epoch, so progress,
    # though not the lowest loss so far.
    stopper = BestEpoch(patience=2, baseline=frozen)
    tie = [(0.90, 0.70), (1.00, 0.72), (1.10, 0.71), (0.95, 0.72), (1.20, 0.70), (1.30, 0.69)]
    assert _epochs(stopper, tie) == 6
    assert stopper.best_epoch == 3


def test_a_lower_loss_alone_is_no_progress_once_the_most_accurate_epoch_is_past():
    """The demo with label smoothing (seed 2): after its most accurate epoch (the 5th) the
    validation loss kept falling a little for 3 more epochs and none of them was kept. The
    rule stops 2 epochs after the best; counting the loss alone ran it to the cap of 12."""
    frozen = {"loss": 0.946, "accuracy": 0.8211}
    scores = [
        (0.8450, 0.8798), (0.8273, 0.8886), (0.7728, 0.9032), (0.7737, 0.9091), (0.6814, 0.9384),
        (0.6770, 0.9326), (0.6775, 0.9267), (0.6680, 0.9326), (0.6689, 0.9355), (0.6657, 0.9326),
    ]  # fmt: skip
    stopper = BestEpoch(patience=2, baseline=frozen)
    assert _epochs(stopper, scores) == 7
    assert stopper.best_epoch == 4


def test_epochs_that_beat_the_frozen_model_on_neither_score_nor_climb_cost_patience_epochs():
    frozen = {"loss": 0.50, "accuracy": 0.90}
    # Below the frozen model on both scores and no more accurate than the first epoch.
    stopper = BestEpoch(patience=2, baseline=frozen)
    assert _epochs(stopper, [(0.9, 0.80), (0.8, 0.80), (0.7, 0.84), (0.6, 0.86)]) == 2
    assert stopper.best_epoch == 1
    # An accuracy tie with a lower loss is the better epoch.
    stopper = BestEpoch(patience=3, baseline={"loss": 0.1, "accuracy": 0.99})
    assert _epochs(stopper, [(0.9, 0.80), (0.7, 0.80), (0.8, 0.79)]) == 3
    assert stopper.best_epoch == 1


def test_a_fine_tuning_that_dips_below_the_frozen_model_and_climbs_back_runs_on():
    """1000 training photos at a peak rate of 3e-4 (per_class100, seed 0), its real scores: the
    first two epochs fell below the frozen model on both, the second 7 points more accurate than
    the first. Counting both against the patience stopped it there and kept the head (0.8006);
    climbing back, it reached 0.9032."""
    frozen = {"loss": 1.0034, "accuracy": 0.8006}
    scores = [
        (1.2864, 0.6950), (1.0851, 0.7654), (1.0270, 0.8035), (0.8997, 0.8651), (0.8786, 0.8622),
        (0.9175, 0.8710), (0.8326, 0.8856), (0.8016, 0.9032), (0.8143, 0.8944), (0.7927, 0.8944),
    ]  # fmt: skip
    stopper = BestEpoch(patience=2, baseline=frozen)
    assert _epochs(stopper, scores) == 10
    assert stopper.best_epoch == 7
    # The climb must be in accuracy: a lower loss at the same accuracy is no way back.
    stopper = BestEpoch(patience=2, baseline=frozen)
    assert _epochs(stopper, [(1.2864, 0.6950), (1.0851, 0.6950), (0.9800, 0.8100)]) == 2


def test_without_a_baseline_only_the_loss_counts_as_for_the_head():
    stopper = BestEpoch(patience=2)
    assert _epochs(stopper, [(0.9, 0.5), (0.95, 0.6), (0.97, 0.7), (0.5, 0.8)]) == 3
    assert stopper.best_epoch == 0


class _Batches(keras.utils.PyDataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        super().__init__()
        self._images, self._labels, self._batch_size = images, labels, batch_size

    def __len__(self) -> int:
        return -(-len(self._images) // self._batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        window = slice(index * self._batch_size, (index + 1) * self._batch_size)
        return self._images[window], self._labels[window]


def test_paired_validation_scores_as_keras_does_and_counts_the_photos_won_and_lost():
    """In place of Keras' validation: the same val_loss and val_accuracy each epoch, plus the
    photos the epoch gets right that the reference got wrong, and the reverse."""
    rng = np.random.default_rng(0)
    images = rng.random((30, 4), dtype=np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 3, 30), 3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss, metrics=["accuracy"])
    reference = np.arange(30) % 2 == 0  # right on the even photos
    paired = PairedValidation(_Batches(images, labels, 8), loss, reference)
    fit = model.fit(images, labels, batch_size=8, epochs=2, callbacks=[paired], verbose=0)
    keras_says = model.evaluate(images, labels, verbose=0, return_dict=True)
    assert fit.history["val_loss"][-1] == pytest.approx(keras_says["loss"], rel=1e-5)
    assert fit.history["val_accuracy"][-1] == pytest.approx(keras_says["accuracy"])
    right = model.predict(images, verbose=0).argmax(axis=1) == labels.argmax(axis=1)
    np.testing.assert_array_equal(paired.correct[-1], right)
    assert fit.history["val_gained"][-1] == (right & ~reference).sum()
    assert fit.history["val_lost"][-1] == (reference & ~right).sum()
    assert len(paired.correct) == 2


def test_the_rate_probe_keeps_the_rate_whose_validation_loss_is_lowest_and_restores_the_start():
    """A constructed case: from a model that already fits the data, a huge rate wrecks it within
    the probe's steps and a small one does not; the lower rate is chosen, and the weights are
    the start's again, whichever rate ran last."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(64, 4)).astype(np.float32)
    labels = keras.utils.to_categorical((images[:, 0] > 0).astype(int), 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="categorical_crossentropy")
    model.fit(images, labels, epochs=30, verbose=0)
    start = [w.copy() for w in model.get_weights()]
    loss = keras.losses.CategoricalCrossentropy()

    def compile_at(rate: float) -> None:
        model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)

    def validation_loss() -> float:
        return float(loss(labels, model.predict(images, verbose=0)))

    chosen, losses = probe_rates(
        model, compile_at, _Batches(images, labels, 8), 8, [100.0, 1e-3], validation_loss
    )
    assert chosen == 1e-3 and losses[1e-3] < losses[100.0]
    for after, before in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(after, before)
    # A tie goes to the lower rate.
    chosen, _ = probe_rates(model, compile_at, _Batches(images, labels, 8), 8, [1e-3, 2e-3], lambda: 1.0)
    assert chosen == 1e-3
