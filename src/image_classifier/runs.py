"""Keeping the runs of one project apart, and cleaning up after runs that were killed.

- ``exclusive_lock``: an OS lock (``flock``) on a lock file of ours. The OS drops it when the holder
  ends, even on ``kill -9``, so a stale file never blocks anyone. A path that holds anything else
  (a user's file, a symlink, a folder) is refused, never truncated.
- ``run_lock``: the project's run lock, ``data/.run.lock``, held by every run that writes the
  project's data, so that two runs never read each other's half-written files.
- ``process_tags`` and ``mark_ghost_runs``: each tracked run records which process runs it, so a
  later run can tell a run whose process died (still RUNNING in MLflow) from one still going.
- ``check_sqlite_store``: a clear message for a corrupt ``mlflow.db`` instead of MLflow's traceback.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import psutil
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from image_classifier.errors import ProjectError, RunInProgress

logger = logging.getLogger(__name__)

LOCK_MARKER = "image_classifier lock"
RUN_LOCK_FILE = "data/.run.lock"
# A parent that holds the run lock (the retraining job) hands it to the child run it starts: the
# child gets the locked file descriptor (pass_fds) and its number in this variable.
INHERITED_LOCK_ENV = "IMAGE_CLASSIFIER_RUN_LOCK_FD"

TAG_PID, TAG_HOST, TAG_STARTED = "run.pid", "run.host", "run.started"
TAG_KILLED_REASON = "run.killed_reason"

SQLITE_HEADER = b"SQLite format 3\x00"

# Lock files this process holds, by absolute path, and their file descriptors.
_held: dict[Path, int] = {}


class LockFileError(ProjectError):
    """A lock file path points at something that is not a lock file of ours."""


class CorruptStoreError(ProjectError):
    """The sqlite MLflow store is not a readable SQLite database."""


@contextmanager
def exclusive_lock(path: Path, holder: str = "") -> Iterator[bool]:
    """Yield whether this process got the lock on ``path`` (never waits). While held, the file
    records the marker, this pid and ``holder`` (what runs). Raises ``LockFileError`` when ``path``
    is not a lock file of ours; its content is then left exactly as it was."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    _refuse_non_regular(path)
    try:
        # No O_TRUNC: the file is emptied only once it is locked and known to be ours.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise LockFileError(f"cannot use {path} as a lock file ({error.strerror})") from None
    try:
        _refuse_foreign(path, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, _record(holder).encode(), 0)
        _held[path] = fd
        try:
            yield True
        finally:
            del _held[path]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _refuse_non_regular(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise LockFileError(f"{path} is {kind}, not a lock file of image_classifier: choose another path")


def _refuse_foreign(path: Path, fd: int) -> None:
    # Checked again on the open descriptor: the path could have changed since lstat.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise LockFileError(f"{path} is not a regular file, not a lock file of image_classifier")
    head = os.pread(fd, len(LOCK_MARKER), 0)
    if head and head != LOCK_MARKER.encode():
        raise LockFileError(
            f"{path} already exists and is not a lock file of image_classifier (it does not start "
            f"with '{LOCK_MARKER}'): left as it is; point the lock at another path or move the file"
        )


def _record(holder: str) -> str:
    since = datetime.now().isoformat(timespec="seconds")
    return f"{LOCK_MARKER}\npid {os.getpid()}\n{holder}\nsince {since}\n"


def describe_holder(path: Path) -> str:
    """``pid 1234 (kedro run --pipelines __default__)``: who holds ``path``, from its record."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    pid = lines[1].removeprefix("pid ") if len(lines) > 1 else "?"
    what = f" ({lines[2]})" if len(lines) > 2 and lines[2] else ""
    return f"pid {pid}{what}"


def run_lock_path(project: Path) -> Path:
    return project.resolve() / RUN_LOCK_FILE


@contextmanager
def run_lock(project: Path, holder: str) -> Iterator[None]:
    """Hold the project's run lock; raise ``RunInProgress`` (exit code 75) at once when another
    process holds it. Re-entrant: a session inside a process that holds it (or that was handed it
    by its parent, see ``inheritable_run_lock``) runs under that hold."""
    path = run_lock_path(project)
    if path in _held or _inherited(path):
        yield
        return
    with exclusive_lock(path, holder) as acquired:
        if not acquired:
            raise RunInProgress(
                f"another run is in progress in this project: {describe_holder(path)} holds {path}; "
                "try again when it has ended"
            )
        yield


def inheritable_run_lock(project: Path) -> tuple[dict[str, str], tuple[int, ...]]:
    """The environment and file descriptors that hand this process's run lock to a child, for
    ``subprocess.run(..., env=env, pass_fds=fds)``. The lock then stays held between the child and
    what this process does next: a run from elsewhere cannot slip in between."""
    fd = _held[run_lock_path(project)]
    return {**os.environ, INHERITED_LOCK_ENV: str(fd)}, (fd,)


def _inherited(path: Path) -> bool:
    """Whether the parent handed this process the lock on ``path``: the descriptor it names is that
    very file, and locking it succeeds because the lock is already ours (same open file)."""
    try:
        fd = int(os.environ[INHERITED_LOCK_ENV])
        same = os.path.samestat(os.fstat(fd), path.stat())
        if same:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return same
    except (KeyError, ValueError, OSError):
        return False


def process_tags() -> dict[str, str]:
    """Tags that say which process runs an MLflow run, so a later run can tell if it died."""
    me = psutil.Process()
    return {TAG_PID: str(me.pid), TAG_HOST: socket.gethostname(), TAG_STARTED: f"{me.create_time():.2f}"}


def _process_gone(pid: int, started: float) -> bool:
    try:
        process = psutil.Process(pid)
        # A different start time is another process that got the same pid after ours ended.
        return process.status() == psutil.STATUS_ZOMBIE or abs(process.create_time() - started) > 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not ours to inspect: leave its run alone
        return False


def mark_ghost_runs(client: MlflowClient, experiment_name: str) -> list[str]:
    """Mark KILLED the RUNNING runs of ``experiment_name`` whose process on this host has ended
    (killed, out of memory, power cut) and return their ids. Runs of live processes, of other
    hosts, or without process tags are left alone."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    host = socket.gethostname()
    candidates = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
        max_results=1000,
    )
    marked = []
    stamp = datetime.now().isoformat(timespec="seconds")
    for run in candidates:
        try:
            pid, started = int(run.data.tags[TAG_PID]), float(run.data.tags[TAG_STARTED])
        except (KeyError, ValueError):
            continue
        if not _process_gone(pid, started):
            continue
        reason = (
            f"process {pid} on host {host} ended without closing the run; "
            f"marked KILLED by the run of {stamp} (pid {os.getpid()})"
        )
        client.set_tag(run.info.run_id, TAG_KILLED_REASON, reason)
        client.set_terminated(run.info.run_id, "KILLED")
        logger.warning("MLflow run %s (%s) marked KILLED: %s", run.info.run_id, run.info.run_name, reason)
        marked.append(run.info.run_id)
    return marked


