"""``fine_tuning.strategy``: the choice for 0, 1 and 2 devices, and a real MirroredStrategy fit
over two logical CPU devices standing in for two GPUs (this machine has none)."""

import json
import subprocess
import sys

import pytest

from conftest import PROJECT_ROOT
from image_classifier.distribution import strategy_kind


@pytest.mark.parametrize(
    ("name", "devices", "expected"),
    [
        ("auto", 0, "default"),
        ("auto", 1, "default"),
        ("auto", 2, "mirrored"),
        ("default", 2, "default"),
        ("mirrored", 0, "mirrored"),
        ("mirrored", 1, "mirrored"),
    ],
)
def test_the_strategy_chosen_for_the_devices_visible(name, devices, expected):
    assert strategy_kind(name, devices) == expected


# Logical devices must be configured before TensorFlow initialises: a fresh interpreter.
_FIT = """
import json, sys
import numpy as np, tensorflow as tf, keras
devices = int(sys.argv[1])
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
from image_classifier.distribution import training_strategy
strategy = training_strategy("auto", device_type="CPU")
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
history = model.fit(rng.normal(size=(32, 4)), rng.integers(0, 3, 32), batch_size=8, epochs=1, verbose=0)
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "kind": type(strategy).__name__,
                  "loss": history.history["loss"][0]}))
"""


@pytest.mark.slow  # two TensorFlow start-ups
@pytest.mark.parametrize(
    ("devices", "replicas", "kind"), [(1, 1, "_DefaultDistributionStrategy"), (2, 2, "MirroredStrategy")]
)
def test_auto_mirrors_over_two_devices_and_trains(devices, replicas, kind):
    done = subprocess.run(
        [sys.executable, "-c", _FIT, str(devices)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == replicas and result["kind"] == kind
    assert result["loss"] > 0


def _setup_commands(*args: str) -> str:
    # -n: print the recipe without running it; -B: as if the venv were out of date.
    done = subprocess.run(
        ["make", "-n", "-B", "setup", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_setup_installs_one_tensorflow_build():
    cpu, gpu = _setup_commands(), _setup_commands("GPU=1")
    assert "pip uninstall -q -y tensorflow\n" in cpu and "-e '.[dev,cpu]'" in cpu
    assert "pip uninstall -q -y tensorflow-cpu\n" in gpu and "-e '.[dev,gpu]'" in gpu
    assert "touch .venv/.setup-done-gpu" in gpu and "touch .venv/.setup-done-cpu" in cpu
