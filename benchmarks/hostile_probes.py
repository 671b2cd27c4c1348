"""Hostile inputs of the hostile-inputs work that need no trained model, each in a fresh child process; prints
one line per probe: what happened and the child's peak memory (VmHWM).

    .venv/bin/python benchmarks/hostile_probes.py                 # this checkout
    PYTHONPATH=<old checkout>/src .venv/bin/python benchmarks/hostile_probes.py   # an older one

Each probe builds its own files in a temporary folder; nothing outside it is touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

# Three classes × three splits of small real PNGs, then the probe's own hostile files.
_SETUP = """
import atexit, os, sys, numpy as np
# VmHWM: this process's own peak; ru_maxrss would also count the parent's, carried over the exec.
hwm = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
atexit.register(lambda: print(f"PEAK {hwm() // 1024} MiB", file=sys.stderr))
from pathlib import Path
from PIL import Image
root = Path(sys.argv[1])
for s, split in enumerate(("train", "validation", "test")):
    for c, label in enumerate(("cat", "dog")):
        (root / split / label).mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(10 * s + c).integers(0, 256, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / label / "ok.png")
cat = root / "train" / "cat"
"""

_INGEST = """
from image_classifier.datasets import ImageFolderDataset
from image_classifier.pipelines.ingestion.nodes import index_images
index, report = index_images(ImageFolderDataset(str(root)).load(), {}, {"workers": 1}, 0)
print("accepted", len(index), "rejected", {r["path"]: r["reason"][:60] for r in report["rejected_files"]})
"""

PROBES = {
    "ingestion: a file whose read fails with EIO": 'os.symlink("/proc/self/mem", cat / "eio.png")' + _INGEST,
    "ingestion: dangling symlink and FIFO": (
        'os.symlink("gone.png", cat / "dangling.png"); os.mkfifo(cat / "pipe.png")' + _INGEST
    ),
    "ingestion: a 2 GB file (sparse)": 'os.truncate(open(cat / "big.jpg", "wb").name, 2 * 1024**3)' + _INGEST,
    "parameters: training.learning_rate=inf": """
from image_classifier.config import validate_parameters
print("accepted:", validate_parameters({"training": {"learning_rate": "inf"}}).training.learning_rate)
""",
    "data/05_model_input: a pickle that runs a command": """
import pickle
class P:
    def __reduce__(self):
        return (os.system, ("echo PAYLOAD RAN",))
path = root / "train_features"
try:
    from image_classifier.datasets import ArraysDataset
    np.savez(str(path) + ".npz", features=np.array([P()], dtype=object), allow_pickle=True)
    ArraysDataset(str(path) + ".npz").load()
except ImportError:  # before: the catalog's pickle.PickleDataset
    from kedro_datasets.pickle import PickleDataset
    pickle.dump({"features": P()}, open(str(path) + ".pkl", "wb"))
    PickleDataset(filepath=str(path) + ".pkl").load()
""",
    "feature cache: the disk fills up": """
import resource, signal
from image_classifier.datasets import FeatureStoreDataset
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
store = FeatureStoreDataset(str(root / "store")).load()
try:
    store.append([f"k{i}" for i in range(64)], np.ones((64, 1280), np.float32))
finally:
    print("partial files left:", [p.name for p in (root / "store").iterdir()])
""",
}


def run(name: str, code: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_SETUP) + textwrap.dedent(code), folder],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    lines = [line for line in child.stderr.splitlines() if line.strip() and "oneDNN" not in line]
    peak = next((line[5:] for line in lines if line.startswith("PEAK ")), "?")
    error = next((line for line in reversed(lines) if not line.startswith("PEAK ")), "")
    return f"{name} | exit {child.returncode} | peak {peak} | {child.stdout.strip()[:300]} {error[:200]}"


if __name__ == "__main__":
    print(
        f"python {sys.executable}, image_classifier from {Path(__import__('image_classifier').__file__).parent}"
    )
    for probe, code in PROBES.items():
        print(run(probe, code), flush=True)
