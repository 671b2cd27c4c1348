"""Shared fixtures: real photos from the demo dataset, generated photos, a scratch Kedro project."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from image_classifier.datasets import ImageFolder

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def demo_dataset() -> Path:
    """The demo photos: $DEMO_DATA_DIR, else ../shared/datasets/clothing-small beside the checkout."""
    candidates = [os.environ.get("DEMO_DATA_DIR"), PROJECT_ROOT.parent / "shared/datasets/clothing-small"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train").is_dir():
            return Path(candidate)
    raise FileNotFoundError(
        "demo dataset not found: set DEMO_DATA_DIR or provide ../shared/datasets/clothing-small"
    )


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """3 classes × 8 real photos per split, copied (never linked) out of the read-only source."""
    source, target = demo_dataset(), tmp_path_factory.mktemp("tiny_demo")
    for split in ("train", "validation", "test"):
        for label in ("dress", "hat", "pants"):
            (target / split / label).mkdir(parents=True)
            for photo in sorted((source / split / label).iterdir())[:8]:
                shutil.copy(photo, target / split / label / photo.name)
    return target


def write_photo(path: Path, seed: int, size: tuple[int, int] = (48, 40), **save_args) -> Path:
    """A distinct random RGB image file (distinct bytes, so distinct sha256)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, **save_args)
    return path


@pytest.fixture
def make_folder(tmp_path):
    """Build an ImageFolder of generated photos: ``{relative path: seed}``."""

    def build(files: dict[str, int]) -> ImageFolder:
        root = tmp_path / "raw"
        for relative, seed in files.items():
            write_photo(root / relative, seed)
        return ImageFolder(root, tuple(sorted(files)))

    return build
