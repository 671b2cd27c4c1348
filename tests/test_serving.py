"""The logged pyfunc, through a real MLflow store and a real `mlflow models serve`: raw arrays,
encoded files, the guards every request passes, and a fresh process."""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import PROJECT_ROOT, encode, free_port, png_claiming, wait_until_up, write_photo
from image_classifier.config import IngestionParams
from image_classifier.datasets import MlflowClassifierDataset
from image_classifier.models import scratch_convnet
from image_classifier.serving import LIMIT_KEYS, MAX_FILES_PER_REQUEST, ImageClassifierModel

# Logs, registers and reloads a real model, and serves it.
pytestmark = pytest.mark.slow

CLASSES = ["cat", "dog", "owl"]
SIZE = 32
# Ingestion's defaults but for max_pixels, so that a test can tell the logged limits from defaults.
LIMITS = IngestionParams(max_pixels=40_000_000).model_dump(include=set(LIMIT_KEYS))
EXPECTED = "(N, H, W, 3)"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A real (untrained, seeded) Keras classifier logged and registered in a sqlite store, through
    the catalog's dataset, as the evaluation pipeline does."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    block = {"filters": 4, "kernel_size": 3, "strides": 1, "padding": "same", "pooling": "max"}
    model = scratch_convnet(len(CLASSES), SIZE, [block], dense_units=8, dropout=0.0, seed=0)
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        # Artifacts in the temporary folder too, not in the project's mlruns/.
        mlflow.set_experiment(
            experiment_id=mlflow.create_experiment("serving", (root / "artifacts").as_uri())
        )
        dataset = MlflowClassifierDataset(str(root / "model.json"), registered_model_name="serving_test")
        with mlflow.start_run():
            dataset.save({"model": model, "class_names": CLASSES, "input_size": SIZE, "limits": LIMITS})
        yield uri, json.loads((root / "model.json").read_text())["model_uri"], model
    mlflow.set_tracking_uri(previous)


def _photos():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 50, 3), (64, 48, 3), (32, 32, 3))]


def _objects(*items) -> np.ndarray:
    batch = np.empty(len(items), dtype=object)
    batch[:] = items
    return batch


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _refusal(predict: Callable[[Any], Any], model_input: Any) -> str:
    """The message of the 400 that MLflow's scoring server would send for ``model_input``."""
    with pytest.raises(MlflowException) as caught:
        predict(model_input)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert EXPECTED in caught.value.message and "base64" in caught.value.message
    return caught.value.message


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
    expected = np.concatenate([model.predict(p[None], verbose=0) for p in _photos()])
    # The pyfunc resizes with PIL, the model with TensorFlow: within a grey level of each other.
    ragged = pyfunc.predict(_objects(*_photos())).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(ragged, expected, atol=0.02)


def test_encoded_files_are_decoded(logged):
    uri, model_uri, model = logged
    mlflow.set_tracking_uri(uri)
    files = [encode(Image.fromarray(p), "PNG") for p in _photos()]
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    expected = np.concatenate([model.predict(p[None], verbose=0) for p in _photos()])
    np.testing.assert_allclose(pyfunc.predict(_objects(*files)).iloc[:, 1:].to_numpy(), expected, atol=0.02)
    # Base64 text, what REST clients send, gives what the bytes give.
    as_text = pyfunc.predict(_objects(*map(_b64, files))).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(as_text, expected, atol=0.02)
    assert "images[1]: not an image" in _refusal(pyfunc.predict, _objects(files[0], b"not an image"))


def test_the_logged_limits_travel_from_the_dataset_to_the_model(logged):
    uri, model_uri, _ = logged
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    assert pyfunc.model_config["limits"] == LIMITS
    # 49 megapixels: under the default, above the logged limit; refused from the header alone.
    message = _refusal(pyfunc.predict, _objects(png_claiming(7000, 7000)))
    assert "images[0]: too large" in message and "ingestion.max_pixels = 40000000" in message
    stricter = {**LIMITS, "max_pixels": 1999, "min_side": 300}
    stricter = mlflow.pyfunc.load_model(model_uri, model_config={"limits": stricter})
    assert "too large: 50x40 px, above ingestion.max_pixels = 1999" in _refusal(
        stricter.predict, _photos()[0]
    )
    # A min_side above the model's input size would refuse the images the inference pipeline
    # resized to that size: an image as big as the input is never too small.
    assert len(stricter.predict(_photos()[2][None])) == 1


def test_a_model_logged_without_limits_gets_the_ingestion_defaults(logged, tmp_path):
    _, _, model = logged
    model.save(tmp_path / "classifier.keras")
    context = SimpleNamespace(
        artifacts={"keras_model": str(tmp_path / "classifier.keras")},
        model_config={"class_names": CLASSES, "input_size": SIZE},
    )
    pyfunc = ImageClassifierModel()
    pyfunc.load_context(context)

    def predict(model_input: Any) -> Any:
        return pyfunc.predict(context, model_input)

    assert len(predict(_photos()[0])) == 1
    min_side = IngestionParams().min_side
    assert f"below ingestion.min_side = {min_side}" in _refusal(predict, np.zeros((1, 8, 8, 3), np.uint8))


