"""Files written aside and renamed into place: a reader, or the run after a kill, sees the previous
file whole or the new one whole, never half of one.

The partial file's name carries its writer's pid and host, ``.partial-<pid>.<host>-<name>``: that
is what tells a partial abandoned by a dead process from one still being written. A folder on
shared storage is written from many machines (Dask workers), where a pid means nothing: another
host's partial is removed only once it is a day old.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_PREFIX = ".partial-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
# Longer than any single write: a shard is seconds, a model a minute.
_FOREIGN_AGE_S = 24 * 3600
_WRITER = re.compile(rf"{re.escape(_PREFIX)}(\d+)(?:\.([0-9a-f]{{8}}))?-")

logger = logging.getLogger(__name__)


@contextmanager
def written_aside(path: Path) -> Iterator[Path]:
    """Yield where to write ``path``'s new content (same suffix: Keras checks it). It is renamed
    onto ``path`` when the block ends, and removed when the block fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{_PREFIX}{os.getpid()}.{_HOST}-{path.name}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _abandoned(partial: Path) -> bool:
    writer = _WRITER.match(partial.name)
    if writer is None:  # a name from before partials carried their writer
        return True
    pid, host = writer.groups()
    if host is not None and host != _HOST:
        with contextlib.suppress(FileNotFoundError):
            return time.time() - partial.stat().st_mtime > _FOREIGN_AGE_S
        return False
    return not psutil.pid_exists(int(pid))


def remove_abandoned(folder: Path) -> None:
    """Delete the partial files in ``folder`` whose writer has ended (killed mid-write)."""
    for partial in folder.glob(f"{_PREFIX}*"):
        if not _abandoned(partial):
            continue
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
            logger.info("Removed %s, left by a write that did not finish", partial)
