"""``kedro run --pipelines sweep`` in a real session: one parent run, one nested run per backbone
with the same metric names, and the summary table and chart on the parent."""

import pandas as pd
import pytest
from click.testing import CliRunner
from kedro.framework.startup import bootstrap_project

from conftest import run_session, scratch_project, tracked
from image_classifier.cli import cli
from image_classifier.config import ParameterError

# Kedro sessions of the sweep.
pytestmark = pytest.mark.slow

BACKBONES = ["mobilenet_v2", "efficientnet_lite0"]  # conf/base/parameters_sweep.yml
RUN_PARAMS = {"training.epochs": 20, "augmentation.views": 2, "sweep.throughput_images": 16}


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
            assert metrics[name] > 0.5, name  # chance is 1/3
        assert metrics["features.computed"] == 24 * 2 + 48 and metrics["features.images_per_s"] > 0
        assert child.data.params["backbone.input_size"] == "224"  # each backbone's native size
        history = client.get_metric_history(child.info.run_id, "history/head.loss")
        assert [m.step for m in history] == list(range(len(history))) and len(history) > 1
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


def test_kedro_run_env_decides_the_sweep_shape(tmp_path, monkeypatch):
    """``kedro run --env X`` reads sweep.backbones from conf/X when the pipelines are registered:
    with one backbone there, the run gets past the shape check and stops at the (empty) data."""
    project = scratch_project(tmp_path / "project")
    (project / "conf/single").mkdir()
    (project / "conf/single/parameters_sweep.yml").write_text("sweep:\n  backbones: [mobilenet_v2]\n")
    (project / "empty").mkdir()
    # The CLI sets KEDRO_ENV for its process. Set-then-delete makes monkeypatch remove it again
    # after the test (deleting an absent variable records nothing to undo).
    monkeypatch.setenv("KEDRO_ENV", "unset-after-the-test")
    monkeypatch.delenv("KEDRO_ENV")
    monkeypatch.chdir(project)
    bootstrap_project(project)
    result = CliRunner().invoke(
        cli, ["run", "--env", "single", "--pipelines", "sweep", "--params", "raw_images_dir=empty"]
    )
    assert result.exit_code == 1
    assert "empty: no image files found" in result.output, result.output
