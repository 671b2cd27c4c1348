"""What a team reads in the MLflow UI: a run's name (the runs list, chart legends and compare
view show nothing else), its description (the markdown a run page opens on) and the tags and
description of the model version it registered. Pure functions of plain data; the hook in
``hooks.py`` reads the run and writes what these return."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from image_classifier.config import Parameters
from image_classifier.selection import Comparison

# The metrics a person compares across runs, grouped and worded as the description shows them.
RESULTS = {
    "head (cached features)": {"validation": "head.val_accuracy", "test": "head.test_accuracy"},
    "fine-tuned": {"validation": "finetune.val_accuracy", "test": "finetune.test_accuracy"},
    "final model": {"test accuracy": "test_accuracy", "macro-F1": "test_macro_f1"},
    "convnet from scratch": {"validation": "baseline.val_accuracy", "test": "baseline.test_accuracy"},
    "inference": {"classified": "inference.classified", "unreadable": "inference.unreadable"},
}
HEADLINE = [key for group in RESULTS.values() for key in group.values()]
# Per-epoch series and the numbers that explain a run rather than rank it: MLflow's UI groups
# charts by the part of a metric's name before the first "/".
HISTORY_PREFIX = "history/"
DIAGNOSTICS_PREFIX = "diagnostics/"
# Kedro's run parameters that kedro-mlflow copies into tags under names that mislead in the UI.
RENAMED_TAGS = {"run_id": "kedro.session_id", "runner": "kedro.runner"}
PIPELINE_TAG = "kedro.pipeline"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
_MAX_CHANGES = 8


def pipeline_label(pipeline_name: str) -> str:
    """``__default__`` → ``default``: underscores read as markup in the UI."""
    return pipeline_name.strip("_") or pipeline_name


def read_sections(param_inputs: Iterable[str]) -> set[str]:
    """``{"params:backbone", "params:fine_tuning.epochs"}`` → ``{"backbone", "fine_tuning"}``."""
    return {name[len("params:") :].split(".")[0] for name in param_inputs if name.startswith("params:")}


def run_name(pipeline_name: str, params: Parameters, reads: set[str]) -> str:
    """What tells this run from its neighbours: the pipeline, then the settings users change most
    that the pipeline reads, e.g. ``default · mobilenet_v2@224 · ft40 · 3 views``."""
    parts = [pipeline_label(pipeline_name)]
    if "sweep" in reads:
        parts.append(" vs ".join(params.sweep.backbones))
    elif "backbone" in reads:
        parts.append(f"{params.backbone.name}@{params.backbone.input_size}")
    if "baseline" in reads:
        parts.append(f"convnet@{params.baseline.input_size}")
    if "fine_tuning" in reads:
        tuning = params.fine_tuning
        trained_at = f"@{tuning.train_size}" if tuning.train_size else ""
        if tuning.train_size_epochs:
            trained_at += f" ({tuning.train_size_epochs} ep)"
        parts.append(f"ft{tuning.unfreeze_layers}{trained_at}" if tuning.enabled else "no fine-tuning")
    if "augmentation" in reads:
        views = params.augmentation.views
        parts.append(f"{views} view{'s' if views != 1 else ''}")
    return " · ".join(parts)


def describe(
    run: Mapping[str, Any],
    split_counts: Mapping[str, int] | None,
    stage_seconds: Mapping[str, float],
    previous: Mapping[str, Any] | None,
    registered: str | None = None,
    failure: str | None = None,
) -> str:
    """The run's description in markdown.

    ``run`` and ``previous`` (the last finished run of the same pipeline, or None) are
    ``{"name", "params", "metrics", "tags", "start_time"}`` with ``start_time`` in ms since the
    epoch; ``registered`` says what happened to the model this run registered.
    """
    # The run page shows the first lines only, under the run's name: results first.
    metrics, lines = run["metrics"], []
    if failure:
        lines.append(f"**Failed**: {failure}\n")
    for group, keys in RESULTS.items():
        found = [f"{label} {metrics[key]:.4g}" for label, key in keys.items() if key in metrics]
        if found:
            lines.append(f"- **{group}**: {', '.join(found)}")
    choice = _final_model_line(metrics)
    if choice:
        lines.append(choice)
    data = _data_line(run["tags"].get("dataset_digest"), split_counts, metrics)
    if data:
        lines.append(f"\n**Data** {data}")
    if registered:
        lines.append(f"\n**Model** {registered}")
    if stage_seconds:
        times = " · ".join(f"{stage} {_duration(s)}" for stage, s in stage_seconds.items())
        lines.append(f"\n**Stage times** {times} (total {_duration(sum(stage_seconds.values()))})")
    if previous is not None:
        when = dt.datetime.fromtimestamp(previous["start_time"] / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
        lines.append(f"\n**Since the previous run of this pipeline** ({previous['name']}, {when} UTC):")
        lines += [f"- {change}" for change in changes(run, previous)]
    return "\n".join(lines) + "\n"


def _final_model_line(metrics: Mapping[str, float]) -> str | None:
    """Which model fine-tuning left as final and why, when it ran, and the test-time augmentation
    when it was chosen on validation: each choice's sentence (``selection.Comparison``)."""
    lines = []
    tuned = Comparison.from_metrics(metrics, "diagnostics/finetune.selection")
    if tuned is not None:
        best, run = metrics["diagnostics/finetune.best_epoch"], metrics["diagnostics/finetune.epochs_run"]
        sentence = tuned.sentence(
            "the frozen backbone + head", f"fine-tuning (epoch {best:.0f} of {run:.0f})"
        )
        lines.append(f"- **fine-tuning**: {sentence}")
    elif metrics.get("diagnostics/finetune.epochs_run") == 0:
        lines.append(
            "- **fine-tuning**: kept the frozen backbone + head: fine-tuning did not start, as it could "
            f"not be chosen over a frozen model this accurate on validation "
            f"({metrics['diagnostics/finetune.frozen_val_accuracy']:.4g})"
        )
    flip = Comparison.from_metrics(metrics, "diagnostics/evaluation.tta_selection")
    if flip is not None:
        lines.append(
            f"- **test-time augmentation**: {flip.sentence('the plain photo', 'the mirror-image average')}"
        )
    return "\n".join(lines) or None


