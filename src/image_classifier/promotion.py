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


def training_fingerprint(index: pd.DataFrame, parameters: dict[str, Any]) -> dict[str, str]:
    """The data (``dataset_digest``) and the parameters that change the model (``params_digest``):
    thread counts, cache folders and scoring batch sizes leave it as it is."""
    relevant = model_settings(Parameters.model_validate(parameters))
    params = hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()
    return {"dataset_digest": index_digest(index), "params_digest": params}


def trained_on(run_tags: dict[str, str], fingerprint: dict[str, str]) -> bool:
    """Whether the run behind these tags (its ``promotion.*`` record) had exactly these inputs."""
    return all(run_tags.get(f"promotion.{key}") == value for key, value in fingerprint.items())
