"""Shared fixtures: real photos from the demo dataset, generated photos, a scratch Kedro project."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from omegaconf import OmegaConf
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


def encode(image: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height``: what a decompression bomb looks like
    before it is decoded. Its pixel data is far too short for that size."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """A landscape JPEG whose EXIF orientation (6) says it must be shown rotated to portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (width, height), (200, 30, 30)), "JPEG", exif=exif)


@pytest.fixture
def make_folder(tmp_path):
    """Build an ImageFolder of generated photos: ``{relative path: seed}``."""

    def build(files: dict[str, int]) -> ImageFolder:
        root = tmp_path / "raw"
        for relative, seed in files.items():
            write_photo(root / relative, seed)
        return ImageFolder(root, tuple(sorted(files)))

    return build


# The converted backbones (Keras weights from the .pth, ONNX and OpenVINO engines) that scratch
# projects share, as the projects of one machine would: conversion is content-addressed and
# written aside then renamed, and done once here instead of once per project (about 8 s each).
_shared_backbones: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def shared_backbones(tmp_path_factory) -> Path:
    global _shared_backbones
    _shared_backbones = tmp_path_factory.mktemp("shared_backbones")
    return _shared_backbones


def scratch_project(root: Path, raw_images: Path | None = None, own_backbones: bool = False) -> Path:
    """A copy of the project's config under ``root``, so that runs write nowhere in the checkout.
    Converted backbones come from the session's shared folder unless ``own_backbones``: a project
    fresh from a clone, which converts them itself."""
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()  # Kedro insists on it; the package itself is installed in the venv
    if raw_images is not None:
        shutil.copytree(raw_images, root / "data" / "01_raw" / "images")
    if not own_backbones and _shared_backbones is not None:
        (root / "data" / "06_models").mkdir(parents=True)
        (root / "data" / "06_models" / "backbones").symlink_to(_shared_backbones)
    return root


@contextmanager
def tracked(project: Path) -> Iterator[mlflow.MlflowClient]:
    """Run from ``project`` with MLflow on a sqlite store inside it; yields a client of that store."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_ARTIFACT_LOCATION", str(project / "mlruns"))
        patch.chdir(project)
        yield mlflow.MlflowClient(uri)


def run_session(
    project: Path, pipeline: str | list[str] = "__default__", env: str | None = None, **dotted
) -> None:
    """Like ``kedro run --pipelines P --env E --params "a.b=v,..."``, which nests dotted keys the
    same way."""
    params = OmegaConf.to_container(OmegaConf.from_dotlist([f"{k}={v}" for k, v in dotted.items()]))
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=params) as session:
        session.run(pipeline_names=[pipeline] if isinstance(pipeline, str) else pipeline)


def latest_run(client: mlflow.MlflowClient) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name("image_classifier")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Poll ``url`` until it answers; fail with the server's output (its stderr pipe, or ``log``
    where it writes to a file) if it dies or times out."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.time() >= deadline:
                output = log.read_text(errors="replace") if log else process.stderr.read()
                raise AssertionError(f"{url} did not come up:\n{output[-3000:]}") from None
            time.sleep(1)


@pytest.fixture(autouse=True)
def no_mlflow_run_left_open():
    """A run left active would swallow the next test's logging: fail the test that leaked it."""
    yield
    leaked = mlflow.active_run()
    if leaked is not None:
        mlflow.end_run()
        pytest.fail(f"MLflow run {leaked.info.run_id} was left active")


@pytest.fixture(autouse=True, scope="module")
def tracking_uri_stays_in_its_file():
    """``mlflow.set_tracking_uri``, which kedro-mlflow calls in in-process sessions, also sets
    MLFLOW_TRACKING_URI in ``os.environ`` for child processes. Left there, it sent a later test
    file's ``kedro`` subprocess to this file's stopped server (seen under pytest-xdist, where one
    process takes files in any order)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def chromium() -> Callable[[str], str]:
    """Headless Chromium: ``chromium(url)`` is the page's DOM once its scripts have run. Installed
    with apt (Debian's ``chromium``) when missing and possible; skipped, saying why, otherwise."""
    binary = shutil.which("chromium") or _install_chromium()

    def dump_dom(url: str) -> str:
        result = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            + ["--disable-dev-shm-usage", "--no-first-run", "--virtual-time-budget=10000", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    return dump_dom


def _install_chromium() -> str:
    _apt_install("chromium")
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium, but it is not on PATH")


def _apt_install(package: str) -> None:
    """Debian's ``package`` for a test that needs it, or a skip saying why it cannot be had."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{package} is not installed, and apt-get needs root: `apt-get install -y {package}`")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if done.returncode != 0:
            pytest.skip(f"could not install {package} ({' '.join(command)}): {done.stderr[-500:]}")


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster from Debian's server binaries (initdb, pg_ctl) in a temporary
    folder on a free port, with a database ``mlflow``: its URI. Installed with apt when missing
    and possible; skipped, saying why, otherwise. PostgreSQL refuses to run as root: as root, the
    cluster belongs to the ``postgres`` user the package creates."""
    bin_dir = _postgres_bin() or _install_postgres()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="image-classifier-pg-"))  # not under pytest's 0700 folders
    if as_owner:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_owner, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}{done.stderr}"

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        # +psycopg2: MLflow's plain postgresql:// asks SQLAlchemy for psycopg 3; psycopg2-binary is pinned.
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _install_postgres() -> Path:
    _apt_install("postgresql")
    return _postgres_bin() or pytest.fail("apt-get installed postgresql, but initdb is not there")
