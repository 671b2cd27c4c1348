"""Project hooks: parameters, backbone weights, feature engine, tracking server and sqlite store
checked before any work; one writing run at a time per project, and runs left RUNNING by killed
processes closed; wall time per stage (console and MLflow)."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from mlflow.tracking import MlflowClient

from image_classifier import engines, run_summary
from image_classifier.backbones import check_weights_available
from image_classifier.config import (
    ParameterError,
    Parameters,
    check_catalog_settings,
    sweep_namespace,
    validate_parameters,
)
from image_classifier.datasets.model_registry import CHAMPION_ALIAS, crown_if_none
from image_classifier.errors import ProjectError
from image_classifier.promotion import params_digest
from image_classifier.runs import check_sqlite_store, mark_ghost_runs_quietly, process_tags, run_lock

logger = logging.getLogger(__name__)


class TrackingServerError(ProjectError):
    """The configured MLflow tracking server does not answer."""


class ValidateParametersHook:
    """Reject bad or unknown parameters before any node runs, and a backbone whose weights this
    machine cannot get before the run does any heavy work."""

    def __init__(self) -> None:
        self._params: Parameters | None = None
        self._tag_backbone = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        raw = context.config_loader["parameters"]
        check_catalog_settings(raw, context.config_loader.runtime_params or {})
        self._params = validate_parameters(raw)

    # tryfirst: a refusal here must come before kedro-mlflow opens the run, or that run would be
    # left open (no pipeline-error hook fires for a failing before_pipeline_run).
    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        if self._params is None:
            return
        params = self._params
        wanted: dict[str, str | None] = {}
        if any("params:backbone" in n.inputs for n in pipeline.nodes if not _in_sweep(n)):
            wanted[params.backbone.name] = params.backbone.weights
        swept = {n.namespace for n in pipeline.nodes if _in_sweep(n)}
        if swept:
            expected = {sweep_namespace(name) for name in params.sweep.backbones}
            if swept != expected:
                raise ParameterError(
                    "sweep.backbones decides the sweep pipeline's shape and is read from conf/ when "
                    "pipelines are registered: set it in conf/local/parameters_sweep.yml (or "
                    "conf/<env>/ with --env) rather than with --params (pipeline has "
                    f"{sorted(swept)}, parameters ask for {sorted(expected)})"
                )
            wanted.update({name: params.sweep.weights.get(name) for name in params.sweep.backbones})
        for name, weights in wanted.items():
            check_weights_available(name, weights)
        if any("params:features" in n.inputs for n in pipeline.nodes):
            engines.resolve(params.features.engine)
        self._tag_backbone = bool(wanted) and not swept

    @hook_impl
    def before_node_run(self) -> None:
        # backbone.input_size may be null (the native size) in the logged params: tag what ran.
        if self._tag_backbone and self._params is not None and mlflow.active_run() is not None:
            backbone = self._params.backbone
            mlflow.set_tags(
                {
                    "backbone": f"{backbone.name}@{backbone.input_size}",
                    "engine": engines.resolve(self._params.features.engine),  # what `auto` chose
                }
            )
            self._tag_backbone = False


def _in_sweep(node: Node) -> bool:
    return (node.namespace or "").startswith("sweep.")


class MissingInputError(ProjectError):
    """A stage run alone whose inputs an earlier stage has not written yet."""


class MissingInputsHook:
    """Before a partial run (``kedro run --pipelines evaluation``), name each input that an
    earlier stage writes and that is not there yet, with the stage to run first: Kedro's own
    error, from the first node that loads it, is a dataset's repr and an errno."""

    # tryfirst: before kedro-mlflow opens a run that this refusal would leave open.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Pipeline, catalog: Any) -> None:
        producers = {name: p for name, p in pipelines.items() if name != "__default__"}
        missing = []
        for name in sorted(pipeline.inputs()):
            makers = [stage for stage, p in producers.items() if name in p.outputs()]
            if not makers or catalog.exists(name):
                continue
            # The smallest pipeline that writes it: the stage itself, not a composite.
            stage = min(makers, key=lambda stage: (len(producers[stage].nodes), stage))
            missing.append(f"  - {name}: written by the {stage} stage (kedro run --pipelines {stage})")
        if missing:
            raise MissingInputError(
                "This run needs outputs of earlier stages that are not there yet; run those stages "
                "first, or everything with `kedro run`:\n" + "\n".join(missing)
            )


