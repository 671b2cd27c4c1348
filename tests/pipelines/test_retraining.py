"""Scheduled retraining end to end, in real Kedro sessions on a real sqlite MLflow store: the first
retrain promotes, a retrain without new data does nothing, new images are the only backbone work,
a challenger that is not better enough is kept out, and a second invocation is locked out. The
champion it leaves behind is then used by the inference pipeline and by `mlflow models serve`."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import (
    demo_dataset,
    free_port,
    run_session,
    scratch_project,
    tracked,
    wait_until_up,
    write_photo,
)
from image_classifier.retrain import EXIT_LOCKED, retrain
from image_classifier.runs import exclusive_lock

# Real retrainings in Kedro sessions, and a served model.
pytestmark = pytest.mark.slow

PARAMS = {
    "backbone": {"input_size": 96},
    "training": {"epochs": 20},
    # Gentle on 24 photos, one pass over them an epoch.
    "fine_tuning": {"epochs": 1, "unfreeze_layers": 4, "learning_rate": 1e-5, "min_epoch_images": 0},
    "augmentation": {"views": 2},
    "evaluation": {"tta": "none"},
}


def _runs(client):
    experiment = client.get_experiment_by_name("image_classifier")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _add_photos(project, count_per_split):
    """New real photos (not in the tiny set) into train and test of one class."""
    for split, count in count_per_split.items():
        source = sorted((demo_dataset() / split / "hat").iterdir())[8 : 8 + count]
        for photo in source:
            shutil.copy(photo, project / "data/01_raw/images" / split / "hat" / photo.name)


@pytest.fixture(scope="module")
def history(tmp_path_factory, tiny_demo):
    """Four retrains in a row; what each returned and left in MLflow."""
    project = scratch_project(tmp_path_factory.mktemp("retrain"), tiny_demo)
    with tracked(project) as client:
        codes = [retrain(project, params=PARAMS)]
        aliases = [str(client.get_model_version_by_alias("image_classifier", "champion").version)]
        codes.append(retrain(project, params=PARAMS))
        aliases.append(str(client.get_model_version_by_alias("image_classifier", "champion").version))
        _add_photos(project, {"train": 2, "test": 2})
        codes.append(retrain(project, params={**PARAMS, "retraining": {"min_improvement": 1.0}}))
        aliases.append(str(client.get_model_version_by_alias("image_classifier", "champion").version))
        codes.append(retrain(project, params={**PARAMS, "retraining": {"min_improvement": 1.0}}))
        yield {
            "project": project,
            "client": client,
            "codes": codes,
            "aliases": aliases,
            "runs": _runs(client),
        }


def test_the_first_retrain_promotes_version_1(history):
    first = history["runs"][0]
    assert history["codes"][0] == 0 and history["aliases"][0] == "1"
    assert first.data.tags["promotion.decision"] == "promoted"
    assert first.data.tags["promotion.reason"].startswith("first model")
    artifacts = {a.path for a in history["client"].list_artifacts(first.info.run_id)}
    assert "promotion.json" in artifacts


def test_a_retrain_without_new_data_does_no_backbone_work_and_keeps_the_champion(history):
    second = history["runs"][1]
    assert history["codes"][1] == 0 and history["aliases"][1] == "1"
    assert second.data.tags["promotion.decision"] == "skipped"
    assert second.data.metrics["features.computed"] == 0
    assert "diagnostics/time.features_s" not in second.data.metrics  # no stage ran
    versions = history["client"].search_model_versions("name='image_classifier'")
    assert len(versions) == 2  # v1 and the third run's challenger: the skipped run registered none


def test_new_images_are_the_only_backbone_work_and_a_weaker_challenger_is_kept_out(history):
    third = history["runs"][2]
    assert history["codes"][2] == 0 and history["aliases"][2] == "1"
    # 2 new train photos × 2 views, and 2 new test photos; everything else came from the cache.
    assert third.data.metrics["features.computed"] == 2 * 2 + 2
    assert third.data.tags["promotion.decision"] == "kept champion"
    assert third.data.tags["promotion.challenger_version"] == "2"
    decision = json.loads((history["project"] / "data/08_reporting/promotion.json").read_text())
    assert decision["promote"] is False and decision["champion_version"] == "1"
    assert decision["champion_score"] > 0.5 and decision["challenger_score"] > 0.5  # chance is 1/3


def test_a_challenger_that_lost_is_not_retrained_again_on_the_same_data(history):
    third, fourth = history["runs"][2], history["runs"][3]
    assert history["codes"][3] == 0 and fourth.data.tags["promotion.decision"] == "skipped"
    assert third.info.run_id in fourth.data.tags["promotion.reason"]


def test_a_second_invocation_exits_at_once_while_one_runs(history):
    project = history["project"]
    with exclusive_lock(project / "data/.retraining.lock") as acquired:
        assert acquired
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "image_classifier.retrain"],
            cwd=project,
            env={**os.environ},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == EXIT_LOCKED, result.stderr[-2000:]
    assert "already running" in result.stderr and time.perf_counter() - start < 60
    assert len(_runs(history["client"])) == 4  # nothing was started


def test_inference_classifies_a_folder_and_lists_unreadable_files(history, tmp_path):
    project = history["project"]
    folder = tmp_path / "incoming"
    (folder / "nested").mkdir(parents=True)
    photos = sorted((demo_dataset() / "test" / "pants").iterdir())[:2]
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    write_photo(folder / "nested" / "noise.png", seed=3)
    (folder / "notes.txt").write_text("not an image")
    run_session(project, "inference", inference_dir=str(folder))
    table = pd.read_csv(project / "data/07_model_output/predictions.csv", keep_default_na=False)
    assert sorted(table["file"]) == sorted([p.name for p in photos] + ["nested/noise.png", "notes.txt"])
    ok = table[table["error"] == ""]
    assert len(ok) == 3 and set(ok["label"]) <= {"dress", "hat", "pants"}
    probabilities = ok[[c for c in table.columns if c.startswith("prob_")]].to_numpy(float)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    bad = table.set_index("file").loc["notes.txt"]
    assert bad["label"] == "" and "not an image" in bad["error"]


# `python -m image_classifier`, printing its peak resident memory when it exits. VmHWM counts this
# process's own memory only: the child's ru_maxrss from wait4 would include this test process's,
# which Linux carries over the fork and exec.
_REPORTING_PEAK_MEMORY = """
import atexit, runpy, sys
def peak():
    print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")), file=sys.stderr)
