"""`kedro viz build` works offline and draws the pipeline in the data-engineering layers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import scratch_project

# Runs kedro-viz's exporter (a Kedro session without hooks) in a subprocess: 10–25 s.
pytestmark = pytest.mark.slow

LAYERS = ["raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    project = scratch_project(tmp_path_factory.mktemp("viz") / "project")
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run(
        [str(kedro), "viz", "build"],
        cwd=project,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, project / "build"


def default_pipeline(build: Path) -> dict:
    return json.loads((build / "api" / "pipelines" / "__default__").read_text())


def test_build_succeeds_offline(built):
    result, build = built
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (build / "index.html").is_file()


def test_every_dataset_of_the_default_pipeline_has_a_layer(built):
    nodes = default_pipeline(built[1])["nodes"]
    datasets = {node["name"]: node.get("layer") for node in nodes if node["type"] == "data"}
    assert "raw_images" in datasets and "evaluation_metrics" in datasets
    assert {name for name, layer in datasets.items() if layer not in LAYERS} == set()


def test_layers_in_data_engineering_order(built):
    assert default_pipeline(built[1])["layers"] == LAYERS