def test_a_model_logged_with_flip_averages_each_photo_with_its_mirror_image(logged, tmp_path):
    _, _, model = logged
    model.save(tmp_path / "classifier.keras")
    (tmp_path / "classes.json").write_text(
        json.dumps({"class_names": CLASSES, "input_size": SIZE, "tta": "flip"})
    )
    context = SimpleNamespace(
        artifacts={
            "keras_model": str(tmp_path / "classifier.keras"),
            "classes": str(tmp_path / "classes.json"),
        },
        model_config={},
    )
    pyfunc = ImageClassifierModel()
    pyfunc.load_context(context)
    batch = np.stack([_photos()[2], _photos()[2][:, ::-1]])
    served = pyfunc.predict(context, batch).iloc[:, 1:].to_numpy()
    plain, mirror = model.predict(batch, verbose=0), model.predict(batch[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(served, (plain + mirror) / 2, atol=1e-6)
    # A photo and its mirror image get the same answer; without the flip they did not.
    np.testing.assert_allclose(served[0], served[1], atol=1e-6)
    assert not np.allclose(plain[0], plain[1], atol=1e-4)


def test_pixels_must_be_whole_numbers_from_0_to_255(logged):
    uri, model_uri, _ = logged
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    photo = _photos()[0]
    reference = pyfunc.predict(photo[None]).iloc[:, 1:].to_numpy()
    # What JSON integers become, and whole floats: the same pixels, the same answer.
    for same in (photo.astype(np.int64), photo.astype(np.float32), photo.astype(object)):
        np.testing.assert_array_equal(pyfunc.predict(same[None]).iloc[:, 1:].to_numpy(), reference)
    with_nan = photo.astype(np.float64)
    with_nan[0, 0, 0] = np.nan
    refusals = {
        "fractional values, such as 0.5": np.array([[[[0.5, 0.2, 0.1]]]]),
        "fractional values": photo / 255.0,
        "outside 0-255, such as 300": np.full((1, 40, 40, 3), 300),
        "outside 0-255, such as -1": photo.astype(np.int16) - 1,
        "fractional values, such as nan": with_nan,
        "got bool values": photo > 128,
        "shaped (1, 40, 50, 2)": photo[None, :, :, :2],
        "shaped (40, 50)": photo[..., 0],
        "too small: 8x8 px, below ingestion.min_side = 32": np.zeros((2, 8, 8, 3), np.uint8),
        "got no images": np.zeros((0, 40, 50, 3), np.uint8),
        "images[1]: got an array shaped (40, 50)": _objects(photo, photo[..., 0]),
        "images[0]: got fractional values": _objects(photo / 255.0),
        "images[0]: got int, not an image": _objects(7),
    }
    for problem, model_input in refusals.items():
        assert problem in _refusal(pyfunc.predict, model_input), problem


def test_files_pass_the_ingestion_guards(logged):
    uri, model_uri, _ = logged
    mlflow.set_tracking_uri(uri)
    photo = encode(Image.fromarray(_photos()[0]), "PNG")
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    refusals = {
        "images[1]: too small: 8x8 px": _objects(photo, encode(Image.new("RGB", (8, 8)), "PNG")),
        "images[0]: not an image": _objects(b""),
        "images[0]: not base64": _objects("not base64!"),
        f"above {MAX_FILES_PER_REQUEST} per request": _objects(*[_b64(photo)] * (MAX_FILES_PER_REQUEST + 1)),
    }
    for problem, model_input in refusals.items():
        assert problem in _refusal(pyfunc.predict, model_input), problem
    small = {**LIMITS, "max_file_bytes": len(photo) - 1}
    tight = mlflow.pyfunc.load_model(model_uri, model_config={"limits": small})
    assert f"images[0]: too big: {len(photo)} bytes" in _refusal(tight.predict, _objects(photo))
    # Base64 text is counted before anything is decoded.
    assert "request too large" in _refusal(tight.predict, _objects(_b64(photo)))


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
    files = _objects(*[p.read_bytes() for p in paths])
    here = mlflow.pyfunc.load_model("models:/serving_test/1").predict(files).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(fresh, here, atol=1e-6)


_RELOADS = """
import logging, sys
import keras, mlflow, numpy as np

warned = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: warned.append("retracing" in record.getMessage())
logging.getLogger("tensorflow").addHandler(handler)
mlflow.set_tracking_uri(sys.argv[1])
for _ in range(4):
    if sys.argv[2] == "pyfunc":
        assert len(mlflow.pyfunc.load_model(sys.argv[3]).predict(np.zeros((1, 32, 32, 3), np.uint8))) == 1
    else:  # the pyfunc's warm-up, by hand
        model = keras.models.load_model(sys.argv[3], compile=False)
        for count in (1, 2):
            model.predict_on_batch(np.zeros((count, 32, 32, 3), np.uint8))
print(sum(warned))
"""


def test_loading_the_model_again_and_again_warns_of_no_retracing(logged, tmp_path):
    """MLflow loads a model twice when it logs it, and each load traces the model's predict
    function for two batch sizes: TensorFlow, counting every model's traces together, warned
    of excessive retracing. Each child process starts with TensorFlow's count at zero."""
    uri, model_uri, model = logged
    model.save(tmp_path / "classifier.keras")

    def warnings_of_retracing(how: str, what: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _RELOADS, uri, how, what], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])

    assert warnings_of_retracing("keras", str(tmp_path / "classifier.keras")) > 0, (
        "TensorFlow no longer warns"
    )
    assert warnings_of_retracing("pyfunc", model_uri) == 0


