"""``--params backbone.name=keras:Xception`` in a real Kedro session: offline without weights it
stops before any work; with a user's weights file the whole default pipeline runs."""

import time

import keras
import pandas as pd
import pytest

from conftest import latest_run, run_session, scratch_project, tracked
from image_classifier.backbones import BackboneWeightsError

# Kedro sessions, one of them training on a keras.applications network.
pytestmark = pytest.mark.slow

RUN_PARAMS = {
    "backbone.name": "keras:Xception",
    "backbone.input_size": 71,
    "training.epochs": 1,
    "fine_tuning.epochs": 1,
    "fine_tuning.min_epoch_images": 0,  # one pass over the few photos: fast
    "fine_tuning.unfreeze_layers": 4,
    "augmentation.views": 2,
    "evaluation.tta": "none",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_demo):
    return scratch_project(tmp_path_factory.mktemp("keras_project"), tiny_demo)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGE_CLASSIFIER_KERAS_WEIGHTS_HOST", "127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


def test_offline_without_weights_stops_before_any_work(project, offline):
    with tracked(project):
        start = time.perf_counter()
        with pytest.raises(BackboneWeightsError, match="backbone.weights="):
            run_session(project, **RUN_PARAMS)
        assert time.perf_counter() - start < 30
    assert not (project / "data/02_intermediate/image_index.csv").exists()


def test_with_a_weights_file_the_default_pipeline_runs(project, offline, tmp_path):
    weights = tmp_path / "xception.weights.h5"
    keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3)).save_weights(
        weights
    )
    with tracked(project) as client:
        run_session(project, **RUN_PARAMS, **{"backbone.weights": str(weights)})
        run = latest_run(client)
    assert run.data.tags["backbone"] == "keras:Xception@71"
    assert run.data.metrics["features.computed"] == 24 * 2 + 48
    # Random weights learn nothing worth a threshold; the figures must still be the model's own.
    predictions = pd.read_csv(project / "data/07_model_output/test_predictions.csv")
    assert len(predictions) == 24
    accuracy = (predictions["label"] == predictions["predicted"]).mean()
    assert run.data.metrics["finetune.test_accuracy"] == pytest.approx(accuracy)
