"""``kedro run --pipelines sweep`` in a real session: one parent run, one nested run per backbone
with the same metric names, and the summary table and chart on the parent."""

import pandas as pd
import pytest

from conftest import run_session, scratch_project, tracked
from image_classifier.config import ParameterError

BACKBONES = ["mobilenet_v2", "efficientnet_lite0"]  # conf/base/parameters_sweep.yml
RUN_PARAMS = {"training.epochs": 1, "augmentation.views": 2, "sweep.throughput_images": 16}


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_demo):
    project = scratch_project(tmp_path_factory.mktemp("sweep"), tiny_demo)
    with tracked(project) as client:
        run_session(project, "sweep", **RUN_PARAMS)
        yield project, client


def test_one_parent_and_a_nested_run_per_backbone(swept):
    project, client = swept
    experiment = client.get_experiment_by_name("image_classifier")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.params["backbone.name"] for r in children) == sorted(BACKBONES)
    for child in children:
        metrics = child.data.metrics
        for name in ("head.val_accuracy", "head.test_accuracy", "test_macro_f1"):
            assert 0.0 <= metrics[name] <= 1.0, name
        assert metrics["features.computed"] == 24 * 2 + 48 and metrics["features.images_per_s"] > 0
        assert child.data.params["backbone.input_size"] == "224"  # each backbone's native size
        history = client.get_metric_history(child.info.run_id, "head.history.loss")
        assert [m.step for m in history] == [0]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"sweep_summary.csv", "sweep_chart.png"} <= artifacts


def test_summary_table_has_a_row_per_backbone(swept):
    project, _client = swept
    table = pd.read_csv(project / "data/08_reporting/sweep_summary.csv")
    assert sorted(table["backbone"]) == sorted(BACKBONES)
    assert (table["feature_dim"] == 1280).all() and (table["images_per_s"] > 0).all()
    assert (project / "data/08_reporting/sweep_chart.png").stat().st_size > 10_000


def test_backbones_from_params_that_do_not_match_the_pipeline_are_refused(swept):
    project, _client = swept
    with pytest.raises(ParameterError, match="conf/local/parameters_sweep.yml"):
        run_session(project, "sweep", **RUN_PARAMS, **{"sweep.backbones": "[mobilenet_v2]"})
