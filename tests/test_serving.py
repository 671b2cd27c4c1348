"""The logged pyfunc, through a real MLflow store: raw arrays, encoded files, and a fresh process."""

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import encode
from image_classifier import tracking
from image_classifier.models import scratch_convnet

# Logs, registers and reloads a real model.
pytestmark = pytest.mark.slow

CLASSES = ["cat", "dog", "owl"]
SIZE = 32


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A real (untrained, seeded) Keras classifier logged and registered in a sqlite store."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    block = {"filters": 4, "kernel_size": 3, "strides": 1, "padding": "same", "pooling": "max"}
    model = scratch_convnet(len(CLASSES), SIZE, [block], dense_units=8, dropout=0.0, seed=0)
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("serving")
        with mlflow.start_run():
            info = tracking.log_classifier(model, CLASSES, SIZE, registered_model_name="serving_test")
        yield uri, info.model_uri, model
    mlflow.set_tracking_uri(previous)


def _photos():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 50, 3), (64, 48, 3), (32, 32, 3))]


def test_arrays_of_any_size_give_the_keras_models_probabilities(logged):
    uri, model_uri, model = logged
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    batch = np.stack([_photos()[0]] * 2)
    frame = pyfunc.predict(batch)
    assert list(frame.columns) == ["label", "prob_cat", "prob_dog", "prob_owl"]
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), model.predict(batch, verbose=0), atol=1e-6)
    assert frame["label"].tolist() == [CLASSES[i] for i in model.predict(batch, verbose=0).argmax(axis=1)]
    # Differently sized images in one call: a 1-D object array, as MLflow's ragged-tensor rule allows.
    ragged = np.empty(3, dtype=object)
    ragged[:] = _photos()
    expected = np.concatenate([model.predict(p[None], verbose=0) for p in _photos()])
    # The pyfunc resizes with PIL, the model with TensorFlow: within a grey level of each other.
    np.testing.assert_allclose(pyfunc.predict(ragged).iloc[:, 1:].to_numpy(), expected, atol=0.02)


def test_encoded_files_are_decoded(logged):
    uri, model_uri, model = logged
    mlflow.set_tracking_uri(uri)
    files = np.array([encode(Image.fromarray(p), "PNG") for p in _photos()], dtype=object)
    frame = mlflow.pyfunc.load_model(model_uri).predict(files)
    expected = np.concatenate([model.predict(p[None], verbose=0) for p in _photos()])
    np.testing.assert_allclose(frame.iloc[:, 1:].to_numpy(), expected, atol=0.02)
    with pytest.raises(Exception, match="input 1: not an image"):
        mlflow.pyfunc.load_model(model_uri).predict(np.array([files[0], b"not an image"], dtype=object))


_FRESH = """
import json, sys
import mlflow, numpy as np

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
files = np.array([open(path, "rb").read() for path in sys.argv[3:]], dtype=object)
print(json.dumps(model.predict(files).iloc[:, 1:].to_numpy().tolist()))
"""


def test_the_registered_model_reloads_in_a_fresh_process(logged, tmp_path):
    uri, _, _ = logged
    mlflow.set_tracking_uri(uri)
    paths = []
    for i, photo in enumerate(_photos()):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(photo).save(paths[-1])
    done = subprocess.run(
        [sys.executable, "-c", _FRESH, uri, "models:/serving_test/1", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    fresh = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    files = np.array([p.read_bytes() for p in paths], dtype=object)
    here = mlflow.pyfunc.load_model("models:/serving_test/1").predict(files).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(fresh, here, atol=1e-6)
