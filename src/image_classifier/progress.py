"""Progress bars for the stages that push images through a network (features, fine-tuning,
evaluation): one look everywhere, counted in images and showing images/s."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from tqdm.auto import tqdm


def image_bar(total: int, desc: str, **tqdm_args: Any) -> tqdm:
    """A bar over ``total`` images; tqdm shows the rate as img/s and the time left."""
    return tqdm(total=total, desc=desc, unit="img", **tqdm_args)


def counted(batches: Iterable[np.ndarray], total: int, desc: str) -> Iterator[np.ndarray]:
    """``batches`` unchanged, with a bar counting their images as each one is done with."""
    with image_bar(total, desc) as bar:
        for batch in batches:
            yield batch
            # After the yield: the rate then includes the work done on the batch, not just loading.
            bar.update(len(batch))
