"""The data audit on a corrupted copy of the demo photos: precision and recall per kind, its cost
next to a warm run's, and what leaving the flagged images out does to test accuracy.

    .venv/bin/python benchmarks/audit.py                  # everything (~40 min)
    .venv/bin/python benchmarks/audit.py --no-training    # detection and thresholds only (~10 min)
    .venv/bin/python benchmarks/audit.py --seed 1 --run-seeds 42,0   # (a), (b), (c) with two run seeds
    .venv/bin/python benchmarks/audit.py --seed 1 --no-detection --runs c   # the ceiling (c) alone

The corruption, seeded (--seed): 5% of the training photos are moved to another class (their
label flipped); 30 test photos are copied into train under their own class, 6 each of: mirrored,
a 90% centre crop, re-encoded at JPEG quality 40, resized to half, rotated by 3-8 degrees; 20
outliers are added to train under random classes (7 blank frames, 7 screenshots of text, 6 of
random noise). The demo folder itself is never written to: the copy is hard links plus the new
files, under a temporary folder.

Each audit runs `kedro run --pipelines ingestion,augmentation,features,audit` in a scratch copy of
the project sharing the feature cache. Printed: the audit of the clean demo photos (what the data
already holds), then for the corrupted copy, per kind, precision and recall with the shipped
thresholds, and a table of other thresholds (label issues: each audit.label_max_score, by the
audit's node over the features of one run; near duplicates and outliers: one audit each).
Label-issue precision is shown twice: against the flips only, and not counting the photos the
clean audit flags too at that cut-off (label errors of the demo photos themselves, or photos
between two classes, which no flip explains).

Without --no-training: warm `kedro run`s of the whole default pipeline on the corrupted copy,
(a) as it is and (b) with `audit.exclude=[label_issues,cross_split_duplicates,outliers]`, and
their test accuracy on the clean test split (the planted copies live in train). (c) is the
ceiling of (b): the corrupted copy without exactly what was planted, as a perfect audit would
leave out (the demo photos less the flipped ones). The audit's wall time is read from (a)'s
`diagnostics/time.audit_s`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import pandas as pd
from common import demo_folder, kedro_run, scratch_project
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from PIL import Image, ImageDraw

from image_classifier.config import AuditParams
from image_classifier.pipeline_registry import DEFAULT_STAGES
from image_classifier.pipelines.audit.pipeline import create_pipeline as audit_pipeline

_NEAR_COPIES = ("mirror", "crop90", "jpeg40", "half", "rotate")
_AUDIT_PIPELINES = ["ingestion", "augmentation", "features", "audit"]
_EVERYTHING = "[label_issues,cross_split_duplicates,outliers]"
# Each full run: its name and the parameters it changes.
_RUNS = {
    "a": ("(a) corrupted", {}),
    "b": ("(b) audit.exclude all", {"audit.exclude": _EVERYTHING}),
    "c": ("(c) planted left out", {}),
}


def _near_copy(photo: Image.Image, kind: str, rng: np.random.Generator, target: Path) -> None:
    if kind == "mirror":
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif kind == "crop90":
        dx, dy = round(photo.width * 0.05), round(photo.height * 0.05)
        photo = photo.crop((dx, dy, photo.width - dx, photo.height - dy))
    elif kind == "half":
        photo = photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS)
    elif kind == "rotate":
        photo = photo.rotate(float(rng.uniform(3, 8) * rng.choice([-1, 1])), Image.Resampling.BILINEAR)
    photo.save(target, quality=40 if kind == "jpeg40" else 92)


def _outlier(index: int, rng: np.random.Generator, target: Path) -> None:
    size = (int(rng.integers(300, 600)), int(rng.integers(300, 600)))
    if index % 3 == 0:
        image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    elif index % 3 == 1:
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for line in range(int(rng.integers(8, 20))):
            words = " ".join("".join(rng.choice(list("abcdefghijklmnop"), 6)) for _ in range(5))
            draw.text((10, 10 + 18 * line), words, fill="black")
    else:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image.save(target, quality=90)


def corrupt(raw: Path, target: Path, seed: int) -> dict[str, set[str]]:
    """The corrupted copy of ``raw`` under ``target``; returns the planted paths of each kind
    (relative, as the audit reports them): ``flips``, ``copies`` (train side, mapped to their
    test original in ``originals``), ``outliers``."""
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in (raw / "train").iterdir() if p.is_dir())
    photos = {
        split: sorted(p for p in (raw / split).glob("*/*") if p.is_file())
        for split in ("train", "validation", "test")
    }
    flipped = set(
        rng.choice(len(photos["train"]), round(0.05 * len(photos["train"])), replace=False).tolist()
    )
    planted: dict[str, set[str]] = {"flips": set(), "copies": set(), "outliers": set()}
    for split, files in photos.items():
        for i, photo in enumerate(files):
            label = photo.parent.name
            if split == "train" and i in flipped:
                label = str(rng.choice([c for c in classes if c != photo.parent.name]))
                planted["flips"].add(f"train/{label}/{photo.name}")
            (target / split / label).mkdir(parents=True, exist_ok=True)
            try:
                os.link(photo, target / split / label / photo.name)
            except OSError:  # another file system
                shutil.copy(photo, target / split / label / photo.name)
    originals = {}
    for n, i in enumerate(rng.choice(len(photos["test"]), 30, replace=False)):
        source = photos["test"][i]
        kind = _NEAR_COPIES[n % len(_NEAR_COPIES)]
        relative = f"train/{source.parent.name}/copy{n:02d}-{kind}.jpg"
        with Image.open(source) as photo:
            _near_copy(photo.convert("RGB"), kind, rng, target / relative)
        planted["copies"].add(relative)
        originals[relative] = f"test/{source.parent.name}/{source.name}"
    for n in range(20):
        relative = f"train/{rng.choice(classes)}/outlier{n:02d}.jpg"
        _outlier(n, rng, target / relative)
        planted["outliers"].add(relative)
    planted["originals"] = originals  # type: ignore[assignment]
    return planted


def without_planted(corrupted: Path, target: Path, planted: dict) -> Path:
    """The corrupted copy less every planted file under ``target``: what a perfect audit with
    ``audit.exclude`` of every kind would train on."""
    left_out = planted["flips"] | planted["copies"] | planted["outliers"]
    for photo in sorted(corrupted.glob("*/*/*")):
        relative = photo.relative_to(corrupted).as_posix()
        if relative not in left_out:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            os.link(photo, target / relative)
    return target


def _audit(project: Path, raw: Path, **params) -> tuple[pd.DataFrame, dict[str, float]]:
    run = kedro_run(project, _AUDIT_PIPELINES, raw_images_dir=raw, **params)
    return pd.read_csv(project / "data/08_reporting/audit.csv"), run


def _pr(found: set[str], planted: set[str]) -> str:
    hits = len(found & planted)
    precision = hits / len(found) if found else float("nan")
    return f"precision {precision:.3f} ({hits}/{len(found)}), recall {hits / len(planted):.3f} ({hits}/{len(planted)})"


def _kind(report: pd.DataFrame, issue: str, split: str = "train") -> pd.DataFrame:
    return report.loc[(report["issue"] == issue) & (report["split"] == split)]


def _label_flags(project: Path, raw: Path, cuts: tuple[float, ...]) -> dict[float, set[str]]:
    """The training images flagged as label issues at each cut-off, by the audit's own nodes over
    the features of the last run (the cut-off also decides whom the second round of heads leaves
    out, so each is a whole audit of the labels, not a threshold on one set of scores)."""
    nodes = {node.name: node for node in audit_pipeline().nodes}
    centres_node, find_node = nodes["compute_centre_features"], nodes["find_issues"]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, runtime_params={"raw_images_dir": str(raw)}) as session:
        catalog = session.load_context().catalog
        loaded = {
            name: catalog.load(name)
            for name in {*centres_node.inputs, *find_node.inputs} - {"audit_centre_features"}
        }
    loaded["audit_centre_features"] = centres_node.func(*(loaded[name] for name in centres_node.inputs))
    flags = {}
    for cut in cuts:
        given = {**loaded, "params:audit": {**loaded["params:audit"], "label_max_score": cut}}
        report, _ = find_node.func(*(given[name] for name in find_node.inputs))
        flags[cut] = set(_kind(report, "label_issue")["path"])
    return flags


def detection(project: Path, raw: Path, corrupted: Path, planted: dict) -> None:
    shipped = AuditParams().label_max_score
    cuts = tuple(sorted({0.1, 0.05, 0.04, 0.03, 0.02, shipped}, reverse=True))
    clean_report, _ = _audit(project, raw)
    # The same photo keeps its file name in the copy, whatever class folder it was moved to.
    clean = {cut: {Path(p).name for p in found} for cut, found in _label_flags(project, raw, cuts).items()}
    print(
        f"clean demo photos: {len(clean[shipped])} train label issues (< {shipped}), "
        f"{int((clean_report['issue'] == 'cross_split_duplicate').sum())} cross-split duplicate rows, "
        f"{int((clean_report['issue'] == 'outlier').sum())} outliers"
    )
    _, run = _audit(project, corrupted)
    print(f"audit stage {run.get('diagnostics/time.audit_s', float('nan')):.1f} s (warm features)")

    print("label flips (train), by audit.label_max_score:")
    for cut, found in _label_flags(project, corrupted, cuts).items():
        # Flags the clean audit raises too, on photos that were not flipped: the demo's own.
        own = {p for p in found - planted["flips"] if Path(p).name in clean[cut]}
        print(
            f"  < {cut:<5} {_pr(found, planted['flips'])}; "
            f"not counting {len(own)} flags of the clean audit: {_pr(found - own, planted['flips'])}"
        )

    centre, shipped = AuditParams().centre_crop, AuditParams().near_duplicate_threshold
    # (1.0, 0.35): the plain embeddings alone, at the threshold that suited them before the centres.
    for crop, threshold in sorted(
        {(centre, 0.13), (centre, 0.25), (centre, shipped), (centre, 0.3), (centre, 0.35), (1.0, 0.35)}
    ):
        report, _ = _audit(
            project,
            corrupted,
            **{"audit.centre_crop": crop, "audit.near_duplicate_threshold": threshold},
        )
        crossing = report.loc[(report["issue"] == "cross_split_duplicate") & (report["split"] == "train")]
        pairs = {(p, q) for p, q in zip(crossing["path"], crossing["partner"], strict=True)}
        right = {p for p, q in pairs if planted["originals"].get(p) == q}
        by_kind = {k: sum(1 for p in right if p.endswith(f"-{k}.jpg")) for k in _NEAR_COPIES}
        print(
            f"near duplicates across splits, centre crop {crop}, threshold {threshold}: {_pr({p for p, _ in pairs}, planted['copies'])}; "
            f"pairs right {len(right)}/{len(planted['copies'])} by kind {by_kind}; "
            f"all cross-split pairs {int(report['issue'].eq('cross_split_duplicate').sum())} rows"
        )
    for neighbours, threshold in ((10, 0.37037), (30, 0.25), (30, 0.37037), (30, 0.5)):
        report, _ = _audit(
            project, corrupted, **{"audit.neighbours": neighbours, "audit.outlier_threshold": threshold}
        )
        print(
            f"outliers (train), {neighbours} neighbours, threshold {threshold}: "
            f"{_pr(set(_kind(report, 'outlier')['path']), planted['outliers'])}"
        )


def _test_without_copies(project: Path, originals: set[str]) -> str:
    """The last run's test accuracy apart from the test photos copied into train, whose copies
    (a) trains on: that leak raises (a)'s score on the whole test split."""
    predictions = pd.read_csv(project / "data/07_model_output/test_predictions.csv")
    right = predictions["label"] == predictions["predicted"]
    copied = predictions["path"].isin(originals)
    return (
        f"{right[~copied].mean():.4f} on the {(~copied).sum()} test photos not copied, "
        f"{right[copied].mean():.4f} on the {copied.sum()} copied"
    )


