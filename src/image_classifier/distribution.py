"""Where fine-tuning runs, chosen by ``fine_tuning.strategy`` rather than by code changes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)


def strategy_kind(name: str, devices: int) -> str:
    """``auto``: ``mirrored`` (one replica per device) when several accelerators are visible,
    else ``default`` (the one GPU, or the CPU); ``mirrored`` and ``default`` force either."""
    return "mirrored" if name == "mirrored" or (name == "auto" and devices > 1) else "default"


def training_strategy(name: str, device_type: str = "GPU") -> tf.distribute.Strategy:
    """The strategy for ``name`` over the visible devices of ``device_type``. Only tests pass
    ``"CPU"``: logical CPU devices stand in for GPUs on a machine that has none."""
    import tensorflow as tf

    devices = [device.name for device in tf.config.list_logical_devices(device_type)]
    if strategy_kind(name, len(devices)) == "mirrored":
        # With no device of that type, MirroredStrategy falls back to the CPU alone.
        strategy = tf.distribute.MirroredStrategy(devices or None)
        logger.info("Training with MirroredStrategy on %d replicas", strategy.num_replicas_in_sync)
        return strategy
    logger.info("Training on %s", devices[0] if devices else "the CPU")
    return tf.distribute.get_strategy()
