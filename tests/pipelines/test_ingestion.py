import pytest

from conftest import write_photo
from image_classifier.datasets import ImageFolderDataset
from image_classifier.pipelines.ingestion.nodes import IngestionError, class_names, index_images

SPLIT = {"validation": 0.2, "test": 0.2}


def _class_layout(root, per_class=30):
    for c, label in enumerate(("cat", "dog")):
        for i in range(per_class):
            write_photo(root / label / f"{i:03}.png", seed=1000 * c + i)


def test_split_layout_is_respected_and_val_means_validation(tiny_demo):
    index, report = index_images(ImageFolderDataset(str(tiny_demo)).load(), SPLIT, seed=1)
    assert list(index.columns) == ["path", "label", "split", "sha256", "width", "height"]
    assert report["counts_per_split"] == {"train": 24, "validation": 24, "test": 24}
    assert (index["split"] == index["path"].str.split("/").str[0]).all()
    assert class_names(index) == ["dress", "hat", "pants"]
    assert (index["width"] > 0).all() and index["sha256"].str.len().eq(64).all()


def test_hash_split_is_seeded_stable_and_survives_new_images(tmp_path):
    _class_layout(tmp_path / "raw")
    first, _ = index_images(ImageFolderDataset(str(tmp_path / "raw")).load(), SPLIT, seed=7)
    again, _ = index_images(ImageFolderDataset(str(tmp_path / "raw")).load(), SPLIT, seed=7)
    assert first.equals(again)
    assert set(first["split"]) == {"train", "validation", "test"}
    write_photo(tmp_path / "raw" / "cat" / "new.png", seed=999_999)
    grown, _ = index_images(ImageFolderDataset(str(tmp_path / "raw")).load(), SPLIT, seed=7)
    merged = first.merge(grown, on="path", suffixes=("", "_grown"))
    assert len(merged) == len(first) and (merged["split"] == merged["split_grown"]).all()
    other_seed, _ = index_images(ImageFolderDataset(str(tmp_path / "raw")).load(), SPLIT, seed=8)
    assert not other_seed["split"].equals(grown["split"])


def test_bad_files_and_duplicates_are_reported_not_fatal(tmp_path):
    raw = tmp_path / "raw"
    _class_layout(raw)
    (raw / "cat" / "notes.txt").write_text("not an image")
    (raw / "cat" / "empty.jpg").write_bytes(b"")
    (raw / "dog" / "copy.png").write_bytes((raw / "dog" / "000.png").read_bytes())
    (raw / "dog" / "conflict.png").write_bytes((raw / "cat" / "001.png").read_bytes())
    index, report = index_images(ImageFolderDataset(str(raw)).load(), SPLIT, seed=1)
    reasons = {r["path"]: r["reason"] for r in report["rejected_files"]}
    assert reasons["cat/notes.txt"].startswith("not a readable image")
    assert reasons["cat/empty.jpg"] == "empty file"
    assert reasons["dog/copy.png"] == "duplicate of dog/000.png"
    assert "label conflict" in reasons["dog/conflict.png"] and "label conflict" in reasons["cat/001.png"]
    assert report["accepted"] == len(index) == 59 and report["rejected"] == 5
    assert not index["sha256"].duplicated().any()


def test_unusable_folders_fail_with_clear_messages(tmp_path):
    write_photo(tmp_path / "flat" / "cat" / "a.png", 1)
    write_photo(tmp_path / "flat" / "train" / "cat" / "b.png", 2)
    with pytest.raises(IngestionError, match="mixed layouts"):
        index_images(ImageFolderDataset(str(tmp_path / "flat")).load(), SPLIT, seed=1)
    write_photo(tmp_path / "splits" / "training" / "cat" / "a.png", 1)
    with pytest.raises(IngestionError, match="not recognised"):
        index_images(ImageFolderDataset(str(tmp_path / "splits")).load(), SPLIT, seed=1)
    write_photo(tmp_path / "one" / "cat" / "a.png", 1)
    with pytest.raises(IngestionError, match="at least 2"):
        index_images(ImageFolderDataset(str(tmp_path / "one")).load(), SPLIT, seed=1)
    with pytest.raises(Exception, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "missing")).load()
