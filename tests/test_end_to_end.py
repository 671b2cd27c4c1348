"""``__default__`` in a real Kedro session, with a real sqlite MLflow store, on real photos."""

import base64
import html
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import free_port, latest_run, run_session, scratch_project, tracked, wait_until_up
from image_classifier.errors import find_project_error
from image_classifier.promotion import StaleModelError

# The default pipeline in real Kedro sessions.
pytestmark = pytest.mark.slow

RUN_PARAMS = {
    "backbone.input_size": 96,
    # Seconds on cached features, and enough for the head to beat chance (1/3) on the tiny set.
    "training.epochs": 20,
    "fine_tuning.epochs": 1,
    "fine_tuning.min_epoch_images": 0,  # one pass over the few photos: fast
    # A full-rate step over 40 layers on 24 photos is noise: a gentle one keeps the head's accuracy.
    "fine_tuning.unfreeze_layers": 4,
    "fine_tuning.learning_rate": 1e-5,
    # 24 validation photos: too few mistakes for fine-tuning to ever be chosen, so it would not
    # start; 0 runs it anyway, through the paired comparison that then keeps one of the two.
    "fine_tuning.fixable_share": 0.0,
    "augmentation.views": 2,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_demo):
    return scratch_project(tmp_path_factory.mktemp("project"), tiny_demo, own_backbones=True)


@pytest.fixture(scope="module")
def tracking(project):
    with tracked(project) as client:
        yield client


def _run(project, pipeline="__default__", **extra):
    run_session(project, pipeline, **{**RUN_PARAMS, **extra})


