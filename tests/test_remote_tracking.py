"""A real `mlflow server` started by the test: `make server` on a throwaway PostgreSQL cluster,
where a tiny retraining logs and promotes and two runs from two processes are both recorded;
MLflow's basic-auth app; an unreachable server stops a run at once."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import PROJECT_ROOT, free_port, latest_run, run_session, scratch_project, tracked, wait_until_up
from image_classifier.hooks import TrackingServerError
from image_classifier.retrain import retrain

# Starts an MLflow server and runs Kedro sessions against it.
pytestmark = pytest.mark.slow

FLAT_PARAMS = {
    "backbone.input_size": 64,
    "training.epochs": 2,
    "fine_tuning.enabled": False,
    "augmentation.views": 1,
    "evaluation.tta": "none",
}
PARAMS = {
    "backbone": {"input_size": 64},
    "training": {"epochs": 1},
    "fine_tuning": {"enabled": False},
    "augmentation": {"views": 1},
    "evaluation": {"tta": "none"},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres):
    """`make server`, as the README runs it, on the PostgreSQL cluster."""
    root, port = tmp_path_factory.mktemp("mlflow_server"), free_port()
    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": postgres,
        "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
    }
    with make_server(root, port, env) as uri:
        yield uri, root


@contextlib.contextmanager
def make_server(root, port, env, *options):
    """`make server` with ``env``'s store and artifact variables, until the block ends."""
    log = root / "server.log"
    with log.open("wb") as sink:
        # Its own process group: make, mlflow and the uvicorn workers all stop together.
        process = subprocess.Popen(
            # One worker process: MLflow's default four take longer to start on two cores.
            ["make", "-s", "server", f"SERVER_PORT={port}", "SERVER_WORKERS=1", *options],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{uri}/health", process, timeout=120, log=log)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):  # make exits when the server fails to start
            os.killpg(process.pid, signal.SIGTERM)
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


def test_two_runs_at_once_from_two_machines_are_both_recorded(server, tmp_path, tiny_demo):
    """Two projects (two users' checkouts) training at the same moment against one server: both
    runs, both registered versions, and the champion alias are in the database afterwards."""
    uri, _ = server
    client = mlflow.MlflowClient(uri)
    versions_before = len(client.search_model_versions("name='image_classifier'"))
    dotted = "backbone.input_size=64,training.epochs=1,fine_tuning.enabled=false,augmentation.views=1,evaluation.tta=none"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env["MLFLOW_ARTIFACT_LOCATION"] = "mlflow-artifacts:/image_classifier"
    projects = [scratch_project(tmp_path / name, tiny_demo) for name in ("alice", "bob")]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "image_classifier", "--params", f"{dotted},features.engine=tensorflow"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for project in projects
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-3000:]
    experiment = client.get_experiment_by_name("image_classifier")
    recorded = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    paths = {run.data.tags.get("project_path") for run in recorded}
    assert {str(project) for project in projects} <= paths
    versions = client.search_model_versions("name='image_classifier'")
    assert len(versions) == versions_before + 2
    champion = client.get_model_version_by_alias("image_classifier", "champion")
    assert str(champion.version) in {str(v.version) for v in versions}


def test_a_local_store_migrates_to_the_server(server, tmp_path, tiny_demo):
    """The README's migration: a project's mlflow.db copied to the server, runs and models alike."""
    uri, _ = server
    project = scratch_project(tmp_path / "project", tiny_demo)
    with tracked(project) as local:
        run_session(project, "__default__", **{**FLAT_PARAMS, "features.engine": "tensorflow"})
        old = latest_run(local)
    migrate = [
        str(Path(sys.executable).with_name("image-classifier-migrate")),
        f"sqlite:///{project / 'mlflow.db'}",
        uri,
    ]
    # From elsewhere, with no tracking URI set: only the command line names the stores.
    elsewhere = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    done = subprocess.run(migrate, cwd=tmp_path, env=elsewhere, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "copied 1 runs and 1 model versions" in done.stdout, (
        done.stdout + done.stderr
    )
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("image_classifier")
    [new] = client.search_runs([experiment.experiment_id], f"tags.migrated_from = '{old.info.run_id}'")
    assert new.info.run_name == old.info.run_name and new.data.params == old.data.params
    assert new.data.tags["mlflow.note.content"] == old.data.tags["mlflow.note.content"]
    assert (
        len(client.get_metric_history(new.info.run_id, "history/head.loss")) == FLAT_PARAMS["training.epochs"]
    )
    assert {a.path for a in client.list_artifacts(new.info.run_id)} >= {
        "confusion_matrix.png",
        "registered_model",
    }
    [version] = client.search_model_versions(f"run_id = '{new.info.run_id}'")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/image_classifier/{version.version}")
    photo = next((project / "data/01_raw/images/test/hat").iterdir()).read_bytes()
    assert model.predict(np.array([photo], dtype=object))["label"].iloc[0] in {"dress", "hat", "pants"}
    # A second migration copies nothing twice.
    again = subprocess.run(migrate, cwd=tmp_path, env=elsewhere, capture_output=True, text=True, timeout=600)
    assert "copied 0 runs and 0 model versions" in again.stdout, again.stdout + again.stderr


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
    env = {
        **os.environ,
        **secrets,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'server.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
    }
    with make_server(root, port, env, "AUTH=1") as uri:
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