atexit.register(peak)
sys.argv[0] = "image_classifier"
runpy.run_module("image_classifier", run_name="__main__")
"""


def test_inference_survives_bombs_empty_files_and_undecodable_names_in_bounded_memory(history, tmp_path):
    """The issue's probe: 8 copies of a 12000² PNG (420 KB each, 432 MB decoded), a 0-byte file,
    a non-UTF-8 name and 5 good photos; one row per file, exit 0, peak memory well under 2 GB."""
    project, folder = history["project"], tmp_path / "hostile"
    folder.mkdir()
    Image.new("RGB", (12000, 12000), (200, 30, 30)).save(folder / "bomb0.png")
    for i in range(1, 8):
        shutil.copy(folder / "bomb0.png", folder / f"bomb{i}.png")
    (folder / "empty.jpg").write_bytes(b"")
    good = sorted((demo_dataset() / "test" / "dress").iterdir())[:6]
    for photo in good[:5]:
        shutil.copy(photo, folder / photo.name)
    with open(os.path.join(bytes(folder), b"r\xe9sum\xe9.jpg"), "wb") as file:  # Latin-1 bytes
        file.write(good[5].read_bytes())
    result = subprocess.run(
        [sys.executable, "-c", _REPORTING_PEAK_MEMORY, "--pipelines", "inference"]
        + ["--params", f"inference_dir={folder}"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", result.stderr).group(1))
    assert peak_kib * 1024 < 2 * 1024**3
    table = pd.read_csv(project / "data/07_model_output/predictions.csv", keep_default_na=False)
    assert len(table) == 8 + 1 + 5 + 1
    errors = table.set_index("file")["error"]
    assert all(errors[f"bomb{i}.png"].startswith("too large: 12000x12000") for i in range(8))
    assert errors["empty.jpg"] == "empty file: zero bytes"
    assert errors["r\\xe9sum\\xe9.jpg"] == "unreadable name: not valid UTF-8"
    assert (errors[[p.name for p in good[:5]]] == "").all()


def test_mlflow_models_serve_answers_for_the_champion(history):
    project = history["project"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/image_classifier@champion"]
        + ["--host", "127.0.0.1", "--port", str(port), "--env-manager", "local"],
        cwd=project,
        # mlflow starts uvicorn by name: the venv's bin must be on PATH even when not activated.
        env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its workers share the group: stopped together by the server's PID
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        photo = np.asarray(Image.open(sorted((demo_dataset() / "test" / "hat").iterdir())[0]).convert("RGB"))
        body = json.dumps({"inputs": photo[None].tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        served = json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"][0]
        mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
        local = mlflow.pyfunc.load_model("models:/image_classifier@champion").predict(photo[None])
        assert served["label"] == local["label"].iloc[0]
        assert served["prob_hat"] == pytest.approx(local["prob_hat"].iloc[0], abs=1e-5)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
