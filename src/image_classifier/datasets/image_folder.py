"""A read-only Kedro dataset over a folder of image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from image_classifier.errors import ProjectError
from image_classifier.images import read_file


class RawFolderError(ProjectError):
    """The raw image folder is missing or is not a folder."""


@dataclass(frozen=True)
class ImageFolder:
    """Lazily readable files under ``root``; ``files`` are POSIX paths relative to it, sorted."""

    root: Path
    files: tuple[str, ...]

    def read_bytes(self, relative: str, max_bytes: int) -> bytes:
        """The file's bytes through the shared guards (``images.read_file``)."""
        return read_file(self.root / relative, max_bytes)


class ImageFolderDataset(AbstractDataset[None, ImageFolder]):
    """Lists the files under ``path`` (recursively) without reading them.

    Hidden files (``.DS_Store``, ``.gitkeep``) are skipped; everything else that is not a folder
    is listed (dangling symlinks and FIFOs too), so that ingestion and inference report it
    instead of silently ignoring it. The pipeline never writes here: raw data is the user's and
    stays untouched.
    """

    def __init__(
        self,
        path: str,
        parameter: str = "raw_images_dir",
        hint: str = "",
        metadata: dict[str, Any] | None = None,
    ):
        """``parameter`` is the setting that chooses the folder, named in the error when it is
        missing; ``hint`` says what belongs in it."""
        self._path = Path(path)
        self._parameter = parameter
        self._hint = hint
        self.metadata = metadata

    def load(self) -> ImageFolder:
        if not self._path.is_dir():
            raise RawFolderError(
                f"image folder {self._path} does not exist. {self._hint} Choose another folder with "
                f"`kedro run --params {self._parameter}=<folder>`, or set {self._parameter} in "
                "conf/local/globals.yml."
            )
        files = sorted(
            path.relative_to(self._path).as_posix()
            for path in self._path.rglob("*")
            if not path.is_dir()
            and not any(part.startswith(".") for part in path.relative_to(self._path).parts)
        )
        return ImageFolder(self._path, tuple(files))

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._path} holds raw images and is read-only for the pipeline")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
