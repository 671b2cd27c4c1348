"""What the benchmark scripts share: where the demo photos are, and a scratch copy of the project."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

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
