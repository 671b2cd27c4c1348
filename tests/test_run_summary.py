"""Run names, descriptions and version tags as the MLflow UI shows them: pure functions of a run."""

from image_classifier.config import validate_parameters
from image_classifier.run_summary import (
    changes,
    describe,
    read_sections,
    run_name,
    version_description,
    version_tags,
)

PARAMS = validate_parameters({"backbone": {"name": "mobilenet_v2"}, "augmentation": {"views": 3}})


def _run(name="default · x", params=None, metrics=None, digest="d" * 64, start=1_795_900_000_000):
    return {
        "name": name,
        "params": params or {"training.epochs": "40", "fine_tuning.enabled": "True"},
        "metrics": metrics or {"test_accuracy": 0.91, "head.test_accuracy": 0.87},
        "tags": {"dataset_digest": digest, "kedro.pipeline": "__default__", "backbone": "mobilenet_v2@224"},
        "start_time": start,
    }


def test_the_name_says_pipeline_backbone_fine_tuning_and_views_when_the_pipeline_reads_them():
    default = read_sections(["params:backbone", "params:fine_tuning", "params:augmentation", "class_names"])
    assert run_name("__default__", PARAMS, default) == "default · mobilenet_v2@224 · ft40 · 3 views"
    untuned = PARAMS.model_copy(
        update={
            "fine_tuning": PARAMS.fine_tuning.model_copy(update={"enabled": False}),
            "augmentation": PARAMS.augmentation.model_copy(update={"views": 1}),
        }
    )
    assert run_name("__default__", untuned, default) == "default · mobilenet_v2@224 · no fine-tuning · 1 view"
    assert (
        run_name("inference", PARAMS, read_sections(["params:ingestion", "params:inference"])) == "inference"
    )
    assert run_name("baseline", PARAMS, {"ingestion", "baseline"}) == "baseline · convnet@96"
    sweep = run_name("sweep", PARAMS, {"sweep", "backbone", "augmentation"})
    assert sweep == "sweep · mobilenet_v2 vs efficientnet_lite0 · 3 views"


def test_the_description_gives_data_results_times_and_changes_since_the_previous_run():
    previous = _run(
        name="default · before",
        params={"training.epochs": "20", "fine_tuning.enabled": "True"},
        metrics={"test_accuracy": 0.9},
        start=1_795_800_000_000,
    )
    text = describe(
        {**_run(), "metrics": {**_run()["metrics"], "diagnostics/ingestion.rejected": 2.0}},
        {"train": 3068, "validation": 341, "test": 372},
        {"ingestion": 3.14, "fine_tuning": 384.6},
        previous,
        registered="registered as `image_classifier` v3",
    )
    assert "**Data** `dddddddddddd` · train 3,068 / validation 341 / test 372 · 2 files rejected" in text
    # Results first: the run page shows only the description's first lines until expanded.
    assert text.startswith("- **head (cached features)**: test 0.87\n- **final model**: test accuracy 0.91\n")
    assert "**Stage times** ingestion 3.1 s · fine_tuning 6m25s (total 6m28s)" in text
    assert "**Model** registered as `image_classifier` v3" in text
    assert "(default · before, 2026-11-27 17:20 UTC)" in text
    assert "- same data" in text and "- `training.epochs`: 20 → 40" in text
    assert "- test_accuracy: 0.9 → 0.91 (+0.01)" in text
    assert "Failed" not in text


def test_the_description_says_which_model_each_choice_on_validation_kept_and_why():
    from image_classifier.selection import compare

    steps = {"diagnostics/finetune.best_epoch": 1.0, "diagnostics/finetune.epochs_run": 3.0}
    # The unseen two-class set: fine-tuning 3 photos better of 212 (5 gained, 2 lost).
    frozen = [True] * 207 + [False] * 5
    tuned = [True] * 205 + [False, False] + [True] * 5
    close = compare(frozen, tuned, 0.05).metrics("diagnostics/finetune.selection")
    text = describe({**_run(), "metrics": {**steps, **close}}, None, {}, None)
    assert (
        "- **fine-tuning**: kept the frozen backbone + head: fine-tuning (epoch 1 of 3) was 3 photos "
        "better of 212 validation photos (5 gained, 2 lost), p = 0.23\n"
    ) in text
    clear = compare(frozen[:200] + [False] * 12, [True] * 212, 0.05).metrics("diagnostics/finetune.selection")
    text = describe({**_run(), "metrics": {**steps, **clear}}, None, {}, None)
    assert (
        "- **fine-tuning**: kept fine-tuning (epoch 1 of 3): 12 photos better than the frozen backbone + head "
        "of 212 validation photos (12 gained, 0 lost), p = 0.00024\n"
    ) in text
    flip = compare([True] * 10, [True] * 10, 0.05).metrics("diagnostics/evaluation.tta_selection")
    text = describe({**_run(), "metrics": flip}, None, {}, None)
    assert (
        "- **test-time augmentation**: kept the plain photo: the mirror-image average was as accurate" in text
    )
    skipped = {"diagnostics/finetune.epochs_run": 0.0, "diagnostics/finetune.frozen_val_accuracy": 0.99}
    text = describe({**_run(), "metrics": skipped}, None, {}, None)
    assert "- **fine-tuning**: kept the frozen backbone + head: fine-tuning did not start" in text
    untuned = describe(_run(), None, {}, None)
    assert "**fine-tuning**" not in untuned and "**test-time augmentation**" not in untuned


def test_a_first_run_has_no_changes_and_a_failed_run_says_why():
    text = describe(_run(), None, {}, None, failure="TrainingDiverged: loss became nan in epoch 3")
    assert "**Failed**: TrainingDiverged: loss became nan in epoch 3" in text
    assert "Since the previous run" not in text and "Stage times" not in text


def test_changes_name_other_data_and_cap_the_parameter_list():
    many = {f"p{i}": str(i) for i in range(12)}
    found = changes(_run(params=many, digest="a" * 64), _run(params={"p0": "0"}, digest="b" * 64))
    assert found[0] == f"other data (`{'b' * 12}` → `{'a' * 12}`)"
    assert found.count("and 3 more parameters") == 1 and len([f for f in found if f.startswith("`p")]) == 8


def test_a_registered_version_is_described_by_backbone_data_score_and_source_run():
    run = _run(metrics={"test_accuracy": 0.91234, "test_macro_f1": 0.9})
    assert version_tags(run) == {
        "backbone": "mobilenet_v2@224",
        "dataset_digest": "d" * 64,
        "test_accuracy": "0.9123",
        "test_macro_f1": "0.9000",
        "source_run": "default · x",
    }
    text = version_description(run, "abc123")
    assert (
        text
        == "Trained by run **default · x** (`abc123`) on data `dddddddddddd`. test_accuracy 0.9123, test_macro_f1 0.9000."
    )
