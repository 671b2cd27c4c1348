"""Choosing between two models on the same validation photos: the costlier one only on evidence.

Every choice the pipeline makes on validation (the frozen head or a fine-tuned epoch, the plain
photo or the mirror-image average) compares the two candidates photo by photo and takes the
costlier one only when its gain is significant by McNemar's exact test: among the photos the two
disagree on, the costlier model must be right on more than chance would give a fair coin. A
choice that differs by a few photos is noise: on a photo set the project had never seen, a
fine-tuned model 3 validation photos better than the frozen one was 25 test photos worse
(docs/decisions/choices-with-a-margin.md).

Plain numpy and no Keras: fine-tuning, evaluation and the run's description all use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


def one_sided_p(gained: int, lost: int) -> float:
    """McNemar's exact one-sided p-value: the chance that a model no better than the other wins
    ``gained`` or more of the ``gained + lost`` photos the two disagree on."""
    discordant = gained + lost
    if gained <= 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(gained, discordant + 1))
    return min(1.0, tail / 2**discordant)


def can_ever_switch(errors: int, alpha: float) -> bool:
    """Whether any challenger could pass the test against a model with ``errors`` validation
    mistakes: the best it can do is right them all and make no new one."""
    return one_sided_p(errors, 0) < alpha


@dataclass(frozen=True)
class Comparison:
    """The costlier candidate against the simpler one, on the same ``photos``."""

    gained: int  # photos the costlier candidate gets right and the simpler one wrong
    lost: int  # the reverse
    photos: int
    p_value: float
    alpha: float

    @property
    def switch(self) -> bool:
        """Take the costlier candidate: its gain is significant at ``alpha``."""
        return self.gained > self.lost and self.p_value < self.alpha

    def sentence(self, simple: str, costly: str) -> str:
        """What was kept and why, for the log and the run's description, e.g. ``kept the frozen
        head: fine-tuning was 3 photos better of 212 validation photos (5 gained, 2 lost),
        p = 0.23``."""
        net = self.gained - self.lost
        photos = f"{abs(net)} photo{'s' if abs(net) != 1 else ''}"
        margin = f"{photos} better" if net > 0 else f"{photos} worse" if net < 0 else "as accurate"
        evidence = f"of {self.photos} validation photos ({self.gained} gained, {self.lost} lost), p = {self.p_value:.2g}"
        if self.switch:
            return f"kept {costly}: {margin} than {simple} {evidence}"
        return f"kept {simple}: {costly} was {margin} {evidence}"

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>.gained``, ``.lost``, ``.photos``, ``.p_value`` and ``.switched``, for MLflow
        (``from_metrics`` reads them back)."""
        return {
            f"{prefix}.gained": float(self.gained),
            f"{prefix}.lost": float(self.lost),
            f"{prefix}.photos": float(self.photos),
            f"{prefix}.p_value": self.p_value,
            f"{prefix}.switched": float(self.switch),
        }

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], prefix: str) -> Comparison | None:
        """The comparison ``metrics`` logged under ``prefix``, or None if it logged none."""
        if f"{prefix}.p_value" not in metrics:
            return None
        p_value, switched = metrics[f"{prefix}.p_value"], bool(metrics[f"{prefix}.switched"])
        return cls(
            int(metrics[f"{prefix}.gained"]),
            int(metrics[f"{prefix}.lost"]),
            int(metrics[f"{prefix}.photos"]),
            p_value,
            # The alpha the run used is past; what it decided is not: one that reproduces it.
            math.nextafter(p_value, math.inf) if switched else p_value,
        )


def compare(simple_correct: np.ndarray, costly_correct: np.ndarray, alpha: float) -> Comparison:
    """The costlier candidate against the simpler one, from each photo's right-or-wrong (the same
    photos in the same order for both)."""
    simple, costly = np.asarray(simple_correct, bool), np.asarray(costly_correct, bool)
    if simple.shape != costly.shape:
        raise ValueError(
            f"paired comparison of {simple.shape} and {costly.shape} photos: not the same photos"
        )
    gained, lost = int((costly & ~simple).sum()), int((simple & ~costly).sum())
    return Comparison(gained, lost, len(simple), one_sided_p(gained, lost), alpha)
