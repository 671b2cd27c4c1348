"""Feature-cache benchmark: how close feature caching runs to the backbone's own speed, and what the
cache saves. Prints figures; asserts nothing (correctness is the tests' job).

    .venv/bin/python benchmarks/feature_cache.py            # demo data, default parameters
    .venv/bin/python benchmarks/feature_cache.py --fraction 0.2   # a quicker look on a subset
    .venv/bin/python benchmarks/feature_cache.py --fraction 0.1 --large 3000   # (a)-(c) on large photos

Figures, with the parameters in conf/base (backbone, input size, views, batch size, workers):
  (a) backbone-only images/s on pre-decoded, pre-resized tensors
  (b) end-to-end feature caching images/s, cold (decode + resize + augment + backbone + write)
  (c) b / a
  (d) warm re-run time, and its speed-up over cold
  (e) incremental time for 5% new images, as a fraction of cold
  (f) peak RSS of a cold run on N images and on 4N images
  (g) one head epoch on cached features vs. one epoch of end-to-end training with the frozen
      backbone and online augmentation
  (h) every installed engine and precision: backbone-only and cold end-to-end images/s, each as a
      ratio to TensorFlow's, and the head's test accuracy on that engine's features
  (i) the split of the CPU between loader threads and the engine (ONNX Runtime: its streams and
      their threads), for the configured engine, cold end to end on a quarter of the images, with
      each run's peak RSS (``--splits-only``: (i) alone)
  (j) the executors: in-process vs. a Dask LocalCluster of 1 and of 2 workers (1 thread each),
      cold end-to-end, the cluster's start and each worker's engine loading included
With ``--large SIDE``, (a)-(c) only, on a copy of the first ``--fraction`` of each class's demo
photos, enlarged to SIDE pixels on their longer side (bicubic, JPEG quality 90): the photos users
bring from a camera, where decoding at
the scale the backbone needs (``images.decode_rgb``'s ``for_size``) matters most.
Cold runs and RSS runs each happen in a fresh process on a fresh cache; nothing is written to the
project's own cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # figures only; progress bars would bury them

import keras
import numpy as np
from common import demo_folder, peak_rss_mb
from kedro.config import OmegaConfigLoader
from PIL import Image

from image_classifier import engines, settings
from image_classifier.backbones import get_spec, load_pretrained
from image_classifier.config import BackboneParams, FeaturesParams, IngestionParams, TrainingParams
from image_classifier.datasets import FeatureStoreDataset, ImageFolderDataset
from image_classifier.loading import AugmentedImages, ViewLoader
from image_classifier.models import classifier_head, feature_extractor, full_classifier
from image_classifier.pipelines.augmentation.nodes import plan_views
from image_classifier.pipelines.features.nodes import compute_features
from image_classifier.pipelines.ingestion.nodes import class_names, index_images
from image_classifier.pipelines.training.nodes import train_head

ROOT = Path(__file__).resolve().parents[1]


def _params(features: dict[str, Any] | None = None) -> dict[str, Any]:
    loader = OmegaConfigLoader(str(ROOT / "conf"), **settings.CONFIG_LOADER_ARGS)
    params = loader["parameters"]
    overrides = dict(features or {})
    # Loader threads are `loading.workers`, shared by every stage; the rest are `features.*`.
    if "workers" in overrides:
        params["loading"] = {**params["loading"], "workers": overrides.pop("workers")}
    params["features"] = {**params["features"], **overrides}
    return params


def _raw_folder() -> Path:
    if "FEATURE_BENCH_RAW" in os.environ:  # --large: set for this process and its children
        return Path(os.environ["FEATURE_BENCH_RAW"])
    return demo_folder()


def _inputs(params: dict[str, Any], fraction: float):
    """The pipeline's own ingestion and view plan, on the images whose hash falls under ``fraction``.

    Selecting by content hash means the 95% subset is contained in the 100% set, as when 5% new
    images arrive.
    """
    raw = ImageFolderDataset(str(_raw_folder())).load()
    index, _ = index_images(raw, params["split"], params["ingestion"], params["seed"])
    index = index[index["sha256"].map(lambda sha: int(sha[:8], 16) / 16**8 < fraction)]
    return raw, index, plan_views(index, params["augmentation"]), class_names(index)


def _compute(params: dict[str, Any], store: Path, fraction: float):
    raw, index, plan, names = _inputs(params, fraction)
    start = time.perf_counter()
    train, validation, test, metrics = compute_features(
        plan,
        index,
        raw,
        params["ingestion"],
        FeatureStoreDataset(str(store)).load(),
        names,
        params["backbone"],
        params["features"],
        params["augmentation"],
        params["loading"]["workers"],
        params["seed"],
    )
    seconds = time.perf_counter() - start
    return seconds, metrics, (train, validation, test, names, index, raw)


def child(store: str, fraction: float, features: str) -> None:
    """One caching run in this fresh process; prints its figures as JSON on the last line."""
    seconds, metrics, _ = _compute(_params(json.loads(features)), Path(store), fraction)
    figures = {k.split(".")[1]: v["value"] for k, v in metrics.items()}
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), **figures}))


def _in_child(store: Path, fraction: float, **features: Any) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(store), str(fraction), json.dumps(features)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"child run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _enlarged(fraction: float, side: int, target: Path) -> Path:
    """The first ``fraction`` of each class of each split of the demo photos (at least one), enlarged
    to ``side`` pixels on their longer side, under ``target``: every class keeps photos in every
    split, as ingestion requires."""
    count = 0
    for folder in sorted(p for p in demo_folder().glob("*/*") if p.is_dir()):
        photos = sorted(folder.iterdir())
        for source in photos[: max(1, round(fraction * len(photos)))]:
            with Image.open(source) as photo:
                scale = side / max(photo.size)
                size = (round(photo.width * scale), round(photo.height * scale))
                large = photo.convert("RGB").resize(size, Image.Resampling.BICUBIC)
            path = target / folder.parent.name / folder.name / f"{source.stem}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            large.save(path, quality=90)
            count += 1
    print(f"{count} photos enlarged to {side} px", flush=True)
    return target


def backbone_only(params: dict[str, Any], raw, index) -> float:
    """(a) images/s of the pipeline's own traced backbone on tensors already in memory (best pass)."""
    backbone, features = BackboneParams(**params["backbone"]), FeaturesParams(**params["features"])
    engine = engines.backbone_forward(backbone, features)
    loader = ViewLoader(raw, IngestionParams(**params["ingestion"]), backbone.input_size)
    rows = index.head(features.batch_size * 4)
    images = np.stack([loader(p, s, 0) for p, s in zip(rows["path"], rows["sha256"], strict=True)])
    batches = [images[i : i + features.batch_size] for i in range(0, len(images), features.batch_size)]
    engine(batches[0])  # trace and warm up
    # The best of several passes: a ceiling, so that a noisy neighbour cannot flatter b / a.
    # Through `map`, as the caching itself: with several streams, batches run side by side.
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _vectors in engine.map(batches):
            pass
        rates.append(len(images) / (time.perf_counter() - start))
    return max(rates)