# --- through `mlflow models serve` ----------------------------------------------------------


@pytest.fixture(scope="module")
def served(logged, tmp_path_factory):
    """The registered model behind a real `mlflow models serve`, as `make serve` starts it."""
    uri, _, _ = logged
    port, log = free_port(), tmp_path_factory.mktemp("served") / "server.log"
    bin_dir = Path(sys.executable).parent  # `mlflow models serve` runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/serving_test/1"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--env-manager", "local"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", process, 240, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _post_json(url: str, payload: Any) -> tuple[int, dict[str, Any]]:
    return _post(url, json.dumps(payload).encode())


def _readme_command(port: int) -> str:
    """The README's example request, as a user would paste it, pointed at ``port``."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("### Serving", 1)[1].split("\n### ", 1)[0]
    lines = section.split("```", 2)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("printf "))
    command: list[str] = []
    for line in lines[start:]:
        command.append(line)
        if not line.rstrip().endswith(("|", "\\")):
            break
    text = "\n".join(command)
    assert "127.0.0.1:5001" in text
    # The limits the section states are the code's.
    assert f"more than {MAX_FILES_PER_REQUEST} files" in section
    assert f"({IngestionParams().max_file_bytes // 1_000_000} MB by default)" in section
    return text.replace("127.0.0.1:5001", f"127.0.0.1:{port}")


def test_the_readme_request_classifies_a_photo(served, tmp_path):
    write_photo(tmp_path / "photo.jpg", seed=1, size=(120, 90))
    port = int(served.rsplit(":", 1)[1])
    done = subprocess.run(
        ["bash", "-c", _readme_command(port)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert "predictions" in answer, answer
    assert [p["label"] in CLASSES for p in answer["predictions"]] == [True]


def test_the_server_answers_both_forms(served, logged):
    uri, model_uri, _ = logged
    mlflow.set_tracking_uri(uri)
    photos = _photos()[:2]
    files = [_b64(encode(Image.fromarray(p), "PNG")) for p in photos]
    status, answer = _post_json(served, {"inputs": {"images": files}})
    assert status == 200, answer
    local = mlflow.pyfunc.load_model(model_uri)
    expected = local.predict(_objects(*files))
    assert [p["label"] for p in answer["predictions"]] == expected["label"].tolist()
    # JSON integers arrive as Python ints, not uint8: still pixels, the same answer.
    status, answer = _post_json(served, {"inputs": photos[0][None].tolist()})
    assert status == 200, answer
    served_probabilities = [[p[f"prob_{c}"] for c in CLASSES] for p in answer["predictions"]]
    local_probabilities = local.predict(photos[0][None]).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(served_probabilities, local_probabilities, atol=1e-6)


def test_the_server_answers_400_saying_what_is_expected(served):
    rng = np.random.default_rng(2)
    photo = _b64(encode(Image.fromarray(_photos()[0]), "PNG"))
    hostile = {
        "fractional values, such as 0.5": {"inputs": [[[[0.5, 0.2, 0.1]]]]},
        "fractional values": {"inputs": rng.random((1, 40, 40, 3)).tolist()},
        "outside 0-255, such as 300": {"inputs": np.full((1, 40, 40, 3), 300).tolist()},
        "too small: 8x8 px, below ingestion.min_side = 32": {"inputs": np.zeros((1, 8, 8, 3), int).tolist()},
        "images[1]: not an image": {"inputs": {"images": [photo, _b64(b"just some text")]}},
        "images[0]: not base64": {"inputs": {"images": ["%%%"]}},
        "images[0]: too small: 8x8 px": {"inputs": {"images": [_b64(encode(Image.new("RGB", (8, 8))))]}},
    }
    for problem, payload in hostile.items():
        status, answer = _post_json(served, payload)
        assert status == 400, (problem, status, answer)
        assert problem in answer["message"] and EXPECTED in answer["message"], (problem, answer)


def test_an_oversize_request_is_refused_quickly(served):
    # 59 MB of valid base64 text (zero bytes once decoded): refused before any decoding.
    body = b'{"inputs": {"images": ["' + b"A" * 59_000_000 + b'"]}}'
    started = time.monotonic()
    status, answer = _post(served, body)
    elapsed = time.monotonic() - started
    assert status == 400
    assert "request too large: 59000000 characters of base64" in answer["message"]
    assert elapsed < 30, elapsed
