import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kedro.io import DatasetError
from PIL import Image

from conftest import (
    encode,
    exif_rotated_jpeg,
    latest_run,
    png_claiming,
    run_session,
    scratch_project,
    tracked,
    write_photo,
)
from image_classifier.config import ParameterError
from image_classifier.datasets import ImageFolderDataset, RawFolderError
from image_classifier.errors import find_project_error
from image_classifier.pipelines.ingestion.nodes import IngestionError, class_names, index_images

# min_validation 0: the shares given, whatever the folder's size (the raise has its own test).
SPLIT = {"validation": 0.2, "test": 0.2, "min_validation": 0}
LIMITS = {"min_side": 32, "max_pixels": 64_000_000, "workers": 2}


def _index(root: Path, seed: int = 1, split=SPLIT, **limits):
    return index_images(ImageFolderDataset(str(root)).load(), split, {**LIMITS, **limits}, seed)


def _class_layout(root: Path, per_class: dict[str, int]) -> None:
    for c, (label, count) in enumerate(per_class.items()):
        for i in range(count):
            write_photo(root / label / f"{i:03}.png", seed=1000 * c + i)


def _snapshot(root: Path) -> dict[bytes, bytes]:
    """Every file under ``root`` by its raw byte name (some names are not UTF-8)."""
    files = {}
    for folder, _, names in os.walk(bytes(root)):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as file:
                files[path] = file.read()
    return files


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """A split-layout folder with every kind of bad input, and every odd-but-valid format."""
    raw = tmp_path / "messy"
    for s, (split, count) in enumerate((("train", 4), ("validation", 2), ("test", 2))):
        for c, label in enumerate(("cat", "dog")):
            for i in range(count):
                write_photo(raw / split / label / f"{label}{i}.png", seed=100 * s + 10 * c + i)
    train_cat, train_dog = raw / "train" / "cat", raw / "train" / "dog"
    (train_cat / "notes.txt").write_text("not an image")
    truncated = write_photo(train_cat / "whole.jpg", seed=77, size=(128, 128)).read_bytes()
    (train_cat / "whole.jpg").unlink()
    (train_cat / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (train_cat / "empty.jpg").write_bytes(b"")
    write_photo(train_cat / "tiny.png", seed=78, size=(10, 12))
    (train_dog / "bomb.png").write_bytes(png_claiming(9000, 9000))
    with open(os.path.join(bytes(train_cat), b"caf\xe9.png"), "wb") as file:  # a Latin-1 name
        file.write((train_cat / "cat0.png").read_bytes()[:-1] + b"\x00")
    (train_cat / "cat0_copy.png").write_bytes((train_cat / "cat0.png").read_bytes())
    (train_dog / "leak.png").write_bytes((raw / "test" / "dog" / "dog0.png").read_bytes())
    write_photo(train_cat / "conflict.png", seed=79)
    (train_dog / "conflict.png").write_bytes((train_cat / "conflict.png").read_bytes())
    (raw / "README.txt").write_text("photos from the shop")
    # Valid, if unusual: these must be accepted and normalised.
    (train_cat / "cmyk.jpg").write_bytes(encode(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG"))
    Image.new("I;16", (50, 40), 40000).save(train_cat / "gray16.png")
    Image.new("RGBA", (50, 40), (0, 0, 255, 100)).save(train_dog / "alpha.png")
    Image.new("RGB", (50, 40), (9, 99, 199)).convert("P").save(train_dog / "palette.png")
    (train_dog / "rotated.jpg").write_bytes(exif_rotated_jpeg(60, 40))
    return raw


EXPECTED_REJECTIONS = {
    "README.txt": "stray file",
    "train/cat/notes.txt": "not an image",
    "train/cat/truncated.jpg": "truncated or corrupt",
    "train/cat/empty.jpg": "empty file",
    "train/cat/tiny.png": "too small",
    "train/dog/bomb.png": "too large",
    "train/cat/caf\\xe9.png": "unreadable name",
    "train/cat/cat0_copy.png": "duplicate within class",
    "train/dog/leak.png": "duplicate across splits",
    "train/cat/conflict.png": "label conflict",
    "train/dog/conflict.png": "label conflict",
}


def test_every_bad_file_is_rejected_with_its_reason(messy_folder):
    index, report = _index(messy_folder)
    reasons = {r["path"]: r["reason"].split(":")[0] for r in report["rejected_files"]}
    assert reasons == EXPECTED_REJECTIONS
    assert report["rejected"] == len(EXPECTED_REJECTIONS)
    assert report["rejected_by_reason"]["label conflict"] == 2
    accepted = set(index["path"])
    assert {
        "train/cat/cmyk.jpg",
        "train/cat/gray16.png",
        "train/dog/alpha.png",
        "train/dog/palette.png",
    } < accepted
    rotated = index.set_index("path").loc["train/dog/rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (40, 60)
    # The duplicate across splits survives only in the held-out split: no test image trains.
    assert "test/dog/dog0.png" in accepted and not index["sha256"].duplicated().any()
    assert report["accepted"] == len(index) == 16 + 5  # the good photos and the odd formats


def test_files_that_cannot_be_read_are_rejected_entries_not_a_crash(tmp_path):
    """OSErrors, links to nothing, FIFOs and oversized files: each is a reason in the report."""
    raw = tmp_path / "raw"
    for s, split in enumerate(("train", "validation", "test")):
        for c, label in enumerate(("cat", "dog")):
            write_photo(raw / split / label / "ok.png", seed=10 * s + c)
    cat = raw / "train" / "cat"
    os.symlink("/proc/self/mem", cat / "eio.png")  # stat says a file; reading it fails with EIO
    os.symlink("loop.png", cat / "loop.png")  # ELOOP from stat
    os.symlink("missing.png", cat / "dangling.png")
    os.mkfifo(cat / "pipe.png")  # opening it would block the run forever
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(cat / "huge.png")  # ~270 KB of incompressible pixels
    index, report = _index(raw, max_file_bytes=100_000)
    reasons = {r["path"]: r["reason"] for r in report["rejected_files"]}
    assert reasons["train/cat/eio.png"] == "unreadable: Input/output error"
    assert reasons["train/cat/loop.png"].startswith("unreadable: Too many levels of symbolic links")
    assert reasons["train/cat/dangling.png"].startswith("dangling symlink: points to missing.png")
    assert reasons["train/cat/pipe.png"] == "not a regular file: a FIFO"
    assert reasons["train/cat/huge.png"].startswith("too big: ")
    assert "above ingestion.max_file_bytes = 100000" in reasons["train/cat/huge.png"]
    assert len(reasons) == 5 and len(index) == 6


def test_report_counts_classes_splits_and_imbalance(tmp_path):
    _class_layout(tmp_path / "raw", {"cat": 90, "dog": 30})
    index, report = _index(tmp_path / "raw")
    assert report["layout"] == "<class>/<file>"
    assert sum(report["counts_per_split"].values()) == 120
    assert sum(report["counts_per_class"]["cat"].values()) == 90
    train = index[index["split"] == "train"]["label"].value_counts()
    assert report["imbalance"]["ratio"] == pytest.approx(train["cat"] / train["dog"], abs=1e-3)
    assert report["imbalance"]["largest_class"] == "cat" and len(report["dataset_digest"]) == 64


def test_split_layout_is_respected_and_val_means_validation(tiny_demo):
    index, report = _index(tiny_demo)
    assert list(index.columns) == ["path", "label", "split", "sha256", "width", "height"]
    assert report["counts_per_split"] == {"train": 24, "validation": 24, "test": 24}
    assert (index["split"] == index["path"].str.split("/").str[0]).all()
    assert class_names(index) == ["dress", "hat", "pants"]
    assert (index["width"] > 0).all() and index["sha256"].str.len().eq(64).all()


def test_a_missing_validation_folder_is_carved_out_of_train(tmp_path):
    for split, count in (("train", 40), ("test", 3)):
        _class_layout(tmp_path / "raw" / split, {"cat": count, "dog": count})
    index, _ = _index(tmp_path / "raw")
    from_train = index[index["path"].str.startswith("train/")]
    assert set(from_train["split"]) == {"train", "validation"}
    assert (index[index["path"].str.startswith("test/")]["split"] == "test").all()


def test_a_carved_validation_split_is_raised_towards_min_validation_and_only_gives_back_as_it_grows(
    tmp_path,
):
    """Few validation photos leave a choice between two models to noise: a carved split is raised
    towards ``min_validation`` photos (up to a quarter), and falls back to ``split.validation``
    as the folder grows, so photos only ever move from validation to train; test never moves."""
    raw = tmp_path / "raw"
    _class_layout(raw, {"cat": 150, "dog": 150})
    split = {"validation": 0.1, "test": 0.1, "min_validation": 120}
    small, _ = _index(raw, split=split)
    # 120 of 300 is 0.4: capped at a quarter (75 expected, binomial sd 7.5).
    assert 50 <= (small["split"] == "validation").sum() <= 100
    assert (small["split"] == "validation").mean() > 0.15
    _class_layout(raw, {"cat": 600, "dog": 600})  # 150 of them each are the same files as before
    grown, _ = _index(raw, split=split)
    # 120 of 1200 is 0.1: split.validation again.
    assert (grown["split"] == "validation").mean() == pytest.approx(0.1, abs=0.03)
    moved = small.merge(grown, on="path", suffixes=("", "_grown"))
    moves = set(zip(moved["split"], moved["split_grown"], strict=True))
    assert moves <= {
        ("train", "train"),
        ("validation", "validation"),
        ("validation", "train"),
        ("test", "test"),
    }
    assert ("validation", "train") in moves
    # With split folders, only a missing validation folder is carved, from train alone.
    for folder, count in (("train", 100), ("test", 20)):
        _class_layout(tmp_path / "splits" / folder, {"cat": count, "dog": count})
    carved, _ = _index(tmp_path / "splits", split=split)
    from_train = carved[carved["path"].str.startswith("train/")]
    assert (from_train["split"] == "validation").mean() > 0.2  # 120 of 200, capped at 0.25


def test_hash_split_is_seeded_stable_stratified_and_survives_new_images(tmp_path):
    raw = tmp_path / "raw"
    _class_layout(raw, {"cat": 200, "dog": 200})
    first, report = _index(raw, seed=7)
    again, _ = _index(raw, seed=7)
    assert first.equals(again) and report["dataset_digest"] == _index(raw, seed=7)[1]["dataset_digest"]
    for label in ("cat", "dog"):
        # Each image's draw is independent, so a class's shares are binomial: sd 0.028 at n=200.
        shares = first[first["label"] == label]["split"].value_counts(normalize=True)
        assert shares["validation"] == pytest.approx(0.2, abs=0.1), label
        assert shares["test"] == pytest.approx(0.2, abs=0.1), label
    write_photo(raw / "cat" / "new.png", seed=999_999)
    grown, grown_report = _index(raw, seed=7)
    merged = first.merge(grown, on="path", suffixes=("", "_grown"))
    assert len(merged) == len(first) and (merged["split"] == merged["split_grown"]).all()
    assert grown_report["dataset_digest"] != report["dataset_digest"]
    assert not _index(raw, seed=8)[0]["split"].equals(grown["split"])


def test_unusable_folders_fail_with_clear_messages(tmp_path):
    write_photo(tmp_path / "mixed" / "cat" / "a.png", 1)
    write_photo(tmp_path / "mixed" / "train" / "cat" / "b.png", 2)
    with pytest.raises(
        IngestionError, match=r"mixed layouts: 1 files sit in <class>/<file> \(e.g. cat/a.png\)"
    ):
        _index(tmp_path / "mixed")
    write_photo(tmp_path / "splits" / "training" / "cat" / "a.png", 1)
    with pytest.raises(IngestionError, match=r"split folders \['training'\] are not recognised"):
        _index(tmp_path / "splits")
    _class_layout(tmp_path / "one", {"cat": 30})
    with pytest.raises(IngestionError, match=r"only one class \('cat'\)"):
        _index(tmp_path / "one")
    _class_layout(tmp_path / "few", {"cat": 30, "dog": 2})
    with pytest.raises(IngestionError, match=r"class 'dog' has 2 usable images and none landed in"):
        _index(tmp_path / "few")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestionError, match="no image files found"):
        _index(tmp_path / "empty")
    with pytest.raises(DatasetError) as raised:  # Kedro wraps every load error in its own
        ImageFolderDataset(str(tmp_path / "missing")).load()
    assert isinstance(find_project_error(raised.value), RawFolderError)
    assert "missing does not exist" in str(raised.value)


@pytest.mark.slow
def test_ingestion_run_reports_to_mlflow_and_leaves_raw_files_untouched(tmp_path, messy_folder):
    project = scratch_project(tmp_path / "project")
    before = _snapshot(messy_folder)
    with tracked(project) as client:
        run_session(project, "ingestion", raw_images_dir=str(messy_folder))
        run = latest_run(client)
    assert _snapshot(messy_folder) == before
    report = json.loads((project / "data/08_reporting/ingestion_report.json").read_text())
    assert {r["path"] for r in report["rejected_files"]} == set(EXPECTED_REJECTIONS)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["diagnostics/ingestion.rejected"] == len(EXPECTED_REJECTIONS)
    assert run.data.metrics["diagnostics/ingestion.accepted"] == report["accepted"]
    assert run.data.tags["dataset_digest"] == report["dataset_digest"]
    [data_input] = run.inputs.dataset_inputs
    assert data_input.dataset.name == "image_index"
    assert data_input.dataset.digest == report["dataset_digest"][:32]
    assert data_input.dataset.source.find(str(messy_folder)) >= 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "ingestion_report.json" in artifacts


@pytest.mark.parametrize(
    ("make_raw", "message"),
    [
        (lambda raw: None, "does not exist"),
        (lambda raw: _class_layout(raw, {"cat": 5}), "only one class ('cat')"),
    ],
)
@pytest.mark.slow
def test_kedro_run_prints_data_errors_without_a_stack_trace(tmp_path, make_raw, message):
    project = scratch_project(tmp_path / "project")
    make_raw(tmp_path / "raw")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), "run", "--pipelines", "ingestion", "--params", f"raw_images_dir={tmp_path / 'raw'}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert message in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_the_raw_folder_is_set_in_globals_and_refused_in_a_parameters_file(tmp_path):
    """One home for the setting the catalog reads: conf/local/globals.yml is honoured; the same
    key in conf/local/parameters.yml, where the catalog would never see it, stops the run."""
    project = scratch_project(tmp_path / "project")
    _class_layout(tmp_path / "raw", {"cat": 5})  # one class: an ingestion error naming the folder
    (project / "conf/local/globals.yml").write_text(f"raw_images_dir: {tmp_path / 'raw'}\n")
    with tracked(project):
        with pytest.raises(IngestionError, match=f"{tmp_path / 'raw'}: only one class"):
            run_session(project, "ingestion")
        (project / "conf/local/parameters.yml").write_text("raw_images_dir: elsewhere\n")
        with pytest.raises(ParameterError, match=r"raw_images_dir: the catalog reads these from"):
            run_session(project, "ingestion")
