"""Cost curve: wall time and peak memory of each stage as the number of photos grows.

    .venv/bin/python benchmarks/scale.py                       # 1k, 4k, 16k and 50k photos
    .venv/bin/python benchmarks/scale.py --sizes 1000,4000     # a first look

For each size it builds a synthetic folder from the demo photos: photo i is a seeded crop (60-100%
of the area) of demo photo i mod 3,781, with a colour shift and, half the time, a mirror, saved
as JPEG, so that no two files hash alike; laid out <class>/<file>, so ingestion holds out 10% for
validation and 10% for test. Each size is a subset of the next (hard links into one pool, built
once under --workdir and kept for the next invocation).

Then each stage of the default pipeline runs in its own process, in a scratch copy of the project
(its own MLflow store and feature cache, cold for every size): ingestion, augmentation, features,
training, fine_tuning, evaluation. Fine-tuning is off (``fine_tuning.enabled=false``: the stage
hands the frozen model on); its cost per photo and epoch is the accuracy benchmark's subject. For
each stage it prints the stage's own wall time (``diagnostics/time.<stage>_s``), that per photo,
and the process's peak RSS (start-up, TensorFlow and the model included). Last, for each stage,
the cost per photo at the largest size over that at 4,000 photos (the issue's target: within
1.3x) and where the cost per photo grows most from one size to the next.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
from common import demo_folder, scratch_project
from PIL import Image

from image_classifier.pipeline_registry import DEFAULT_STAGES


def _sources() -> list[tuple[str, Path]]:
    """(class, photo) for every demo photo, in a fixed order."""
    raw = demo_folder()
    return [(photo.parent.name, photo) for photo in sorted(raw.glob("*/*/*")) if photo.is_file()]


def _synthetic(index: int, label: str, source: Path, target: Path) -> Path:
    rng = np.random.default_rng(index)
    with Image.open(source) as photo:
        photo = photo.convert("RGB")
        area, aspect = rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.25)
        width = min(photo.width, round(photo.width * np.sqrt(area * aspect)))
        height = min(photo.height, round(photo.height * np.sqrt(area / aspect)))
        left, top = rng.integers(0, photo.width - width + 1), rng.integers(0, photo.height - height + 1)
        crop = np.asarray(photo.crop((left, top, left + width, top + height)), dtype=np.float32)
    shifted = np.clip(crop * rng.uniform(0.85, 1.15, 3) + rng.uniform(-12, 12, 3), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        shifted = shifted[:, ::-1]
    path = target / label / f"s{index:06d}.jpg"
    Image.fromarray(shifted).save(path, quality=90)
    return path


def _pool(workdir: Path, count: int) -> list[Path]:
    """The first ``count`` synthetic photos, built where missing."""
    sources, pool = _sources(), workdir / "pool"
    for label in {label for label, _ in sources}:
        (pool / label).mkdir(parents=True, exist_ok=True)

    def one(index: int) -> Path:
        label, source = sources[index % len(sources)]
        path = pool / label / f"s{index:06d}.jpg"
        return path if path.exists() else _synthetic(index, label, source, pool)

    start = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as threads:
        paths = list(threads.map(one, range(count)))
    print(f"{count} synthetic photos ready in {time.perf_counter() - start:.0f} s", flush=True)
    return paths


def _subset(workdir: Path, paths: list[Path]) -> Path:
    folder = workdir / f"photos-{len(paths)}"
    if not folder.exists():
        for path in paths:
            (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
            os.link(path, folder / path.parent.name / path.name)
    return folder


def _stage(project: Path, stage: str, folder: Path) -> dict[str, float]:
    """One stage in its own process: its own wall time (from its MLflow run) and the process's peak RSS."""
    command = [sys.executable, "-m", "kedro", "run", "--pipelines", stage, "--params"]
    command.append(f"raw_images_dir={folder},fine_tuning.enabled=false")
    log = project / f"{stage}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=project, stdout=sink, stderr=subprocess.STDOUT)
        # wait4, not wait: the rusage of this child alone, whose ru_maxrss is the stage's peak.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        sys.exit(f"`kedro run --pipelines {stage}` failed:\n{log.read_text(errors='replace')[-3000:]}")
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("image_classifier")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    return {"seconds": run.data.metrics[f"diagnostics/time.{stage}_s"], "rss_mb": usage.ru_maxrss / 1024}


def _measure(workdir: Path, paths: list[Path]) -> dict[str, dict[str, float]]:
    folder = _subset(workdir, paths)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as scratch:
        project = scratch_project(Path(scratch) / "project", share_feature_cache=False)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
        os.environ["MLFLOW_ARTIFACT_LOCATION"] = str(project / "mlruns")
        figures = {}
        for stage in DEFAULT_STAGES:
            figures[stage] = _stage(project, stage, folder)
            row = figures[stage]
            print(
                f"{len(paths):>7} {stage:<13} {row['seconds']:9.1f} s {1000 * row['seconds'] / len(paths):8.2f} ms/photo "
                f"{row['rss_mb']:8.0f} MB",
                flush=True,
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,4000,16000,50000")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scale-bench")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    os.environ.setdefault("TQDM_DISABLE", "1")
    paths = _pool(args.workdir, sizes[-1])
    print(f"{'photos':>7} {'stage':<13} {'wall':>11} {'per photo':>16} {'peak RSS':>11}")
    results = {size: _measure(args.workdir, paths[:size]) for size in sizes}
    base = 4000 if 4000 in results else sizes[0]
    print(
        f"\ncost per photo at {sizes[-1]} over that at {base} (target: within 1.3x), and the steepest step:"
    )
    for stage in DEFAULT_STAGES:
        per_photo = [results[size][stage]["seconds"] / size for size in sizes]
        steps = [(per_photo[i + 1] / per_photo[i], sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]
        ratio, low, high = max(steps, default=(1.0, sizes[0], sizes[0]))
        print(
            f"  {stage:<13} {per_photo[-1] / per_photo[sizes.index(base)]:5.2f}x; "
            f"steepest {low} -> {high}: {ratio:.2f}x; peak RSS at {sizes[-1]}: "
            f"{results[sizes[-1]][stage]['rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
