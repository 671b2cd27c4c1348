"""Project hooks: parameters, backbone weights, feature engine, tracking server and sqlite store
checked before any work; one writing run at a time per project, and runs left RUNNING by killed
processes closed; wall time per stage (console and MLflow)."""

from __future__ import annotations

import logging
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

from image_classifier import engines
from image_classifier.backbones import check_weights_available
from image_classifier.config import (
    ParameterError,
    Parameters,
    check_catalog_settings,
    sweep_namespace,
    validate_parameters,
)
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


class StageTimerHook:
    """Prints each stage's wall time when a run ends, and logs it to MLflow as
    ``time.<stage>_s``. A node's stage is the tag it shares with a registered pipeline's name
    (each stage pipeline tags its nodes with its own name), so new stages need no change here."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._seconds: dict[str, float] = defaultdict(float)
        self._stage_names: frozenset[str] = frozenset()

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started.clear()
        self._seconds.clear()
        self._stage_names = frozenset(pipelines.keys())

    def _stage(self, node: Node) -> str:
        return min(node.tags & self._stage_names, default="other")

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        stage = self._stage(node)
        self._seconds[stage] += time.perf_counter() - self._started.pop(node.name)
        if mlflow.active_run() is not None:
            # Logged as the stage grows: the run is still open here, unlike after the pipeline.
            mlflow.log_metric(f"time.{stage}_s", round(self._seconds[stage], 2))

    @hook_impl
    def after_pipeline_run(self) -> None:
        if not self._seconds:
            return
        lines = [f"  {stage:<13} {seconds:8.1f} s" for stage, seconds in self._seconds.items()]
        lines.append(f"  {'total':<13} {sum(self._seconds.values()):8.1f} s")
        logger.info("Stage wall times:\n%s", "\n".join(lines))


class ParamsDigestHook:
    """Puts ``params_digest`` (see ``promotion.params_digest``) in the catalog: the nodes that
    stamp a model with its fingerprint, and those that check one, read it from there rather
    than taking every parameter as an input, which kedro-mlflow would log a second time."""

    @hook_impl
    def after_catalog_created(self, catalog: Any, parameters: dict[str, Any]) -> None:
        catalog["params_digest"] = params_digest(parameters["parameters"])