def mark_ghost_runs_quietly(client: MlflowClient, experiment_name: str) -> None:
    """``mark_ghost_runs``, where a failure is only logged: cleaning up must not stop a run."""
    try:
        mark_ghost_runs(client, experiment_name)
    except MlflowException as error:
        logger.warning("Could not look for runs left RUNNING by killed processes: %s", error)


def sqlite_store_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (relative to the working directory, as SQLAlchemy reads
    it), or None for any other store or an in-memory database."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    location = uri[len(prefix) :].split("?", 1)[0]
    return Path(location) if location and location != ":memory:" else None


def check_sqlite_store(uri: str) -> None:
    """Raise ``CorruptStoreError`` when ``uri`` is a sqlite store whose file exists but is not a
    readable SQLite database. Read-only: the file is never changed."""
    path = sqlite_store_path(uri)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return  # MLflow creates a missing (or empty) store itself
    problem = _sqlite_problem(path)
    if problem is not None:
        raise CorruptStoreError(
            f"the MLflow store {path} is not a readable SQLite database ({problem}): move it aside "
            f"(mv {path} {path}.corrupt), then restore a backup of it or run again to start a fresh, "
            "empty store"
        )


def _sqlite_problem(path: Path) -> str | None:
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return "no SQLite header"
    # mode=ro: checking must never write (no journal, no schema change) to the user's store.
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=10)) as connection:
            rows = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            return None  # another run is writing to it: busy, not corrupt
        return str(error)
    except sqlite3.DatabaseError as error:
        return str(error)
    return None if rows == [("ok",)] else f"quick_check: {rows[0][0]}"
