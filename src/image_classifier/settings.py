"""Project settings: https://docs.kedro.org/en/stable/configure/configuration_basics/"""

import warnings
from pathlib import Path
from urllib.parse import urlparse

from kedro.utils import find_kedro_project
from omegaconf.resolvers import oc

from image_classifier.hooks import (
    MissingInputsHook,
    ParamsDigestHook,
    RunLockHook,
    RunProcessTagsHook,
    RunSummaryHook,
    SqliteStoreHook,
    SystemMetricsHook,
    TrackingServerHook,
    ValidateParametersHook,
)


def _import_kedro_mlflow_model_quietly() -> None:
    """kedro-mlflow's CLI and hooks import its ``KedroPipelineModel``, a pyfunc whose ``predict``
    has no type hints (this project never logs one), so MLflow warned "Add type hints to the
    `predict` method" on every Kedro command. MLflow emits it under its own
    ``simplefilter("once")``, which beats any ``filterwarnings``; so the module is imported here
    first (Kedro imports the settings before its plugins) and only that warning is dropped."""
    with warnings.catch_warnings(record=True) as caught:
        import kedro_mlflow.mlflow  # noqa: F401
    for warning in caught:
        if "Add type hints to the `predict` method" not in str(warning.message):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


_import_kedro_mlflow_model_quietly()


def _project_path(path: str) -> str:
    """``${project_path:mlruns}``: a relative path taken from the project root (found as Kedro
    finds it, up from the working directory); absolute paths and URIs (``mlflow-artifacts:/…``)
    unchanged. Given a relative path, kedro-mlflow logs on every run that it converted one."""
    if Path(path).is_absolute() or urlparse(path).scheme:
        return path
    return str((find_kedro_project(Path.cwd()) or Path.cwd()) / path)


# Hooks run last-in-first-out (among those of equal priority): RunLockHook after the validation.
HOOKS = (
    TrackingServerHook(),
    SqliteStoreHook(),
    RunLockHook(),
    ValidateParametersHook(),
    MissingInputsHook(),
    RunSummaryHook(),
    SystemMetricsHook(),
    ParamsDigestHook(),
    RunProcessTagsHook(),
)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # Declared here (kedro-mlflow adds it later) so that TrackingServerHook can read mlflow.yml.
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]},
    # oc.env lets mlflow.yml honour MLFLOW_TRACKING_URI; Kedro only enables it for credentials.
    "custom_resolvers": {"oc.env": oc.env, "project_path": _project_path},
    # conf/local/parameters.yml with `evaluation: {tta: none}` overrides that one key: Kedro's
    # default (destructive) would drop the section's other keys, and a node reading one of them
    # (params:evaluation.batch_size) would then fail to start.
    "merge_strategy": {"parameters": "soft"},
}
