"""A real `mlflow server` (sqlite backend, local artifact store) started by the test: a tiny
retraining logs there and promotes there; an unreachable server stops a run at once."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import pytest

from conftest import free_port, latest_run, run_session, scratch_project, wait_until_up
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


_AUTH_CONFIG = """[mlflow]
default_permission = READ
database_uri = sqlite:///{root}/auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def test_a_shared_server_with_basic_auth_refuses_anonymous_runs_and_records_authenticated_ones(
    tmp_path, tiny_demo
):
    """The README's command for a server other machines reach: MLflow's basic-auth app."""
    root, port = tmp_path / "auth_server", free_port()
    root.mkdir()
    (root / "basic_auth.ini").write_text(_AUTH_CONFIG.format(root=root))
    secrets = {
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-test-password-1",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "0123456789abcdef" * 4,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1"]
        + ["--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'server.db'}"]
        + ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        env={**os.environ, **secrets},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{uri}/health", process, timeout=120)
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
        assert anonymous.value.code == 401
        project = scratch_project(tmp_path / "project", tiny_demo)
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.chdir(project)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            monkeypatch.setenv("MLFLOW_ARTIFACT_LOCATION", "mlflow-artifacts:/image_classifier")
            with pytest.raises(Exception, match="401|Unauthorized|credentials"):
                run_session(project, "ingestion")
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secrets["MLFLOW_AUTH_ADMIN_PASSWORD"])
            run_session(project, "ingestion")
            client = mlflow.MlflowClient(uri)
            run = latest_run(client)
            assert run.data.metrics["diagnostics/ingestion.accepted"] == 72 and run.info.status == "FINISHED"
    finally:
        process.terminate()
        process.wait(timeout=30)
