"""Project hooks: parameter validation at start-up, and wall time per stage (console and MLflow)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node

from image_classifier.config import validate_parameters

logger = logging.getLogger(__name__)

STAGES = ("ingestion", "augmentation", "features", "training", "fine_tuning", "evaluation", "baseline")


class ValidateParametersHook:
    """Reject bad or unknown parameters before any node runs."""

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        validate_parameters(context.params)


class StageTimerHook:
    """Prints each stage's wall time, and the final test accuracy, when a run ends; logs the stage
    times to MLflow as ``time.<stage>_s``."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._seconds: dict[str, float] = defaultdict(float)
        self._accuracy: float | None = None

    @staticmethod
    def _stage(node: Node) -> str:
        return next((tag for tag in STAGES if tag in node.tags), "other")

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started.clear()
        self._seconds.clear()
        self._accuracy = None

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._started[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        stage = self._stage(node)
        self._seconds[stage] += time.perf_counter() - self._started.pop(node.name)
        if mlflow.active_run() is not None:
            # Logged as the stage grows: the run is still open here, unlike after the pipeline.
            mlflow.log_metric(f"time.{stage}_s", round(self._seconds[stage], 2))
        metrics = outputs.get("evaluation_metrics")
        if metrics:
            self._accuracy = metrics["test_accuracy"]["value"]

    @hook_impl
    def after_pipeline_run(self) -> None:
        if not self._seconds:
            return
        lines = [f"  {stage:<13} {seconds:8.1f} s" for stage, seconds in self._seconds.items()]
        lines.append(f"  {'total':<13} {sum(self._seconds.values()):8.1f} s")
        if self._accuracy is not None:
            lines.append(f"  final test accuracy: {self._accuracy:.4f}")
        logger.info("Stage wall times:\n%s", "\n".join(lines))