class TrackingServerHook:
    """Stop at once, with a clear message, when the MLflow tracking server cannot be reached:
    MLflow would otherwise retry each request for minutes, or fail after hours of training."""

    @hook_impl(tryfirst=True)  # before kedro-mlflow's own set-up talks to the server
    def after_context_created(self, context: Any) -> None:
        uri = str(context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"])
        parsed = urlparse(uri)
        if parsed.scheme not in ("http", "https"):
            return
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as error:
            raise TrackingServerError(
                f"MLflow tracking server {uri} is unreachable ({error}). Start it, or point "
                "MLFLOW_TRACKING_URI (or conf/*/mlflow.yml) at one that runs."
            ) from None


class SqliteStoreHook:
    """Stop with one line naming the file when the sqlite MLflow store is corrupt: MLflow's own
    failure is a traceback of hundreds of lines that never says which file is at fault."""

    @hook_impl(tryfirst=True)  # before kedro-mlflow's own set-up opens the store
    def after_context_created(self, context: Any) -> None:
        check_sqlite_store(str(context.config_loader["mlflow"]["server"]["mlflow_tracking_uri"]))


class RunLockHook:
    """One run that writes the project's data at a time: a second one is refused at once (exit
    code 75) rather than reading the first one's half-written files. Runs made only of
    ``inference`` nodes write no shared data and are never blocked. The run holding the lock also
    closes the MLflow runs that killed processes left RUNNING."""

    def __init__(self) -> None:
        self._project: Path | None = None
        self._experiment: str | None = None
        self._hold = ExitStack()

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._project = Path(context.project_path)
        self._experiment = context.config_loader["mlflow"]["tracking"]["experiment"]["name"]

    # tryfirst, as ValidateParametersHook: the refusal and the clean-up come before kedro-mlflow
    # opens the new run. Registered before it in settings.HOOKS, so it runs after the validation:
    # a rejected parameter never leaves the lock held in a notebook's process.
    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._hold.close()  # a hold left by a run that failed before it started
        if self._project is None or not _writes_data(pipeline):
            return
        names = "+".join(run_params.get("pipeline_names") or ["__default__"])
        self._hold.enter_context(run_lock(self._project, f"kedro run --pipelines {names}"))
        if self._experiment:
            # kedro-mlflow has set the tracking URI in after_context_created.
            mark_ghost_runs_quietly(MlflowClient(mlflow.get_tracking_uri()), self._experiment)

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._hold.close()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._hold.close()


def _writes_data(pipeline: Pipeline) -> bool:
    """Whether any node is outside the registered ``inference`` pipeline, the one read-only stage."""
    inference = pipelines.get("inference")
    read_only = {n.name for n in inference.nodes} if inference is not None else set()
    return any(n.name not in read_only for n in pipeline.nodes)


class RunProcessTagsHook:
    """Tag each tracked run with the pid, host and start time of its process (``run.pid``,
    ``run.host``, ``run.started``): what tells a later run that this one's process has died."""

    @hook_impl(trylast=True)  # after kedro-mlflow's before_pipeline_run has opened the run
    def before_pipeline_run(self) -> None:
        if mlflow.active_run() is not None:
            mlflow.set_tags(process_tags())


class SystemMetricsHook:
    """MLflow's system metrics (CPU, memory, disk, network; ``system/*``) for every run that
    trains or writes data, sampled in a background thread while the run is open. Set
    ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` to turn them off."""

    def __init__(self) -> None:
        # Read once: MLflow's own switch functions set that same variable.
        setting = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "")
        self._turned_off = setting.lower() in ("false", "0")

    @hook_impl(tryfirst=True)  # MLflow reads the switch when kedro-mlflow starts the run
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        if self._turned_off:
            return
        if _writes_data(pipeline):
            mlflow.enable_system_metrics_logging()
        else:
            mlflow.disable_system_metrics_logging()


