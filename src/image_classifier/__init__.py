"""image_classifier: transfer-learning image classification with Kedro and MLflow."""

import os
import warnings

# Offline by design: no update checks or telemetry calls at import or run time.
for _name, _value in {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}.items():
    os.environ.setdefault(_name, _value)

# Plots are files the catalog saves: no display on servers and CI. Read when matplotlib is first
# imported (inside the plotting nodes), so a notebook's inline backend, set before, is kept.
os.environ.setdefault("MPLBACKEND", "Agg")

# Kedro and kedro-mlflow call an OmegaConf API that warns on every run; nothing for users to do.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

__version__ = "0.1.0"
