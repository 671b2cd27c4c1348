"""``__default__`` in a real Kedro session, with a real sqlite MLflow store, on real photos."""

import os
import signal
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import latest_run, run_session, scratch_project, tracked
from image_classifier.errors import find_project_error
from image_classifier.promotion import StaleModelError

# The default pipeline in real Kedro sessions.
pytestmark = pytest.mark.slow

RUN_PARAMS = {
    "backbone.input_size": 96,
    # Seconds on cached features, and enough for the head to beat chance (1/3) on the tiny set.
    "training.epochs": 20,
    "fine_tuning.epochs": 1,
    # A full-rate step over 40 layers on 24 photos is noise: a gentle one keeps the head's accuracy.
    "fine_tuning.unfreeze_layers": 4,
    "fine_tuning.learning_rate": 1e-5,
    "augmentation.views": 2,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_demo):
    return scratch_project(tmp_path_factory.mktemp("project"), tiny_demo)


@pytest.fixture(scope="module")
def tracking(project):
    with tracked(project) as client:
        yield client


def _run(project, pipeline="__default__", **extra):
    run_session(project, pipeline, **{**RUN_PARAMS, **extra})


def test_default_pipeline_tracks_everything_and_registers_the_model(project, tracking):
    _run(project)
    run = latest_run(tracking)
    metrics = run.data.metrics
    for name in (
        "head.val_accuracy",
        "head.test_accuracy",
        "finetune.val_accuracy",
        "finetune.test_accuracy",
        "test_macro_f1",
    ):
        # Chance is 1/3: more than 12 of 24 right happens by chance about 1.5% of the time.
        assert metrics[name] > 0.5, name
    assert metrics["features.computed"] == 24 * 2 + 48 and metrics["features.reused"] == 0
    assert metrics["ingestion.accepted"] == 72
    assert all(metrics[f"time.{stage}_s"] >= 0 for stage in ("ingestion", "features", "fine_tuning"))
    steps = [m.step for m in tracking.get_metric_history(run.info.run_id, "head.history.loss")]
    assert steps == list(range(len(steps))) and len(steps) > 1
    assert run.data.params["backbone.input_size"] == "96" and run.data.tags["backbone"] == "mobilenet_v2@96"
    assert run.data.tags["engine"] == "onnxruntime"
    artifacts = {a.path for a in tracking.list_artifacts(run.info.run_id)}
    expected = {
        "confusion_matrix.png",
        "training_curves.png",
        "classification_report.json",
        "misclassified.png",
    }
    assert (
        expected | {"per_class_metrics.csv", "augmentation_preview.png", "ingestion_report.json"} <= artifacts
    )
    reports = {path.name: path.stat().st_size for path in (project / "data" / "08_reporting").iterdir()}
    assert expected <= set(reports) and all(size > 0 for size in reports.values())

    versions = tracking.search_model_versions("name='image_classifier'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    # The registered model takes a raw photo of any size and returns a label and probabilities.
    model = mlflow.pyfunc.load_model(f"models:/image_classifier/{versions[0].version}")
    photo = np.asarray(Image.open(next((project / "data/01_raw/images/test/hat").iterdir())).convert("RGB"))
    predictions = model.predict(photo[None])
    assert predictions["label"].iloc[0] in {"dress", "hat", "pants"}
    assert list(predictions.columns) == ["label", "prob_dress", "prob_hat", "prob_pants"]
    assert predictions.iloc[0, 1:].sum() == pytest.approx(1.0, abs=1e-5)
    # The same probabilities as the Keras model the pipeline saved: nothing is lost in packaging.
    keras_model = keras.models.load_model(project / "data/06_models/classifier.keras", compile=False)
    np.testing.assert_allclose(
        predictions.iloc[:, 1:].to_numpy(), keras_model.predict(photo[None]), atol=1e-5
    )


def test_second_run_reuses_every_feature(project, tracking):
    _run(project, **{"fine_tuning.enabled": False})
    metrics = latest_run(tracking).data.metrics
    assert metrics["features.computed"] == 0
    assert metrics["features.reused"] == 96
    assert "finetune.test_accuracy" not in metrics and "test_macro_f1" in metrics


def test_a_model_left_by_a_killed_run_is_neither_scored_nor_registered(project, tracking):
    """kill -9 during fine-tuning leaves the previous run's classifier.keras beside this run's
    image index and parameters; evaluation used to register that stale file as a new version."""
    changed = {**RUN_PARAMS, "training.epochs": 21}
    dotted = ",".join(f"{key}={value}" for key, value in changed.items())
    run = subprocess.Popen(
        [sys.executable, "-m", "image_classifier", "--params", dotted],
        cwd=project,
        env={**os.environ, "COLUMNS": "300"},  # rich would wrap the log line watched for below
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    for line in run.stdout:
        output.append(line)
        if "Fine-tuning 4 backbone layers" in line:
            run.kill()  # SIGKILL: no hook, no handler, nothing is saved
            break
    assert run.wait() == -signal.SIGKILL, "".join(output[-40:])
    versions_before = len(tracking.search_model_versions("name='image_classifier'"))
    with pytest.raises(Exception) as refused:
        _run(project, **{"training.epochs": 21}, pipeline="evaluation")
    problem = find_project_error(refused.value)
    assert isinstance(problem, StaleModelError), refused.value
    assert "trained with other parameters" in str(problem) and "--from-nodes fine_tune" in str(problem)
    assert len(tracking.search_model_versions("name='image_classifier'")) == versions_before