class RunSummaryHook:
    """Names each tracked run by what differs (``default · mobilenet_v2@224 · ft40 · 3 views``),
    keeps Kedro's tags readable, times each stage (console and ``diagnostics/time.<stage>_s``),
    and, when the run ends, writes its description (``mlflow.note.content``: data, results, stage
    times, changes since the previous run of the pipeline) and describes the version it
    registered. The first version ever registered becomes the champion when the pipeline has no
    promotion step of its own, so that `make serve` works after the first `make run`.

    A node's stage is the tag it shares with a registered pipeline's name (each stage pipeline
    tags its nodes with its own name), so new stages need no change here."""

    def __init__(self) -> None:
        self._params: Parameters | None = None
        self._started: dict[str, float] = {}
        self._seconds: dict[str, float] = defaultdict(float)
        self._stage_names: frozenset[str] = frozenset()
        self._pipeline_name = "__default__"

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        try:
            self._params = validate_parameters(context.params)
        except ParameterError:
            self._params = None  # ValidateParametersHook stops the run with the message

    # trylast: after kedro-mlflow has opened the run and copied Kedro's run parameters to tags.
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._started.clear()
        self._seconds.clear()
        self._stage_names = frozenset(pipelines.keys())
        self._pipeline_name = "+".join(run_params.get("pipeline_names") or ["__default__"])
        run = mlflow.active_run()
        if run is None or self._params is None:
            return
        client = MlflowClient()
        tags = client.get_run(run.info.run_id).data.tags  # the active run's own copy predates them
        for old in run_summary.RENAMED_TAGS:
            if old in tags:
                client.delete_tag(run.info.run_id, old)
        experiment = client.get_experiment(run.info.experiment_id)
        if run_summary.EXPERIMENT_KIND_TAG not in experiment.tags:
            # Without it, MLflow 3's UI opens the experiment on its GenAI (traces) views.
            client.set_experiment_tag(
                experiment.experiment_id, run_summary.EXPERIMENT_KIND_TAG, run_summary.EXPERIMENT_KIND
            )
        reads = run_summary.read_sections(name for n in pipeline.nodes for name in n.inputs)
        mlflow.set_tags(
            {
                "mlflow.runName": run_summary.run_name(self._pipeline_name, self._params, reads),
                run_summary.PIPELINE_TAG: self._pipeline_name,
                "kedro.session_id": str(run_params.get("run_id")),
                "kedro.runner": _runner_name(str(run_params.get("runner"))),
            }
        )

    def _stage(self, node: Node) -> str:
        return min(node.tags & self._stage_names, default="other")

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        self._seconds[self._stage(node)] += time.perf_counter() - self._started.pop(node.name)

    # tryfirst: kedro-mlflow closes the run in its own after_pipeline_run.
    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline: Pipeline, catalog: Any) -> None:
        self._finish(pipeline, catalog, failure=None)

    @hook_impl(tryfirst=True)
    def on_pipeline_error(self, error: Exception, pipeline: Pipeline, catalog: Any) -> None:
        self._finish(
            pipeline, catalog, failure=str(error).splitlines()[0][:300] if str(error) else repr(error)
        )

    def _finish(self, pipeline: Pipeline, catalog: Any, failure: str | None) -> None:
        if self._seconds:
            lines = [f"  {stage:<13} {seconds:8.1f} s" for stage, seconds in self._seconds.items()]
            lines.append(f"  {'total':<13} {sum(self._seconds.values()):8.1f} s")
            logger.info("Stage wall times:\n%s", "\n".join(lines))
        active = mlflow.active_run()
        if active is None:
            return
        try:
            self._describe(active.info.run_id, pipeline, catalog, failure)
        except Exception as error:  # noqa: BLE001 - a summary must never fail a finished run
            logger.warning("Could not write the run's MLflow description: %s", error)

    def _describe(self, run_id: str, pipeline: Pipeline, catalog: Any, failure: str | None) -> None:
        seconds = {stage: round(value, 2) for stage, value in self._seconds.items()}
        mlflow.log_metrics({f"{run_summary.DIAGNOSTICS_PREFIX}time.{s}_s": v for s, v in seconds.items()})
        client = MlflowClient()
        run = _plain(client.get_run(run_id))
        registered = None
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        for version in versions:
            client.update_model_version(
                version.name, version.version, run_summary.version_description(run, run_id)
            )
            for key, value in run_summary.version_tags(run).items():
                client.set_model_version_tag(version.name, version.version, key, value)
            registered = f"registered as `{version.name}` v{version.version}"
            if "promotion" not in pipeline.all_outputs() and crown_if_none(version.name, version.version):
                registered += f" and made `{CHAMPION_ALIAS}` (the first model of the project)"
        counts = None
        # The images the models were trained on, when the audit left some out.
        used = [name for name in ("training_index", "image_index") if name in pipeline.datasets()]
        if used and catalog.exists(used[0]):
            index = catalog.load(used[0])
            counts = index["split"].value_counts().reindex(["train", "validation", "test"]).dropna()
            counts = {split: int(n) for split, n in counts.items()}
        previous = _previous_run(client, run, run_id)
        client.set_tag(
            run_id,
            "mlflow.note.content",
            run_summary.describe(run, counts, seconds, previous, registered, failure),
        )


def _runner_name(text: str) -> str:
    """``<kedro.runner.sequential_runner.SequentialRunner object at 0x7f…>`` → ``SequentialRunner``:
    Kedro hands the runner over as its repr."""
    found = re.search(r"(\w+) object at 0x", text)
    # "None" when the session was given no runner: Kedro then runs the sequential one.
    return found.group(1) if found else "SequentialRunner" if text == "None" else text


def _plain(run: mlflow.entities.Run) -> dict[str, Any]:
    return {
        "name": run.info.run_name,
        "params": dict(run.data.params),
        "metrics": dict(run.data.metrics),
        "tags": dict(run.data.tags),
        "start_time": run.info.start_time,
    }


def _previous_run(client: MlflowClient, run: dict[str, Any], run_id: str) -> dict[str, Any] | None:
    """The last finished run of the same pipeline before this one, or None."""
    pipeline = run["tags"].get(run_summary.PIPELINE_TAG)
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_runs(
        [experiment],
        filter_string=f"tags.`{run_summary.PIPELINE_TAG}` = '{pipeline}' and attributes.status = 'FINISHED' "
        f"and attributes.start_time < {run['start_time']}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return _plain(found[0]) if found else None


class ParamsDigestHook:
    """Puts ``params_digest`` (see ``promotion.params_digest``) in the catalog: the nodes that
    stamp a model with its fingerprint, and those that check one, read it from there rather
    than taking every parameter as an input, which kedro-mlflow would log a second time."""

    @hook_impl
    def after_catalog_created(self, catalog: Any, parameters: dict[str, Any]) -> None:
        # save, not assignment: assigning replaces the catalog's declared MemoryDataset, with a warning.
        catalog.save("params_digest", params_digest(parameters["parameters"]))