def changes(run: Mapping[str, Any], previous: Mapping[str, Any]) -> list[str]:
    """Parameters, data and headline results that differ from ``previous``, most telling first."""
    found = []
    digest, earlier = run["tags"].get("dataset_digest"), previous["tags"].get("dataset_digest")
    if digest and earlier:
        found.append("same data" if digest == earlier else f"other data (`{earlier[:12]}` → `{digest[:12]}`)")
    params, before = run["params"], previous["params"]
    differing = sorted(key for key in params.keys() | before.keys() if params.get(key) != before.get(key))
    for key in differing[:_MAX_CHANGES]:
        found.append(f"`{key}`: {before.get(key, '(unset)')} → {params.get(key, '(unset)')}")
    if len(differing) > _MAX_CHANGES:
        found.append(f"and {len(differing) - _MAX_CHANGES} more parameters")
    if not differing:
        found.append("same parameters")
    metrics, older = run["metrics"], previous["metrics"]
    for key in HEADLINE:
        if key in metrics and key in older and metrics[key] != older[key]:
            found.append(f"{key}: {older[key]:.4g} → {metrics[key]:.4g} ({metrics[key] - older[key]:+.4g})")
    return found


def version_tags(run: Mapping[str, Any]) -> dict[str, str]:
    """What a registered version is, for the Models page: backbone, data, score, source run."""
    metrics, tags = run["metrics"], run["tags"]
    found = {
        "backbone": tags.get("backbone"),
        "dataset_digest": tags.get("dataset_digest"),
        "test_accuracy": _score(metrics.get("test_accuracy")),
        "test_macro_f1": _score(metrics.get("test_macro_f1")),
        "source_run": run["name"],
    }
    return {key: value for key, value in found.items() if value is not None}


def version_description(run: Mapping[str, Any], run_id: str) -> str:
    tags = version_tags(run)
    scores = ", ".join(f"{key} {tags[key]}" for key in ("test_accuracy", "test_macro_f1") if key in tags)
    data = f" on data `{tags['dataset_digest'][:12]}`" if "dataset_digest" in tags else ""
    return f"Trained by run **{run['name']}** (`{run_id}`){data}. {scores}.".replace(". .", ".")


def _data_line(digest: str | None, counts: Mapping[str, int] | None, metrics: Mapping[str, float]) -> str:
    parts = [f"`{digest[:12]}`"] if digest else []
    if counts:
        parts.append(" / ".join(f"{split} {count:,}" for split, count in counts.items()))
    rejected = metrics.get(f"{DIAGNOSTICS_PREFIX}ingestion.rejected")
    if rejected is not None:
        parts.append(f"{int(rejected)} file{'s' if rejected != 1 else ''} rejected")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


def _score(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"
