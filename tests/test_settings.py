"""settings: where MLflow artifacts go, and a Kedro command's console free of MLflow noise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from conftest import PROJECT_ROOT, scratch_project
from image_classifier.settings import CONFIG_LOADER_ARGS


def _artifact_location() -> str:
    mlflow_conf = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)["mlflow"]
    return mlflow_conf["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"]


def test_artifacts_go_to_the_project_mlruns_as_an_absolute_path(monkeypatch):
    monkeypatch.delenv("MLFLOW_ARTIFACT_LOCATION", raising=False)
    monkeypatch.chdir(PROJECT_ROOT / "conf")  # the root is found upwards, as Kedro finds it
    assert _artifact_location() == str(PROJECT_ROOT / "mlruns")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mlflow-artifacts:/image_classifier", "mlflow-artifacts:/image_classifier"),
        ("/srv/mlflow/artifacts", "/srv/mlflow/artifacts"),
        ("elsewhere/mlruns", str(PROJECT_ROOT / "elsewhere/mlruns")),
    ],
)
def test_mlflow_artifact_location_wins_and_only_relative_paths_change(monkeypatch, given, expected):
    monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION", given)
    monkeypatch.chdir(PROJECT_ROOT)
    assert _artifact_location() == expected


def test_a_local_parameter_overrides_one_key_and_keeps_the_rest_of_its_section(tmp_path):
    project = scratch_project(tmp_path / "project")
    (project / "conf/local/parameters.yml").write_text("evaluation: {tta: none}\nfine_tuning: {epochs: 2}\n")
    parameters = OmegaConfigLoader(str(project / "conf"), **CONFIG_LOADER_ARGS)["parameters"]
    assert parameters["evaluation"] == {"batch_size": 64, "tta": "none", "selection_alpha": 0.05}
    assert parameters["fine_tuning"]["epochs"] == 2 and parameters["fine_tuning"]["unfreeze_layers"] == 40


@pytest.mark.slow
def test_a_kedro_run_prints_neither_mlflow_warning(tmp_path, tiny_demo):
    """kedro-mlflow's untyped pyfunc made MLflow ask for type hints on every command, and it logged
    that a "relative tracking_uri" was converted whenever the artifact location was relative."""
    project = scratch_project(tmp_path / "project", tiny_demo)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    env.pop("MLFLOW_ARTIFACT_LOCATION", None)  # the default of conf/base/mlflow.yml
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), "run", "--pipelines", "ingestion"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    console = (result.stdout + result.stderr).replace("\n", " ")
    assert result.returncode == 0, console[-3000:]
    assert "Add type hints" not in console
    assert "is relative" not in console
    assert (project / "mlruns").is_dir()  # artifacts still inside the project
