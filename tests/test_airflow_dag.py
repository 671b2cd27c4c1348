"""The committed Airflow DAG is what `make airflow-dag` generates today, and is valid Python."""

import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, scratch_project

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
