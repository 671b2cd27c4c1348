"""Errors that describe a problem with the user's data or configuration, not with the code.

``kedro run`` prints these as their message alone (see ``cli.py``): a stack trace would bury the
one line that says which file or parameter to fix.
"""

from __future__ import annotations


class ProjectError(ValueError):
    """Something the user can fix; the message names the file or parameter and how."""

    #: The command's exit status when this error stops it.
    exit_code: int = 1


class RunInProgress(ProjectError):
    """Another run holds the project's lock. Exit code 75 (EX_TEMPFAIL, "try again later"), so that
    schedulers can tell "already running" from a failure."""

    exit_code = 75


def find_project_error(error: BaseException | None) -> ProjectError | None:
    """The ``ProjectError`` behind ``error``: Kedro wraps dataset and node errors in its own."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ProjectError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