def head_vs_end_to_end(params: dict[str, Any], cached, sample_batches: int = 8) -> dict[str, float]:
    """(g) one head epoch on cached views vs. one frozen-backbone epoch with online augmentation.

    The end-to-end epoch is timed on ``sample_batches`` batches after a warm-up and scaled to the
    training set: its cost is linear in images, and a full epoch would take minutes.
    """
    train, validation, _, names, index, raw = cached
    training = TrainingParams(**params["training"])
    backbone = BackboneParams(**params["backbone"])

    def compiled(model):
        model.compile(keras.optimizers.Adam(training.learning_rate), "sparse_categorical_crossentropy")
        return model

    head = compiled(classifier_head(train["features"].shape[1], len(names), training.dropout, params["seed"]))
    timer = _Timer()
    head.fit(
        train["features"],
        train["labels"],
        epochs=3,
        batch_size=training.batch_size,
        verbose=0,
        callbacks=[timer],
    )
    head_epoch = min(timer.epochs[1:])  # the first epoch also traces

    spec = get_spec(backbone.name)
    extractor = feature_extractor(
        load_pretrained(spec.name, backbone.input_size, backbone.cache_dir, backbone.weights),
        spec,
        backbone.input_size,
    )
    extractor.trainable = False
    model = compiled(
        full_classifier(
            extractor, classifier_head(extractor.output_shape[-1], len(names), 0.2, params["seed"])
        )
    )
    rows = index[index["split"] == "train"]
    label_ids = {n: i for i, n in enumerate(names)}
    loader = ViewLoader(
        raw,
        IngestionParams(**params["ingestion"]),
        backbone.input_size,
        tuple(params["augmentation"]["transforms"]),
        params["seed"],
    )
    sample = AugmentedImages(
        loader,
        rows["path"].tolist()[: training.batch_size * (sample_batches + 1)],
        rows["sha256"].tolist()[: training.batch_size * (sample_batches + 1)],
        rows["label"].map(label_ids).to_numpy(),
        training.batch_size,
        params["seed"],
        params["loading"]["workers"],
    )
    timer = _Timer()
    model.fit(sample, epochs=1, verbose=0, callbacks=[timer])
    # The first batch also traces; the rest are steady state.
    per_image = sum(timer.batches[1:]) / (training.batch_size * (len(timer.batches) - 1))
    end_to_end_epoch = per_image * len(rows)
    return {
        "head_epoch_s": head_epoch,
        "head_vectors": len(train["features"]),
        "e2e_epoch_s": end_to_end_epoch,
        "e2e_images": len(rows),
        "ratio": end_to_end_epoch / head_epoch,
    }


