"""One unattended retraining, for cron, systemd timers and orchestrators: ``make retrain``, or
``image-classifier-retrain [--env ENV] [--params "a.b=1,c=2"]`` from the project root.

- It holds ``retraining.lock_file`` (an OS lock, released even if the process is killed), so a
  second invocation while one runs exits at once with code 75; and the project's run lock
  (``data/.run.lock``, see ``runs.py``), so it also exits with 75 while a ``kedro run`` that writes
  data runs, and such a ``kedro run`` is refused while it retrains.
- It is idempotent: it ingests first (seconds, untracked, in a child ``kedro run --pipelines
  retraining_check``: kedro-mlflow keeps per-process state that would otherwise re-open the last
  tracked run for an untracked pipeline) and, when an earlier retraining had
  exactly this data and these training parameters, records a skipped run in MLflow and stops,
  with no backbone work. Otherwise it runs the ``retraining`` pipeline, whose last step promotes
  the challenger only if it beats the champion.
- Exit codes: 0 done (promoted, kept or skipped), 1 failed, 75 another retraining or run holds a lock.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from omegaconf import OmegaConf

from image_classifier.config import validate_parameters
from image_classifier.datasets.model_registry import champion
from image_classifier.errors import ProjectError, RunInProgress, find_project_error
from image_classifier.promotion import training_fingerprint
from image_classifier.runs import (
    describe_holder,
    exclusive_lock,
    inheritable_run_lock,
    process_tags,
    run_lock,
)
from image_classifier.tracking import CHAMPION_ALIAS, REGISTERED_MODEL_NAME

EXIT_OK, EXIT_FAILED, EXIT_LOCKED = 0, 1, RunInProgress.exit_code
logger = logging.getLogger("image_classifier.retrain")


class RetrainError(ProjectError):
    """A step of the retraining job failed; the message carries what it printed."""


def _runtime_params(dotted: str | None) -> dict[str, Any]:
    items = [item for item in (dotted or "").split(",") if item.strip()]
    return OmegaConf.to_container(OmegaConf.from_dotlist(items)) if items else {}


def retrain(project: Path, env: str | None = None, params: dict[str, Any] | None = None) -> int:
    """The whole job; returns the exit code. Errors propagate to ``main``."""
    bootstrap_project(project)

    def session() -> KedroSession:
        return KedroSession.create(project_path=project, env=env, runtime_params=params or {})

    with session() as first:
        lock = project / validate_parameters(first.load_context().params).retraining.lock_file
    with exclusive_lock(lock, "image-classifier-retrain") as acquired:
        if not acquired:
            holder = describe_holder(lock)
            print(f"retraining is already running ({holder} holds {lock}); exiting", file=sys.stderr)
            return EXIT_LOCKED
        # The project's run lock, held from the ingestion to the end: a `kedro run` started
        # meanwhile is refused (75) instead of rewriting the image index this job reads. The
        # child ingestion inherits it; the sessions below run under it (run_lock is re-entrant).
        with run_lock(project, "image-classifier-retrain"):
            _ingest_untracked(project, env, params or {})
            with session() as check:
                context = check.load_context()
                fingerprint = training_fingerprint(context.catalog.load("image_index"), context.params)
                experiment = context.config_loader["mlflow"]["tracking"]["experiment"]["name"]
            current = champion(REGISTERED_MODEL_NAME, CHAMPION_ALIAS)
            earlier = _retrained_on(experiment, fingerprint)
            if current["version"] is not None and earlier is not None:
                _record_skip(current["version"], earlier, fingerprint)
                return EXIT_OK
            with session() as full:
                full.run(pipeline_names=["retraining"])
    return EXIT_OK


def _ingest_untracked(project: Path, env: str | None, params: dict[str, Any]) -> None:
    """Refresh the image index with the untracked ``retraining_check`` pipeline (ingestion only)."""
    command = [sys.executable, "-m", "image_classifier", "--pipelines", "retraining_check"]
    command += ["--env", env] if env else []
    dotted = _dotlist(params)
    command += ["--params", ",".join(dotted)] if dotted else []
    env_with_lock, lock_fds = inheritable_run_lock(project)
    # Its output (progress, the ingestion summary, a data error) goes straight to the user.
    result = subprocess.run(command, cwd=project, env=env_with_lock, pass_fds=lock_fds, check=False)
    if result.returncode != 0:
        raise RetrainError(f"ingestion failed (exit {result.returncode}); its message is above")


def _dotlist(params: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"a": {"b": 1}}`` → ``["a.b=1"]``, the form of ``kedro run --params``."""
    items = []
    for key, value in params.items():
        if isinstance(value, dict):
            items += _dotlist(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}={value}")
    return items


def _retrained_on(experiment: str, fingerprint: dict[str, str]) -> mlflow.entities.Run | None:
    """The latest finished retraining with exactly these inputs, promoted or not: retraining again
    would only repeat it (and a challenger that lost once would lose again every night)."""
    conditions = [f"tags.`promotion.{key}` = '{value}'" for key, value in fingerprint.items()]
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=" and ".join(
            [*conditions, "tags.`promotion.decision` != 'skipped'", "attributes.status = 'FINISHED'"]
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def _record_skip(version: str, earlier: mlflow.entities.Run, fingerprint: dict[str, str]) -> None:
    decision = earlier.data.tags.get("promotion.decision", "?")
    reason = f"same data and parameters as run {earlier.info.run_id} ({decision}); champion stays v{version}"
    with mlflow.start_run(run_name="retraining"):
        mlflow.set_tags(
            {
                "promotion.decision": "skipped",
                "promotion.reason": reason,
                "promotion.champion_version": version,
                **{f"promotion.{key}": value for key, value in fingerprint.items()},
                **process_tags(),
            }
        )
        mlflow.log_metrics({"features.computed": 0, "features.reused": 0})
    print(f"Retraining skipped: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="image-classifier-retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="Kedro configuration environment (default: local)")
    parser.add_argument("--params", help='runtime parameters, as for kedro run: "a.b=1,c=2"')
    args = parser.parse_args(argv)
    try:
        return retrain(Path.cwd(), args.env, _runtime_params(args.params))
    except Exception as error:
        problem = find_project_error(error)
        if problem is None:
            raise
        print(f"Error: {problem}", file=sys.stderr)
        return problem.exit_code  # EXIT_FAILED, or EXIT_LOCKED when a run holds the project


if __name__ == "__main__":
    sys.exit(main())