def test_default_pipeline_tracks_everything_and_registers_the_model(project, tracking):
    # Features on a one-worker Dask LocalCluster: the executor's real path through a Kedro session.
    _run(project, **{"features.executor": "dask", "features.dask_workers": 1})
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
    assert metrics["diagnostics/features.dask_workers"] == 1
    # Fine-tuning and test-time augmentation were each chosen on validation, and say so.
    assert metrics["diagnostics/finetune.kept"] in (0.0, 1.0) and metrics[
        "diagnostics/evaluation.tta_flip"
    ] in (0.0, 1.0)
    assert metrics["diagnostics/finetune.frozen_val_accuracy"] > 0.5
    for choice in ("finetune.selection", "evaluation.tta_selection"):
        gained, lost = metrics[f"diagnostics/{choice}.gained"], metrics[f"diagnostics/{choice}.lost"]
        assert metrics[f"diagnostics/{choice}.photos"] == 24 and gained + lost <= 24
        assert 0 < metrics[f"diagnostics/{choice}.p_value"] <= 1
    note = run.data.tags["mlflow.note.content"]
    assert "- **fine-tuning**: kept " in note and " validation photos (" in note, note
    assert "- **test-time augmentation**: kept " in note, note
    assert metrics["diagnostics/ingestion.accepted"] == 72
    assert all(
        metrics[f"diagnostics/time.{stage}_s"] >= 0 for stage in ("ingestion", "features", "fine_tuning")
    )
    steps = [m.step for m in tracking.get_metric_history(run.info.run_id, "history/head.loss")]
    assert steps == list(range(len(steps))) and len(steps) > 1
    assert run.data.params["backbone.input_size"] == "96" and run.data.tags["backbone"] == "mobilenet_v2@96"
    assert run.data.tags["engine"] == "onnxruntime"
    artifacts = {a.path for a in tracking.list_artifacts(run.info.run_id)}
    expected = {
        "confusion_matrix.png",
        "training_curves.png",
        "classification_report.json",
        "misclassified.png",
        "audit.csv",
        "audit_label_issues.png",
        "audit_cross_split_duplicates.png",
        "audit_outliers.png",
    }
    assert (
        expected | {"per_class_metrics.csv", "augmentation_preview.png", "ingestion_report.json"} <= artifacts
    )
    assert {
        "audit.label_issues",
        "audit.near_duplicates",
        "audit.cross_split_duplicates",
        "audit.outliers",
    } <= set(metrics)
    reports = {path.name: path.stat().st_size for path in (project / "data" / "08_reporting").iterdir()}
    assert expected <= set(reports) and all(size > 0 for size in reports.values())

    versions = tracking.search_model_versions("name='image_classifier'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    _check_what_the_ui_shows(tracking, run, versions[0])
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


def _check_what_the_ui_shows(tracking, run, version):
    """Name, tags, description, parameters and the registered version, as the MLflow UI lists them."""
    tags, params = run.data.tags, run.data.params
    assert run.info.run_name == "default · mobilenet_v2@96 · ft4 · 2 views"
    assert tags["kedro.pipeline"] == "__default__" and tags["kedro.runner"] == "SequentialRunner"
    assert "runner" not in tags and "run_id" not in tags and tags["kedro.session_id"]
    # Each fact once: the model's class names and input size are not run parameters.
    assert "class_names" not in params and "input_size" not in params
    assert len(tracking.get_metric_history(run.info.run_id, "diagnostics/time.ingestion_s")) == 1
    assert any(name.startswith("system/cpu") for name in run.data.metrics), sorted(run.data.metrics)
    note = tags["mlflow.note.content"]
    for expected in (
        "train 24 / validation 24 / test 24",
        "0 files rejected",
        f"- **final model**: test accuracy {run.data.metrics['test_accuracy']:.4g}, macro-F1",
        "made `champion` (the first model of the project)",
        "**Stage times** ingestion",
    ):
        assert expected in note, note
    assert "Since the previous run" not in note
    # The first model of the project serves at once: it is the champion.
    champion = tracking.get_model_version_by_alias("image_classifier", "champion")
    assert str(champion.version) == str(version.version)
    assert version.tags["source_run"] == run.info.run_name and version.tags["backbone"] == "mobilenet_v2@96"
    assert version.tags["dataset_digest"] == tags["dataset_digest"]
    assert version.tags["test_accuracy"] == f"{run.data.metrics['test_accuracy']:.4f}"
    assert run.info.run_name in version.description
    # The model page shows a request to copy, and MLflow checked the model answers it.
    info = mlflow.models.get_model_info(f"models:/image_classifier/{version.version}")
    assert info.saved_input_example_info is not None


def test_the_first_model_serves_with_the_default_command(project, tracking):
    """What `make serve` runs, right after the first run: the champion answers one photo."""
    port = free_port()
    log = project / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("kedro")), "serve", "--port", str(port)],
            cwd=project,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, 240, log)
        photo = next((project / "data/01_raw/images/test/hat").iterdir()).read_bytes()
        body = json.dumps({"inputs": {"images": [base64.b64encode(photo).decode()]}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 1 and predictions[0]["label"] in {"dress", "hat", "pants"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_second_run_reuses_every_feature(project, tracking):
    _run(project, **{"fine_tuning.enabled": False})
    run = latest_run(tracking)
    metrics = run.data.metrics
    assert metrics["features.computed"] == 0
    assert metrics["features.reused"] == 96
    assert "finetune.test_accuracy" not in metrics and "test_macro_f1" in metrics
    assert run.info.run_name == "default · mobilenet_v2@96 · no fine-tuning · 2 views"
    note = run.data.tags["mlflow.note.content"]
    assert "Since the previous run of this pipeline** (default · mobilenet_v2@96 · ft4 · 2 views" in note
    assert "- same data" in note and "- `fine_tuning.enabled`: True → False" in note, note
    # Only the first model is crowned: later ones wait for a retraining's promotion.
    assert str(tracking.get_model_version_by_alias("image_classifier", "champion").version) == "1"
    assert "made `champion`" not in note


def test_the_mlflow_ui_tells_the_two_runs_apart_in_a_real_browser(project, tracking, chromium):
    """``mlflow ui`` on the store of the two runs above, read by headless Chromium after the
    page's scripts have run: the runs list shows both names, a run page its description."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/health", server, timeout=90)
        experiment = tracking.get_experiment_by_name("image_classifier")
        runs = tracking.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
        names = [run.info.run_name for run in runs]
        assert names == [
            "default · mobilenet_v2@96 · ft4 · 2 views",
            "default · mobilenet_v2@96 · no fine-tuning · 2 views",
        ]
        runs_list = chromium(f"{base}/#/experiments/{experiment.experiment_id}/runs")
        for name in names:
            assert runs_list.count(f">{html.escape(name, quote=False)}<") == 1, (name, runs_list[-2000:])
        assert ">__default__<" not in runs_list
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # training views
        run_page = chromium(f"{base}/#/experiments/{experiment.experiment_id}/runs/{runs[1].info.run_id}")
        for text in ("train 24 / validation 24 / test 24", "Since the previous run of this pipeline"):
            assert text in run_page, text
    finally:
        server.terminate()
        server.wait(timeout=30)


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


def test_the_fast_environment_trains_the_head_on_efficientnet_lite1_alone(tmp_path, tiny_demo):
    """``kedro run --env fast``: conf/fast changes its three keys over conf/base, and the run
    registers the frozen EfficientNet-Lite1 with the head as a model that takes raw photos."""
    project = scratch_project(tmp_path / "project", tiny_demo)
    with tracked(project) as tracking:
        run_session(project, env="fast", **{"backbone.input_size": 96, "training.epochs": 20})
        run = latest_run(tracking)
        versions = tracking.search_model_versions("name='image_classifier'")
    assert run.info.run_name == "default · efficientnet_lite1@96 · no fine-tuning · 3 views"
    assert run.data.params["audit.centre_crop"] == "1.0"
    assert run.data.params["fine_tuning.enabled"] == "False"
    assert run.data.params["training.learning_rate"] == "0.001"  # from conf/base
    metrics = run.data.metrics
    assert not {name for name in metrics if name.startswith("finetune.")}
    assert metrics["head.test_accuracy"] > 0.5 and metrics["test_accuracy"] > 0.5
    assert [v.run_id for v in versions] == [run.info.run_id]
    model = mlflow.pyfunc.load_model(f"models:/image_classifier/{versions[0].version}")
    photo = np.asarray(Image.open(next((project / "data/01_raw/images/test/pants").iterdir())).convert("RGB"))
    assert model.predict(photo[None])["label"].iloc[0] in {"dress", "hat", "pants"}
