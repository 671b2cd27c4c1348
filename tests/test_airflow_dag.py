"""The committed Airflow DAG is what `make airflow-dag` generates today, and a real Airflow 3.3
(`make airflow-setup`) runs it: a retraining that promotes, a skip when nothing changed, and a
skipped task when another retraining holds the lock."""

import os
import py_compile
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import PROJECT_ROOT, scratch_project
from image_classifier.runs import exclusive_lock

# Runs kedro-airflow's generator in a subprocess.
pytestmark = pytest.mark.slow

DAG = PROJECT_ROOT / "airflow/dags/image_classifier_retraining_dag.py"


def test_committed_dag_matches_a_fresh_generation(tmp_path):
    project = scratch_project(tmp_path / "project")
    target = tmp_path / "dags"
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), "airflow", "create", "-p", "retraining", "-t", str(target)]
        + ["-j", str(PROJECT_ROOT / "airflow/retraining_dag.j2")],
        cwd=project,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    generated = target / DAG.name
    assert generated.read_text() == DAG.read_text(), "run `make airflow-dag` and commit the result"
    py_compile.compile(str(generated), doraise=True)
    assert (
        "image-classifier-retrain" in generated.read_text()
        and "skip_on_exit_code=75" in generated.read_text()
    )


AIRFLOW = PROJECT_ROOT / ".venv-airflow" / "bin" / "airflow"
# Small and quick: what the DAG's retraining trains here is beside the point.
TINY = """backbone: {input_size: 64}
training: {epochs: 1}
fine_tuning: {enabled: false}
augmentation: {views: 1}
features: {engine: tensorflow}
evaluation: {tta: none}
"""


@pytest.fixture
def airflow(tmp_path, tiny_demo):
    """``airflow dags test`` of the committed DAG (Airflow's own venv, `make airflow-setup`) on a
    scratch project: its checkout path, tiny parameters in conf/local, and the project's .venv."""
    if not AIRFLOW.exists():
        pytest.fail("no .venv-airflow: `make test` runs `make airflow-setup` first")
    project = scratch_project(tmp_path / "project", tiny_demo)
    (project / "conf" / "local" / "parameters.yml").write_text(TINY)
    (project / ".venv").symlink_to(Path(sys.executable).parents[1])
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG.parent),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "IMAGE_CLASSIFIER_HOME": str(project),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_LOCATION": str(project / "mlruns"),
        "COLUMNS": "300",
    }
    migrated = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]

    def dags_test() -> str:
        done = subprocess.run(
            [str(AIRFLOW), "dags", "test", "image_classifier_retraining"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-4000:]
        return output

    return project, dags_test


def test_airflow_runs_the_dag_promotes_then_skips_and_skips_the_task_when_locked(airflow):
    project, dags_test = airflow
    first = dags_test()
    assert "new_state=success" in first, first[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("image_classifier", "champion")
    assert client.get_run(champion.run_id).data.tags["promotion.decision"] == "promoted"
    runs = len(client.search_runs([client.get_experiment_by_name("image_classifier").experiment_id]))

    second = dags_test()  # no new photos: the entry point skips the retraining
    assert "new_state=success" in second and "skipped" in second.lower(), second[-3000:]
    assert (
        len(client.search_runs([client.get_experiment_by_name("image_classifier").experiment_id])) <= runs + 1
    )

    # Another retraining holds the lock: exit 75, which the DAG maps to a skipped task.
    with exclusive_lock(project / "data" / ".retraining.lock", "a test") as acquired:
        assert acquired
        locked = dags_test()
    assert "new_state=skipped" in locked and "already running" in locked, locked[-3000:]