class _Timer(keras.callbacks.Callback):
    """Wall seconds of each epoch and of each training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[float] = []
        self.batches: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self._epoch_start)

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(time.perf_counter() - self._batch_start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the demo images to use")
    parser.add_argument("--child", nargs=3, metavar=("STORE", "FRACTION", "FEATURES"), help=argparse.SUPPRESS)
    parser.add_argument("--engines-only", action="store_true", help="only (h) and (i)")
    parser.add_argument("--splits-only", action="store_true", help="only (i)")
    parser.add_argument("--executors-only", action="store_true", help="only (j)")
    parser.add_argument("--large", type=int, metavar="SIDE", help="(a)-(c) on the photos enlarged to SIDE px")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    if args.child:
        child(args.child[0], float(args.child[1]), args.child[2])
        return

    params = _params()
    full = args.fraction
    print(
        f"backbone {params['backbone']['name']}@{BackboneParams(**params['backbone']).input_size}, "
        f"{params['augmentation']['views']} views, batch {params['features']['batch_size']}, "
        f"{params['loading']['workers']} loader threads, engine {params['features']['engine']} "
        f"{params['features']['precision']}, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="feature-cache-bench-") as scratch:
        scratch_path = Path(scratch)
        if args.large:
            os.environ["FEATURE_BENCH_RAW"] = str(_enlarged(full, args.large, scratch_path / "large"))
            # Every enlarged photo is in the run: the fraction was applied when choosing them.
            full = 1.0
        raw, index, _, _ = _inputs(params, full)
        if args.engines_only:
            compare_engines(params, raw, index, scratch_path, full)
            return
        if args.splits_only:
            compare_splits(params, scratch_path, full)
            return
        if args.executors_only:
            compare_executors(scratch_path, full)
            return
        a = backbone_only(params, raw, index)
        print(f"(a) backbone only, pre-decoded:       {a:7.1f} images/s")

        cold = _in_child(scratch_path / "A", full)
        b = cold["computed"] / cold["seconds"]
        print(
            f"(b) end-to-end caching, cold:         {b:7.1f} images/s ({cold['computed']:.0f} vectors in {cold['seconds']:.1f} s)"
        )
        print(f"(c) b / a:                            {b / a:7.3f}   (target >= 0.9)")
        if args.large:
            return

        warm_seconds, warm_metrics, cached = _compute(params, scratch_path / "A", full)
        print(
            f"(d) warm re-run:                      {warm_seconds:7.2f} s, {cold['seconds'] / warm_seconds:.0f}x faster "
            f"than cold (computed {warm_metrics['features.computed']['value']:.0f})   (target >= 50x)"
        )

        _in_child(scratch_path / "B", full * 0.95)
        incremental = _in_child(scratch_path / "B", full)
        print(
            f"(e) 5% new images:                    {incremental['seconds']:7.1f} s for {incremental['computed']:.0f} "
            f"vectors = {incremental['seconds'] / cold['seconds']:.3f} of cold   (target <= 0.10)"
        )

        quarter = _in_child(scratch_path / "C", full / 4)
        print(
            f"(f) peak RSS, cold run:               N: {quarter['peak_rss_mb']:.0f} MB, 4N: {cold['peak_rss_mb']:.0f} MB, "
            f"ratio {cold['peak_rss_mb'] / quarter['peak_rss_mb']:.3f}   (target <= 1.2)"
        )

        g = head_vs_end_to_end(params, cached)
        print(
            f"(g) head epoch on cache:              {g['head_epoch_s']:7.2f} s ({g['head_vectors']} cached views)\n"
            f"    frozen end-to-end epoch:          {g['e2e_epoch_s']:7.1f} s ({g['e2e_images']} images, scaled from 8 batches)\n"
            f"    ratio:                            {g['ratio']:7.0f}x   (target >= 20x)"
        )
        compare_engines(params, raw, index, scratch_path, full)
        compare_executors(scratch_path, full)


def compare_executors(scratch: Path, fraction: float) -> None:
    """(j) the same cold caching in this process and on Dask LocalClusters."""
    print("(j) executor                         cold end-to-end")
    rows = [
        ("local", {}),
        *((f"dask, {n} worker(s)", {"executor": "dask", "dask_workers": n}) for n in (1, 2)),
    ]
    for name, features in rows:
        run = _in_child(scratch / f"executor-{name}", fraction, **features)
        print(
            f"    {name:<32} {run['computed'] / run['seconds']:6.1f} images/s "
            f"({run['computed']:.0f} vectors in {run['seconds']:.1f} s)"
        )


# (engine, precision) in the order printed; TensorFlow first, as every ratio's denominator.
VARIANTS = [("tensorflow", "fp32"), ("openvino", "fp32"), ("onnxruntime", "fp32"), ("openvino", "bf16")]


def compare_engines(params: dict[str, Any], raw, index, scratch: Path, fraction: float) -> None:
    """(h) each installed engine side by side, and (i) the thread split for the configured one."""
    print("(h) engine        precision  backbone-only  end-to-end (cold)   e2e/backbone  head test acc")
    base: dict[str, float] = {}
    for engine, precision in VARIANTS:
        if not engines.installed(engine):
            print(f"    {engine:<13} {precision:<9}  not installed")
            continue
        features = {"engine": engine, "precision": precision}
        a = backbone_only(_params(features), raw, index)
        cold = _in_child(scratch / f"{engine}-{precision}", fraction, **features)
        b = cold["computed"] / cold["seconds"]
        base = base or {"a": a, "b": b}
        _, _, cached = _compute(_params(features), scratch / f"{engine}-{precision}", fraction)
        train, validation, test = cached[:3]
        _, metrics, _ = train_head(
            train, validation, test, index, cached[3], params["training"], params["seed"]
        )
        print(
            f"    {engine:<13} {precision:<9}  {a:6.1f} ({a / base['a']:4.2f}x)  {b:6.1f} img/s ({b / base['b']:4.2f}x)"
            f"   {b / a:6.3f}        {metrics['head.test_accuracy']['value']:.4f}"
        )
    compare_splits(params, scratch, fraction)


def compare_splits(params: dict[str, Any], scratch: Path, fraction: float) -> None:
    """(i) loader threads, engine streams and threads: cold end to end on a quarter of the images."""
    engine = params["features"]["engine"]
    print(
        f"(i) thread split for {engine} ({engines.cores()} cores), cold end-to-end on a quarter of the images:"
    )
    # (loader threads, engine streams, threads a stream); 0: the default (streams: two for
    # onnxruntime on two cores, one elsewhere; threads: the cores shared among the streams).
    if engine == "onnxruntime":
        splits = ((2, 1, 1), (2, 1, 0), (1, 2, 0), (2, 2, 0), (4, 2, 0))
    else:
        splits = ((1, 0, 1), (1, 0, 0), (2, 0, 1), (2, 0, 0))
    for workers, stream_count, threads in splits:
        run = _in_child(
            scratch / f"split-{workers}-{stream_count}-{threads}",
            fraction / 4,
            workers=workers,
            engine_streams=stream_count,
            engine_threads=threads,
        )
        shown = f"{stream_count or 'default'} streams of {threads or 'their share of'} threads"
        print(
            f"    {workers} loader threads, {shown:<34}: {run['computed'] / run['seconds']:6.1f} images/s, "
            f"peak RSS {run['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
