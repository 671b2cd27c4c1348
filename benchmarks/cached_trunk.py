"""Fine-tuning on a cached frozen trunk: what it costs in accuracy, on the demo.

    make run                                          # first: the head and the image index
    .venv/bin/python benchmarks/cached_trunk.py       # unfreeze 40 (the default) and 20
    .venv/bin/python benchmarks/cached_trunk.py --unfreeze 40 --seed 1

With BatchNorm frozen, the part of the backbone below the freeze boundary is a fixed function of
the view, so its output could be cached once per planned view and each fine-tuning step would run
only the unfrozen top. benchmarks/fine_tuning.py measures the speed of such steps; this script
measures the accuracy they reach. It reads the outputs of the last ``make run`` (image index,
class names, trained head), computes the boundary tensors of the training photos' 3 planned views
(the plain photo and the two augmentations the feature cache holds, with the project's seed) and
of the plain validation photos, then fine-tunes the top ``N`` layers with the head on them: the
default recipe (``fine_tuning.*``: warm-up, plateau, patience against the frozen model), each
epoch one of the 3 views per photo drawn at random, instead of a fresh augmentation per epoch.
``--flip`` also mirrors each tensor along its width at random, a cheap stand-in for more views.

It prints, per ``N``: the frozen part's pass over the views (what filling the cache costs), each
epoch's seconds and validation scores, and the best epoch's validation accuracy, to compare with
the default's (benchmarks/README.md, "Fine-tuning speed"). Test photos are not read.
"""

from __future__ import annotations

import argparse
import json
import time

import keras
import numpy as np
import pandas as pd
import yaml
from common import ROOT

from image_classifier.backbones import get_spec, load_pretrained
from image_classifier.config import AugmentationParams, FineTuningParams, IngestionParams, TrainingParams
from image_classifier.datasets import ImageFolder, StampedModelDataset
from image_classifier.fitting import fit_callbacks, seed_everything, split_arrays
from image_classifier.loading import ViewLoader, iter_batches
from image_classifier.models import compile_classifier, normalise_pixels, unfreeze_top

# The default recipe's warm-up and plateau, not a copy of them.
from image_classifier.pipelines.fine_tuning.nodes import _schedule


class CachedViews(keras.utils.PyDataset):
    """Each epoch, every photo once, as one of its cached views drawn at random."""

    def __init__(self, views: list[np.ndarray], labels: np.ndarray, batch_size: int, seed: int, flip: bool):
        super().__init__()
        self._views, self._labels, self._batch_size, self._flip = views, labels, batch_size, flip
        self._rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self._labels) // self._batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self._order[index * self._batch_size : (index + 1) * self._batch_size]
        batch = np.stack([self._views[self._view[r]][r] for r in rows]).astype(np.float32)
        if self._flip:  # the width axis of the tensors mirrored, as a mirrored photo's would be, roughly
            mirrored = self._mirror[rows]
            batch[mirrored] = batch[mirrored, :, ::-1]
        return batch, self._labels[rows]

    def on_epoch_end(self) -> None:
        self._order = self._rng.permutation(len(self._labels))
        self._view = self._rng.integers(0, len(self._views), len(self._labels))
        if self._flip:
            self._mirror = self._rng.random(len(self._labels)) < 0.5


