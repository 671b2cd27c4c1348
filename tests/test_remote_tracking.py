"""A real `mlflow server` (sqlite backend, local artifact store) started by the test: a tiny
retraining logs there and promotes there; an unreachable server stops a run at once."""

import subprocess
import sys
import time

import mlflow
import pytest

from conftest import free_port, scratch_project, wait_until_up
from image_classifier.hooks import TrackingServerError
from image_classifier.retrain import retrain

# Starts an MLflow server and runs Kedro sessions against it.
pytestmark = pytest.mark.slow

PARAMS = {
    "backbone": {"input_size": 64},
    "training": {"epochs": 1},
    "fine_tuning": {"enabled": False},
    "augmentation": {"views": 1},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root, port = tmp_path_factory.mktemp("mlflow_server"), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--serve-artifacts"]
        + ["--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    uri = f"http://127.0.0.1:{port}"
    wait_until_up(f"{uri}/health", process, timeout=120)
    yield uri, root
    process.terminate()
    process.wait(timeout=30)


def test_a_retraining_logs_and_promotes_on_the_server(server, tmp_path, tiny_demo):
    uri, root = server
    project = scratch_project(tmp_path / "project", tiny_demo)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(project)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        # Artifacts through the server, as a client on another machine would send them.
        monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION", "mlflow-artifacts:/image_classifier")
        assert retrain(project, params=PARAMS) == 0
    client = mlflow.MlflowClient(uri)
    champion = client.get_model_version_by_alias("image_classifier", "champion")
    run = client.get_run(champion.run_id)
    assert run.data.tags["promotion.decision"] == "promoted" and "head.test_accuracy" in run.data.metrics
    assert not (project / "mlflow.db").exists()  # nothing went to the local store
    assert any((root / "artifacts").rglob("promotion.json"))


def test_an_unreachable_server_stops_the_run_before_any_work(tmp_path, tiny_demo):
    project = scratch_project(tmp_path / "project", tiny_demo)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(project)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        start = time.perf_counter()
        with pytest.raises(TrackingServerError, match="unreachable"):
            retrain(project, params=PARAMS)
        assert time.perf_counter() - start < 30
    assert not (project / "data/02_intermediate/image_index.csv").exists()
