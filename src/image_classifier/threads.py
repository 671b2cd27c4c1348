"""Ordered work in a few threads, a bounded window ahead: what the loaders and the engines share."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


def ordered_map(
    function: Callable[[In], Out], inputs: Iterable[In], workers: int, window: int
) -> Iterator[Out]:
    """``function`` over ``inputs`` in ``workers`` threads, results in input order, never more than
    ``window`` inputs taken ahead of the result last yielded (so memory stays bounded)."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in inputs:
            pending.append(pool.submit(function, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