class Report(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        print(
            f"  epoch {epoch + 1}: {time.perf_counter() - self.start:.0f} s so far, loss {logs['loss']:.4f}, "
            f"accuracy {logs['accuracy']:.4f}, val_loss {logs['val_loss']:.4f}, "
            f"val_accuracy {logs['val_accuracy']:.4f}",
            flush=True,
        )


def _conf(name: str) -> dict:
    return yaml.safe_load((ROOT / f"conf/base/{name}.yml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--unfreeze", default="40,20", help="unfrozen layers, one fine-tuning each")
    parser.add_argument("--seed", type=int, default=0, help="the fine-tuning's seed")
    parser.add_argument("--flip", action="store_true", help="also mirror the cached tensors at random")
    args = parser.parse_args()

    counts = [int(n) for n in args.unfreeze.split(",")]
    params = FineTuningParams(**_conf("parameters_fine_tuning")["fine_tuning"])
    augmentation = AugmentationParams(**_conf("parameters_augmentation")["augmentation"])
    project_seed = _conf("parameters")["seed"]
    training = TrainingParams(**_conf("parameters_training")["training"])
    raw_dir = _conf("globals")["raw_images_dir"]
    index = pd.read_csv(ROOT / "data/02_intermediate/image_index.csv")
    classes = json.loads((ROOT / "data/02_intermediate/class_names.json").read_text())
    head_model = StampedModelDataset(str(ROOT / "data/06_models/head.keras")).load()

    spec = get_spec("mobilenet_v2")
    trunk = load_pretrained(spec.name, 224, ROOT / "data/06_models/backbones")
    pretrained = trunk.get_weights()
    boundaries = [spec.tunable(trunk)[-n].input for n in counts]
    images = keras.Input((224, 224, 3), dtype="uint8")
    pixels = normalise_pixels(keras.ops.cast(images, "float32"), spec)
    bottom = keras.Model(images, keras.Model(trunk.input, boundaries)(pixels, training=False))
    transforms = tuple(t.model_dump() for t in augmentation.transforms)
    loader = ViewLoader(ImageFolder(ROOT / raw_dir, ()), IngestionParams(), 224, transforms, project_seed)

    def cached(items: list[tuple[str, str, int]]) -> list[np.ndarray]:
        start, parts = time.perf_counter(), [[] for _ in counts]
        for batch in iter_batches(items, loader, 64, 2):
            outputs = bottom(batch, training=False)
            for part, output in zip(parts, outputs if len(counts) > 1 else [outputs], strict=True):
                part.append(np.asarray(output).astype(np.float16))
        seconds = time.perf_counter() - start
        print(
            f"frozen part: {len(items)} views in {seconds:.0f} s ({len(items) / seconds:.0f} views/s)",
            flush=True,
        )
        return [np.concatenate(part) for part in parts]

    paths, shas, labels = split_arrays(index, "train", classes)
    views = [cached([(p, s, v) for p, s in zip(paths, shas, strict=True)]) for v in range(augmentation.views)]
    val_paths, val_shas, val_labels = split_arrays(index, "validation", classes)
    validation = cached([(p, s, 0) for p, s in zip(val_paths, val_shas, strict=True)])

    for k, count in enumerate(counts):
        seed_everything(args.seed)
        trunk.set_weights(pretrained)
        unfreeze_top(trunk, count, spec.tunable)
        head = keras.models.clone_model(head_model)
        head.set_weights(head_model.get_weights())
        inputs = keras.Input(boundaries[k].shape[1:])
        top = keras.Model(boundaries[k], trunk.output)
        pooled = keras.layers.GlobalAveragePooling2D()(top(inputs, training=False))
        model = keras.Model(inputs, head(pooled))
        train = CachedViews([view[k] for view in views], labels, params.batch_size, args.seed, args.flip)
        learning_rate, schedule = _schedule(params, params.peak_learning_rate(len(labels)), len(train))
        compile_classifier(model, learning_rate, training.smoothing(len(labels)))
        val_x = validation[k].astype(np.float32)
        frozen = dict(
            zip(("loss", "accuracy"), map(float, model.evaluate(val_x, val_labels, verbose=0)), strict=True)
        )
        print(f"unfreeze {count}: frozen model val_accuracy {frozen['accuracy']:.4f}", flush=True)
        stopping = fit_callbacks(params.patience, "learning_rate", baseline=frozen)
        fit = model.fit(
            train,
            validation_data=(val_x, val_labels),
            epochs=params.epochs,
            callbacks=[*schedule, *stopping, report := Report()],
            verbose=0,
        )
        best = stopping[0].best_epoch
        print(
            f"unfreeze {count}, seed {args.seed}: best epoch {best + 1} of {len(fit.history['loss'])}, "
            f"val_accuracy {fit.history['val_accuracy'][best]:.4f}, {time.perf_counter() - report.start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
