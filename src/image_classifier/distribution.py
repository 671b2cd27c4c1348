"""Where fine-tuning runs, chosen by ``fine_tuning.strategy`` rather than by code changes."""

from __future__ import annotations

import logging

import tensorflow as tf

logger = logging.getLogger(__name__)


def training_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: one replica per GPU when several are visible, else the default device (a single
    GPU when there is one, the CPU otherwise); ``mirrored`` and ``default`` force either."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
        logger.info("Training with MirroredStrategy on %d replicas", strategy.num_replicas_in_sync)
        return strategy
    logger.info("Training on %s", gpus[0].name if gpus else "the CPU")
    return tf.distribute.get_strategy()
