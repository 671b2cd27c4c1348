"""Concurrent and killed runs: one writing run at a time per project (exit code 75 for the next),
inference never blocked, lock files that are not ours left untouched, runs of killed processes
marked KILLED by the next run, a corrupt sqlite store named in one line, and the scheduled
command's exit codes. The slow tests start real ``kedro run`` and ``image-classifier-retrain``
processes on a scratch project with a sqlite MLflow store."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
from click.testing import CliRunner

from conftest import scratch_project, write_photo
from image_classifier import cli as cli_module
from image_classifier.errors import RunInProgress
from image_classifier.runs import (
    LOCK_MARKER,
    TAG_HOST,
    TAG_KILLED_REASON,
    TAG_PID,
    TAG_STARTED,
    CorruptStoreError,
    LockFileError,
    check_sqlite_store,
    exclusive_lock,
    mark_ghost_runs,
    process_tags,
    run_lock,
)

BIN = Path(sys.executable).parent
RUN_PARAMS = (
    "backbone.input_size=96,training.epochs=20,fine_tuning.epochs=1,fine_tuning.min_epoch_images=0,fine_tuning.unfreeze_layers=4,"
    "fine_tuning.learning_rate=1e-5,augmentation.views=2,evaluation.tta=none"
)
LOCKED = 75


# --- lock files --------------------------------------------------------------------------------


def test_a_lock_file_records_the_marker_and_the_holder_and_refuses_a_second_holder(tmp_path):
    path = tmp_path / "data" / ".run.lock"
    with exclusive_lock(path, "kedro run --pipelines ingestion") as acquired:
        assert acquired
        lines = path.read_text().splitlines()
        assert lines[:3] == [LOCK_MARKER, f"pid {os.getpid()}", "kedro run --pipelines ingestion"]
        with exclusive_lock(path) as again:  # another open file: flock refuses it, even in-process
            assert not again
    with exclusive_lock(path) as reused:  # a stale lock file of ours is simply taken over
        assert reused


def test_a_user_file_at_the_lock_path_is_refused_and_left_unchanged(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\nline two\n")
    with pytest.raises(LockFileError, match="notes.txt.*not a lock file"), exclusive_lock(notes):
        pass
    assert notes.read_text() == "my notes\nline two\n"


def test_a_symlink_or_a_folder_at_the_lock_path_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "link.lock").symlink_to(target)
    (tmp_path / "folder.lock").mkdir()
    for name in ("link.lock", "folder.lock"):
        with pytest.raises(LockFileError, match=name), exclusive_lock(tmp_path / name):
            pass
    assert target.read_text() == "keep me"


def test_run_lock_refuses_with_exit_code_75_naming_the_holder_and_the_file(tmp_path):
    lock = tmp_path / "data" / ".run.lock"
    lock.parent.mkdir()
    lock.write_text(f"{LOCK_MARKER}\npid 4242\nkedro run --pipelines __default__\n")
    with open(lock) as other_process:  # what another process's hold looks like from here
        fcntl.flock(other_process, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunInProgress) as refused, run_lock(tmp_path, "kedro run --pipelines features"):
            pass
    assert refused.value.exit_code == LOCKED
    message = str(refused.value)
    assert "pid 4242 (kedro run --pipelines __default__)" in message and str(lock) in message
    with run_lock(tmp_path, "again"), run_lock(tmp_path, "re-entrant in the process that holds it"):
        pass


def test_kedro_run_keeps_the_exit_code_of_a_run_in_progress(monkeypatch):
    def refuse(**_):
        raise RunInProgress("another run is in progress")

    monkeypatch.setattr(cli_module, "kedro_run", refuse)
    result = CliRunner().invoke(cli_module.cli, ["run"])
    assert result.exit_code == LOCKED and "another run is in progress" in result.output


# --- runs left RUNNING by killed processes --------------------------------------------------------


def test_only_runs_of_dead_processes_on_this_host_are_marked_killed(tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("image_classifier", artifact_location=str(tmp_path / "mlruns"))
    me = process_tags()
    reused_pid = {**me, TAG_STARTED: f"{float(me[TAG_STARTED]) - 3600:.2f}"}  # same pid, older process
    runs = {
        name: client.create_run(experiment, tags=tags, run_name=name).info.run_id
        for name, tags in {
            "ghost": reused_pid,
            "alive": me,
            "other host": {**reused_pid, TAG_HOST: "not-" + socket.gethostname()},
            "untagged": {},
        }.items()
    }
    assert mark_ghost_runs(client, "image_classifier") == [runs["ghost"]]
    ghost = client.get_run(runs["ghost"])
    assert ghost.info.status == "KILLED"
    reason = ghost.data.tags[TAG_KILLED_REASON]
    assert f"process {os.getpid()} on host {socket.gethostname()} ended" in reason
    for name in ("alive", "other host", "untagged"):
        assert client.get_run(runs[name]).info.status == "RUNNING", name


# --- corrupt sqlite store -------------------------------------------------------------------------


def test_a_corrupt_sqlite_store_is_named_in_one_line_and_left_unchanged(tmp_path):
    garbage = tmp_path / "mlflow.db"
    garbage.write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(CorruptStoreError) as error:
        check_sqlite_store(f"sqlite:///{garbage}")
    message = str(error.value)
    assert "\n" not in message and str(garbage) in message and f"mv {garbage} {garbage}.corrupt" in message
    assert garbage.read_bytes() == b"not a database at all\n" * 100


def test_a_store_with_a_valid_header_but_damaged_pages_is_refused(tmp_path):
    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store) as connection:
        connection.execute("create table runs (id integer primary key, name text)")
        connection.executemany("insert into runs (name) values (?)", [("x" * 200,)] * 200)
    connection.close()
    data = bytearray(store.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # the second page: the table's b-tree
    store.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError):
        check_sqlite_store(f"sqlite:///{store}")


def test_a_healthy_missing_or_remote_store_passes(tmp_path):
    healthy = tmp_path / "healthy.db"
    with sqlite3.connect(healthy) as connection:
        connection.execute("create table t (x)")
    connection.close()
    for uri in (f"sqlite:///{healthy}", f"sqlite:///{tmp_path / 'missing.db'}", "http://127.0.0.1:1"):
        check_sqlite_store(uri)


# --- real processes -------------------------------------------------------------------------------


def _env(project: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_LOCATION": str(project / "mlruns"),
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _start(project: Path, log: Path, *command: str) -> subprocess.Popen:
    """Start ``command`` in the background, its output to ``log`` (a pipe nobody reads would fill
    up and stall it)."""
    with open(log, "w") as output:
        return subprocess.Popen(
            command, cwd=project, env=_env(project), stdout=output, stderr=subprocess.STDOUT
        )


def _run(project: Path, *command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=project, env=_env(project), capture_output=True, text=True, timeout=timeout
    )


def _wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.5)


def _holds_run_lock(project: Path, pid: int):
    lock = project / "data" / ".run.lock"
    return lambda: lock.is_file() and f"pid {pid}\n" in lock.read_text()


def _client(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def _runs(project: Path) -> list[mlflow.entities.Run]:
    client = _client(project)
    experiment = client.get_experiment_by_name("image_classifier")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_demo):
    return scratch_project(tmp_path_factory.mktemp("concurrency"), tiny_demo)


@pytest.mark.slow
def test_a_second_run_is_refused_at_once_with_75_and_neither_reads_the_other(project, tmp_path):
    other = tmp_path / "other_images"
    for seed, split in enumerate(("train", "validation", "test")):
        for label in ("dress", "hat"):
            for i in range(3):
                write_photo(other / split / label / f"other_{i}.png", seed=100 * seed + 10 * len(label) + i)
    log = tmp_path / "first.log"
    first = _start(project, log, str(BIN / "kedro"), "run", "--params", RUN_PARAMS)
    _wait_for(_holds_run_lock(project, first.pid), first, log)
    time.sleep(4)
    start = time.perf_counter()
    second = _run(
        project,
        sys.executable,
        "-m",
        "image_classifier",
        "--params",
        f"raw_images_dir={other},{RUN_PARAMS}",
    )
    refused_after = time.perf_counter() - start
    assert first.poll() is None, "the first run ended before the second was refused: no overlap tested"
    assert first.wait(timeout=600) == 0, log.read_text()[-3000:]

    assert second.returncode == LOCKED, second.stderr[-3000:]
    lock = project / "data" / ".run.lock"
    expected = f"pid {first.pid} (kedro run --pipelines __default__) holds {lock.resolve()}"
    assert expected in second.stderr and "Traceback" not in second.stderr
    assert "Running node" not in second.stdout + second.stderr and refused_after < 90
    index = pd.read_csv(project / "data/02_intermediate/image_index.csv")
    assert len(index) == 72 and not index["path"].str.contains("other_").any()
    assert len(_runs(project)) == 1  # the refused run opened no MLflow run


@pytest.mark.slow
def test_inference_runs_while_a_training_run_holds_the_lock(project, tmp_path):
    folder = tmp_path / "incoming"
    write_photo(folder / "a.png", seed=1, size=(64, 64))
    with exclusive_lock(project / "data" / ".run.lock", "kedro run --pipelines __default__") as held:
        assert held
        params = f"inference_dir={folder},inference.model_uri=models:/image_classifier/1"
        result = _run(project, str(BIN / "kedro"), "run", "--pipelines", "inference", "--params", params)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert list(predictions["file"]) == ["a.png"]


@pytest.mark.slow
def test_a_killed_run_is_marked_killed_by_the_next_run_and_its_lock_is_gone(project, tmp_path):
    earlier = {r.info.run_id: r.info.status for r in _runs(project)}
    log = tmp_path / "victim.log"
    victim = _start(project, log, str(BIN / "kedro"), "run", "--params", RUN_PARAMS)

    def runs_of_victim():
        return [r for r in _runs(project) if r.data.tags.get(TAG_PID) == str(victim.pid)]

    _wait_for(lambda: [r.info.status for r in runs_of_victim()] == ["RUNNING"], victim, log)
    time.sleep(1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not psutil.pid_exists(victim.pid)
    (ghost,) = runs_of_victim()
    assert ghost.info.status == "RUNNING"  # nothing closes it by itself
    assert ghost.data.tags[TAG_HOST] == socket.gethostname() and ghost.data.tags[TAG_STARTED]

    after = _run(project, str(BIN / "kedro"), "run", "--pipelines", "ingestion")
    assert after.returncode == 0, after.stderr[-3000:]  # the OS released the dead run's lock
    ghost = _client(project).get_run(ghost.info.run_id)
    assert ghost.info.status == "KILLED"
    reason = ghost.data.tags[TAG_KILLED_REASON]
    assert f"process {victim.pid} on host {socket.gethostname()} ended without closing the run" in reason
    statuses = {r.info.run_id: r.info.status for r in _runs(project)}
    assert {run_id: statuses[run_id] for run_id in earlier} == earlier  # finished runs untouched
    assert "RUNNING" not in statuses.values() and len(statuses) == len(earlier) + 2


@pytest.mark.slow
def test_the_scheduled_command_exits_75_while_a_run_holds_the_lock(project):
    before = len(_runs(project))
    with exclusive_lock(project / "data" / ".run.lock", "kedro run --pipelines __default__"):
        result = _run(project, str(BIN / "image-classifier-retrain"), timeout=120)
    assert result.returncode == LOCKED, result.stderr[-3000:]
    assert f"pid {os.getpid()} (kedro run --pipelines __default__) holds" in result.stderr
    assert "Traceback" not in result.stderr and len(_runs(project)) == before


@pytest.mark.slow
def test_a_lock_file_setting_pointing_at_a_user_file_is_refused_and_the_file_kept(project):
    notes = project / "notes.txt"
    notes.write_text("my notes: do not lose\n")
    result = _run(
        project,
        str(BIN / "image-classifier-retrain"),
        "--params",
        "retraining.lock_file=notes.txt",
        timeout=120,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"{notes} already exists and is not a lock file" in result.stderr
    assert "Traceback" not in result.stderr and notes.read_text() == "my notes: do not lose\n"


@pytest.mark.slow
def test_a_kedro_run_during_a_retraining_is_refused_and_the_retraining_ends(tmp_path, tiny_demo):
    fresh = scratch_project(tmp_path / "retrain", tiny_demo)
    log = tmp_path / "retrain.log"
    retraining = _start(fresh, log, str(BIN / "image-classifier-retrain"), "--params", RUN_PARAMS)
    _wait_for(_holds_run_lock(fresh, retraining.pid), retraining, log)
    refused = _run(fresh, str(BIN / "kedro"), "run", "--pipelines", "ingestion")
    assert retraining.poll() is None, "the retraining ended before the run was refused: no overlap tested"
    # Its child ingestion ran under the inherited lock: no deadlock, no refusal.
    assert retraining.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert refused.returncode == LOCKED, refused.stderr[-3000:]
    assert f"pid {retraining.pid} (image-classifier-retrain) holds" in refused.stderr
    (run,) = _runs(fresh)
    assert run.data.tags["promotion.decision"] == "promoted" and run.data.tags[TAG_PID] == str(retraining.pid)


@pytest.mark.slow
def test_a_corrupt_mlflow_db_stops_kedro_run_with_one_line(tmp_path):
    bare = scratch_project(tmp_path / "bare")
    garbage = os.urandom(8192)
    (bare / "mlflow.db").write_bytes(garbage)
    result = _run(bare, str(BIN / "kedro"), "run", "--pipelines", "ingestion", timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"the MLflow store {bare / 'mlflow.db'} is not a readable" in errors[0]
    assert "mlflow.db.corrupt" in errors[0] and "Traceback" not in result.stdout + result.stderr
    assert (bare / "mlflow.db").read_bytes() == garbage
