"""What a trained model depends on, as a fingerprint: retraining compares it with the champion's
(to keep a model trained on the same inputs) and with earlier retrainings (to skip repeating one).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from image_classifier.config import Parameters, model_settings
from image_classifier.datasets import index_digest
from image_classifier.errors import ProjectError


class StaleModelError(ProjectError):
    """A model file left by an earlier run does not match this run's data or parameters."""


def params_digest(parameters: dict[str, Any]) -> str:
    """A digest of the parameters that change the model: thread counts, cache folders and
    scoring batch sizes leave it as it is."""
    relevant = model_settings(Parameters.model_validate(parameters))
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def training_fingerprint(index: pd.DataFrame, parameters: dict[str, Any]) -> dict[str, str]:
    """The data (``dataset_digest``) and the parameters that change the model (``params_digest``)."""
    return fingerprint(index, params_digest(parameters))


def fingerprint(index: pd.DataFrame, digest_of_params: str) -> dict[str, str]:
    return {"dataset_digest": index_digest(index), "params_digest": digest_of_params}


def require_current(model: Any, current: dict[str, str], name: str, rerun: str) -> None:
    """Refuse a model whose stamp (see ``models.stamp``) is not this run's fingerprint: after a
    killed run, the file on disk is an older run's model, and must not be scored or registered."""
    from image_classifier.models import stamp_of  # Keras; the hooks import this module at start-up

    stamped = stamp_of(model)
    if stamped == current:
        return
    if stamped is None:
        why = "it carries no fingerprint of the data and parameters that made it"
    elif stamped.get("dataset_digest") != current["dataset_digest"]:
        why = "it was trained on other images (a different dataset_digest)"
    else:
        why = "it was trained with other parameters (a different params_digest)"
    raise StaleModelError(f"{name} is left over from an earlier run: {why}. Re-run from {rerun}")


def trained_on(run_tags: dict[str, str], fingerprint: dict[str, str]) -> bool:
    """Whether the run behind these tags (its ``promotion.*`` record) had exactly these inputs."""
    return all(run_tags.get(f"promotion.{key}") == value for key, value in fingerprint.items())
