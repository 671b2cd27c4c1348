"""Project settings: https://docs.kedro.org/en/stable/configure/configuration_basics/"""

from omegaconf.resolvers import oc

from image_classifier.hooks import (
    ParamsDigestHook,
    RunLockHook,
    RunProcessTagsHook,
    SqliteStoreHook,
    StageTimerHook,
    TrackingServerHook,
    ValidateParametersHook,
)

# Hooks run last-in-first-out (among those of equal priority): RunLockHook after the validation.
HOOKS = (
    TrackingServerHook(),
    SqliteStoreHook(),
    RunLockHook(),
    ValidateParametersHook(),
    StageTimerHook(),
    ParamsDigestHook(),
    RunProcessTagsHook(),
)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Declared here (kedro-mlflow adds it later) so that TrackingServerHook can read mlflow.yml.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
    # oc.env lets mlflow.yml honour MLFLOW_TRACKING_URI; Kedro only enables it for credentials.
    "custom_resolvers": {"oc.env": oc.env},
}
