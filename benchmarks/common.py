"""What the benchmark scripts share: where the demo photos are, and a scratch copy of the project."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def demo_folder() -> Path:
    """The demo photos: staged by `make data`, else DEMO_DATA_DIR, else the shared datasets."""
    for folder in (
        ROOT / "data/01_raw/images",
        Path(os.environ.get("DEMO_DATA_DIR", "/nonexistent")),
        ROOT.parent / "shared/datasets/clothing-small",
    ):
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    sys.exit("no demo data: run `make data` or set DEMO_DATA_DIR")


def peak_rss_mb() -> float:
    """This process's own peak resident memory, in MB: VmHWM. Not ``ru_maxrss``, which a child
    started by fork (or vfork) and exec inherits from its parent's size: children of a parent
    that had loaded TensorFlow all read that parent's peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def scratch_project(root: Path, share_feature_cache: bool = True) -> Path:
    """The project's conf/ (without conf/local) under ``root``, with empty data/, so that runs
    there write their own outputs and MLflow store. The feature cache is content-addressed and
    safe to share: shared, a machine that has run `make run` skips most of the backbone work."""
    shutil.copytree(ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf/local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    (root / "data").mkdir()
    if share_feature_cache:
        (ROOT / "data/04_feature").mkdir(parents=True, exist_ok=True)
        (root / "data/04_feature").symlink_to(ROOT / "data/04_feature")
    return root


def kedro_run(project: Path, pipelines: list[str], **dotted) -> dict[str, float]:
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
    histories = {
        name: [
            m.value for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        ]
        for name in ("history/finetune.val_loss", "history/finetune.val_accuracy")
    }
    return {**run.data.metrics, **histories, "wall_s": seconds}