def training(
    project: Path, folders: dict[str, Path], which: str, run_seed: int | None, originals: set[str]
) -> None:
    # The run's own seed (split, views, head, fine-tuning), not the corruption's: a second run
    # seed shows how much of (b) - (a) is one fine-tuning run's luck.
    seeded = {} if run_seed is None else {"seed": run_seed}
    runs, leak_free = {}, {}
    for key in which:
        name, extra = _RUNS[key]
        runs[name] = kedro_run(project, ["__default__"], raw_images_dir=folders[key], **seeded, **extra)
        leak_free[name] = _test_without_copies(project, originals)
    for name, run in runs.items():
        print(
            f"{name} (run seed {'default' if run_seed is None else run_seed}): "
            f"finetune.test_accuracy {run.get('finetune.test_accuracy', float('nan')):.4f}, "
            f"final test_accuracy {run['test_accuracy']:.4f}, head.test_accuracy {run['head.test_accuracy']:.4f}, "
            f"wall {run['wall_s']:.0f} s; validation: fine-tuned {run.get('finetune.val_accuracy', float('nan')):.4f}, "
            f"head {run['head.val_accuracy']:.4f}; test {leak_free[name]}"
        )
    if "a" not in which:
        return
    a = runs[_RUNS["a"][0]]
    stages = {stage: a.get(f"diagnostics/time.{stage}_s", 0.0) for stage in DEFAULT_STAGES}
    print(
        f"audit {stages['audit']:.1f} s of the warm run's {sum(stages.values()):.1f} s of stages "
        f"({stages['audit'] / sum(stages.values()):.1%}); "
        + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-training", action="store_true", help="detection only, no full runs")
    parser.add_argument("--no-detection", action="store_true", help="the full runs only (--runs)")
    parser.add_argument(
        "--run-seeds",
        help="comma-separated run seeds for the full runs, e.g. 42,0 (default: the project's seed, once)",
    )
    parser.add_argument(
        "--runs",
        default="a,b,c",
        help="which full runs, comma-separated: a (corrupted), b (audit.exclude all), c (planted left out)",
    )
    args = parser.parse_args()
    which = args.runs.replace(",", "")
    if not which or set(which) - set(_RUNS):
        parser.error(f"--runs takes a comma-separated subset of a,b,c, not {args.runs!r}")
    # SIGTERM would end the process without unwinding: the scratch folder (~300 MB) would stay.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raw = demo_folder()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as scratch:
        corrupted = Path(scratch) / "corrupted"
        planted = corrupt(raw, corrupted, args.seed)
        project = scratch_project(Path(scratch) / "project")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
        os.environ["MLFLOW_ARTIFACT_LOCATION"] = str(project / "mlruns")
        os.chdir(project)
        print(
            f"demo {raw}; planted: {len(planted['flips'])} label flips, {len(planted['copies'])} near copies of "
            f"test photos in train, {len(planted['outliers'])} outliers"
        )
        if not args.no_detection:
            detection(project, raw, corrupted, planted)
        if not args.no_training:
            run_seeds = [int(seed) for seed in args.run_seeds.split(",")] if args.run_seeds else [None]
            folders = {"a": corrupted, "b": corrupted}
            if "c" in which:
                folders["c"] = without_planted(corrupted, Path(scratch) / "planted-left-out", planted)
            for run_seed in run_seeds:
                training(project, folders, which, run_seed, set(planted["originals"].values()))


if __name__ == "__main__":
    main()
