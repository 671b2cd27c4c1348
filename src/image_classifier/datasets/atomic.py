"""Files written aside and renamed into place: a reader, or the run after a kill, sees the previous
file whole or the new one whole, never half of one.

The partial file's name carries its writer's pid, ``.partial-<pid>-<name>``: that is what tells a
partial abandoned by a dead process from one still being written.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_PREFIX = ".partial-"

logger = logging.getLogger(__name__)


@contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """Yield where to write ``path``'s new content (same suffix: Keras checks it). It is renamed
    onto ``path`` when the block ends, and removed when the block fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_abandoned(folder: Path) -> None:
    """Delete the partial files in ``folder`` whose writer has ended (killed mid-write)."""
    for partial in folder.glob(f"{_PREFIX}*"):
        writer = partial.name.removeprefix(_PREFIX).split("-", 1)[0]
        if writer.isdigit() and psutil.pid_exists(int(writer)):
            continue
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            logger.info("Removed %s, left by a write that did not finish", partial)
