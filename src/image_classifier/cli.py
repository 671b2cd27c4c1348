"""Project CLI: Kedro's own ``kedro run``, except that a mistake in the user's data or parameters
is printed as its message alone, without the stack trace that would bury it."""

from __future__ import annotations

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
    try:
        return ctx.invoke(kedro_run, **kwargs)
    except Exception as error:
        problem = find_project_error(error)
        if problem is None:
            raise
        raise click.ClickException(str(problem)) from None
