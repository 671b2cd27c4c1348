"""Copy a tracking store's experiment and registered models to another store (the local
``mlflow.db`` to a team's server): MLflow has no sqlite → PostgreSQL command, and copying through
the client API works between any two stores, a server's included.

What is copied: every run of the experiment (name, tags and description, parameters, each
metric's full history, status and times, artifacts), and every version of the registered models
those runs logged, with its tags, description and aliases (an alias the destination already holds
is left where it is). Each copied run is tagged
``migrated_from`` with its old id, so a second migration skips what the first one copied.
Not copied: dataset inputs (the runs keep their ``dataset_digest`` tag) and MLflow 3's logged-model
entities (the version's files are copied, and the version points at them).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

_BATCH = 900  # MLflow accepts at most 1000 metrics (and 100 params) per log_batch call
_MIGRATED_FROM = "migrated_from"


def migrate(source: str, destination: str, experiment: str = "image_classifier") -> dict[str, int]:
    """Copy ``experiment`` and its registered model versions from ``source`` to ``destination``
    (tracking URIs); the numbers of runs and versions copied."""
    src, dst = mlflow.MlflowClient(source), mlflow.MlflowClient(destination)
    found = src.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"{source} has no experiment {experiment!r}: nothing to migrate")
    target = dst.get_experiment_by_name(experiment)
    target_id = target.experiment_id if target else dst.create_experiment(experiment, tags=found.tags)
    copied = _copied_runs(dst, target_id)
    runs = src.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"], max_results=50_000)
    new_ids: dict[str, str] = {}
    for run in runs:
        new_ids[run.info.run_id] = copied.get(run.info.run_id) or _copy_run(src, dst, run, target_id)
    versions = 0
    for name in {v.name for run_id in new_ids for v in src.search_model_versions(f"run_id = '{run_id}'")}:
        versions += _copy_model(src, dst, name, new_ids, source)
    return {"runs": len(new_ids) - len(copied), "versions": versions}


def _copied_runs(dst: mlflow.MlflowClient, experiment_id: str) -> dict[str, str]:
    done = dst.search_runs([experiment_id], f"tags.{_MIGRATED_FROM} != ''", max_results=50_000)
    return {run.data.tags[_MIGRATED_FROM]: run.info.run_id for run in done}


def _copy_run(src: mlflow.MlflowClient, dst: mlflow.MlflowClient, run, experiment_id: str) -> str:
    tags = {**run.data.tags, _MIGRATED_FROM: run.info.run_id}
    new = dst.create_run(experiment_id, start_time=run.info.start_time, tags=tags, run_name=run.info.run_name)
    run_id = new.info.run_id
    params = [Param(key, value) for key, value in run.data.params.items()]
    metrics = [m for key in run.data.metrics for m in src.get_metric_history(run.info.run_id, key)]
    for start in range(0, len(params), 100):
        dst.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(metrics), _BATCH):
        batch = [Metric(m.key, m.value, m.timestamp, m.step) for m in metrics[start : start + _BATCH]]
        dst.log_batch(run_id, metrics=batch)
    with tempfile.TemporaryDirectory() as scratch:
        if src.list_artifacts(run.info.run_id):
            local = src.download_artifacts(run.info.run_id, "", scratch)
            dst.log_artifacts(run_id, local)
    dst.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
    return run_id


def _copy_model(src, dst, name: str, new_ids: dict[str, str], source: str) -> int:
    try:
        dst.get_registered_model(name)
    except MlflowException:
        model = src.get_registered_model(name)
        dst.create_registered_model(name, tags=model.tags, description=model.description)
    already = {v.tags.get(_MIGRATED_FROM) for v in dst.search_model_versions(f"name = '{name}'")}
    mapping: dict[str, str] = {}
    for version in sorted(src.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        if version.run_id not in new_ids or f"{version.run_id}/{version.version}" in already:
            continue
        run_id = new_ids[version.run_id]
        path = f"registered_model/v{version.version}"
        # The version's files by their own URI: a models:/ URI would be looked up in the registry
        # of the environment's tracking URI, not in ``source``'s.
        files = src.get_model_version_download_uri(name, version.version)
        with tempfile.TemporaryDirectory() as scratch:
            local = mlflow.artifacts.download_artifacts(files, dst_path=scratch, tracking_uri=source)
            dst.log_artifacts(run_id, local, path)
        tags = {**version.tags, _MIGRATED_FROM: f"{version.run_id}/{version.version}"}
        copy = dst.create_model_version(
            name,
            f"{dst.get_run(run_id).info.artifact_uri}/{path}",
            run_id,
            tags,
            description=version.description,
        )
        mapping[str(version.version)] = str(copy.version)
    # An alias the destination already has stays: its champion was chosen there.
    held = dst.get_registered_model(name).aliases
    for alias, version in src.get_registered_model(name).aliases.items():
        if str(version) in mapping and alias not in held:
            dst.set_registered_model_alias(name, alias, mapping[str(version)])
    return len(mapping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="tracking URI to copy from, e.g. sqlite:///mlflow.db")
    parser.add_argument("destination", help="tracking URI to copy to, e.g. http://tracking-host:5050")
    parser.add_argument("--experiment", default="image_classifier")
    args = parser.parse_args()
    if (
        Path(args.source.removeprefix("sqlite:///")).suffix == ".db"
        and not Path(args.source.removeprefix("sqlite:///")).exists()
    ):
        raise SystemExit(f"{args.source}: no such store")
    counts = migrate(args.source, args.destination, args.experiment)
    print(f"copied {counts['runs']} runs and {counts['versions']} model versions to {args.destination}")


if __name__ == "__main__":
    main()
