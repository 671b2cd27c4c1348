"""notebooks/first_look.ipynb, executed top to bottom on a freshly trained scratch project."""

import os
import re
import shutil

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from nbclient import NotebookClient

from conftest import PROJECT_ROOT, run_session, scratch_project, tracked

# Trains a model and starts a Kedro session in a Jupyter kernel.
pytestmark = pytest.mark.slow

NOTEBOOK = PROJECT_ROOT / "notebooks" / "first_look.ipynb"
LABELS = {"dress", "hat", "pants"}
# The quickest run that still fills everything the notebook reads: the ingestion report, the
# augmentation preview, cached features and a registered model. Accuracy is not the point here.
RUN_PARAMS = {
    "backbone.input_size": 96,
    "training.epochs": 3,
    "fine_tuning.enabled": False,
    "augmentation.views": 1,
    "evaluation.tta": "none",
    # 72 images at 96 px: quicker on TensorFlow than converting the backbone for ONNX Runtime first.
    "features.engine": "tensorflow",
}
# What a terminal with the Makefile's exports would give the kernel: nothing phones home.
QUIET = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory, tiny_demo):
    """The scratch project and its notebook, with every cell's outputs."""
    project = scratch_project(tmp_path_factory.mktemp("project"), tiny_demo)
    jupyter = tmp_path_factory.mktemp("jupyter")
    # A kernelspec of this venv's Python, found first: a `python3` kernel the user installed
    # elsewhere (~/.local/share/jupyter) would otherwise win and run another interpreter.
    write_kernel_spec(jupyter / "kernels" / "python3")
    with tracked(project) as client, pytest.MonkeyPatch.context() as patch:
        run_session(project, "__default__", **RUN_PARAMS)
        # The project's first model is its champion: the notebook's last cell loads it.
        assert "champion" in client.get_registered_model("image_classifier").aliases

        (project / "notebooks").mkdir()
        notebook = nbformat.read(shutil.copy(NOTEBOOK, project / "notebooks"), as_version=4)
        patch.setenv("JUPYTER_PATH", str(jupyter))
        # Connection files and IPython's profile and history stay out of the user's home.
        patch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
        env = {**os.environ, **QUIET, "IPYTHONDIR": str(jupyter / "ipython")}
        # tracked() has set MLFLOW_TRACKING_URI and MLFLOW_ARTIFACT_LOCATION in os.environ.
        NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=300,
            resources={"metadata": {"path": str(project / "notebooks")}},
        ).execute(env=env)
    return project, notebook


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _text(cell) -> str:
    """Everything a cell printed or displayed as text, without the terminal colours Kedro's rich
    console adds."""
    parts = []
    for output in cell.outputs:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return re.sub(r"\x1b\[[0-9;]*m", "", "".join(parts))


def test_every_cell_runs_and_the_store_is_the_projects(executed):
    project, notebook = executed
    cells = _code_cells(notebook)
    assert len(cells) == 5 and all(cell.execution_count for cell in cells)
    assert "72 photos accepted, 0 rejected" in _text(cells[1])
    assert f"MLflow store: sqlite:///{project / 'mlflow.db'}" in _text(cells[4])
    # The notebook's kernel ran in notebooks/: nothing may have opened a store of its own there.
    assert sorted(p.name for p in (project / "notebooks").iterdir()) == ["first_look.ipynb"]


def test_the_champion_classifies_test_photos(executed):
    _, notebook = executed
    table = _text(_code_cells(notebook)[-1])
    rows = [line.split() for line in table.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    # One row per photo shown: index, true label, predicted label, then probabilities.
    assert len(rows) == 6
    assert all(row[1] in LABELS and row[2] in LABELS for row in rows)


def test_the_plots_are_shown(executed):
    _, notebook = executed
    cells = _code_cells(notebook)
    for cell in (cells[2], cells[3], cells[4]):  # augmentation preview, PCA, classified photos
        assert any("image/png" in output.get("data", {}) for output in cell.outputs)
