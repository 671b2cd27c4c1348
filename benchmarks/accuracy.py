"""Accuracy benchmark: the default pipeline on the demo data, and what each ingredient buys.

    .venv/bin/python benchmarks/accuracy.py             # about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/accuracy.py --no-baseline

Runs real Kedro sessions in a scratch copy of the project (its own sqlite MLflow store and outputs),
on the same raw folder, seed and therefore the same test split, and prints:
  - head-only test accuracy trained on 1 view (the plain images) vs. on K augmented views;
  - the fine-tuned model's test accuracy and macro-F1;
  - the scratch convnet baseline's test accuracy;
  - the wall time of each stage of the default run.
The feature cache is shared with the project (it is content-addressed and safe to share), so a
machine that has already run `make run` skips most of the backbone work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from omegaconf import OmegaConf

from image_classifier.pipeline_registry import DEFAULT_STAGES

ROOT = Path(__file__).resolve().parents[1]


def _raw_folder() -> Path:
    for folder in (
        ROOT / "data/01_raw/images",
        Path(os.environ.get("DEMO_DATA_DIR", "/nonexistent")),
        ROOT.parent / "shared/datasets/clothing-small",
    ):
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    sys.exit("no demo data: run `make data` or set DEMO_DATA_DIR")


def _scratch_project(root: Path) -> Path:
    shutil.copytree(ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf/local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    (root / "data").mkdir()
    (ROOT / "data/04_feature").mkdir(parents=True, exist_ok=True)
    (root / "data/04_feature").symlink_to(ROOT / "data/04_feature")
    return root


def _run(project: Path, pipelines: list[str], **dotted) -> dict[str, float]:
    """One ``kedro run --pipelines … --params …``; returns its MLflow metrics and wall time."""
    params = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}" for k, v in dotted.items()]))
    bootstrap_project(project)
    start = time.perf_counter()
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=pipelines)
    seconds = time.perf_counter() - start
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("image_classifier")
    run = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]
    return {**run.data.metrics, "wall_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the scratch convnet")
    args = parser.parse_args()
    raw = _raw_folder()
    with tempfile.TemporaryDirectory(prefix="accuracy-bench-") as scratch:
        project = _scratch_project(Path(scratch))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
        os.environ["MLFLOW_ARTIFACT_LOCATION"] = str(project / "mlruns")
        os.chdir(project)

        full = _run(project, ["__default__"], raw_images_dir=raw)
        one_view = _run(
            project, ["augmentation", "features", "training"], raw_images_dir=raw, **{"augmentation.views": 1}
        )
        baseline = None if args.no_baseline else _run(project, ["baseline"], raw_images_dir=raw)

    print(f"demo data: {raw}")
    print(f"head only, 1 view (plain images):   test accuracy {one_view['head.test_accuracy']:.4f}")
    print(f"head only, K augmented views:       test accuracy {full['head.test_accuracy']:.4f}")
    print(
        f"fine-tuned (final model):           test accuracy {full['finetune.test_accuracy']:.4f}, "
        f"macro-F1 {full['test_macro_f1']:.4f}"
    )
    if baseline is not None:
        print(
            f"scratch convnet baseline:           test accuracy {baseline['baseline.test_accuracy']:.4f} "
            f"({baseline['wall_s']:.0f} s)"
        )
    print("stage wall times of the default run:")
    for stage in DEFAULT_STAGES:
        print(f"  {stage:<13} {full.get(f'diagnostics/time.{stage}_s', float('nan')):8.1f} s")
    print(f"  {'total':<13} {full['wall_s']:8.1f} s (session, including start-up)")


if __name__ == "__main__":
    main()
