"""Start-up cost: every Kedro command in the project (``kedro info``, ``kedro registry list``,
``kedro run``) imports the settings and registers the pipelines before doing anything. Neither
may import the libraries only the nodes need, which cost seconds before the first line of work."""

import json
import subprocess
import sys

from conftest import PROJECT_ROOT

HEAVY = (
    "tensorflow",
    "keras",
    "albumentations",
    "onnxruntime",
    "openvino",
    "tf2onnx",
    "sklearn",
    "matplotlib",
)

# A fresh interpreter: in pytest's own process, other tests have imported all of them already.
_PROBE = f"""
import json, sys
import image_classifier.settings
from image_classifier.pipeline_registry import register_pipelines
register_pipelines()
print(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in {HEAVY!r})))
"""


def test_settings_and_pipeline_registry_import_no_heavy_library():
    # From the project root: register_pipelines reads the sweep's backbones from its conf/.
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    imported = json.loads(probe.stdout.strip().splitlines()[-1])
    assert imported == [], f"imported at start-up: {sorted({m.partition('.')[0] for m in imported})}"
