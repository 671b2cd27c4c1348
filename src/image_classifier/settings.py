"""Project settings: https://docs.kedro.org/en/stable/configure/configuration_basics/"""

import warnings

from omegaconf.resolvers import oc

from image_classifier.hooks import StageTimerHook, ValidateParametersHook

# Hooks run last-in-first-out.
HOOKS = (ValidateParametersHook(), StageTimerHook())

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # oc.env lets mlflow.yml honour MLFLOW_TRACKING_URI; Kedro only enables it for credentials.
    "custom_resolvers": {"oc.env": oc.env},
}

# Kedro and kedro-mlflow call an OmegaConf API that warns on every run, and kedro-mlflow's own
# pyfunc class trips MLflow's type-hint advice on import; nothing for users to act on.
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method", category=UserWarning)
