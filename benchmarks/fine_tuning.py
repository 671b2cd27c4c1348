"""Fine-tuning speed: what a fine-tuning epoch costs under each variant, on this machine.

    .venv/bin/python benchmarks/fine_tuning.py                       # every variant
    .venv/bin/python benchmarks/fine_tuning.py --variants fp32,bf16  # some

Each variant runs in its own process, because precision policies and thread pools are set once
per process. The model is the default fine-tuning model, built by the project's own functions:
MobileNetV2's trunk with its converted weights, the head, the top ``fine_tuning.unfreeze_layers``
convolution layers unfrozen, BatchNorm frozen, Adam with label smoothing. It takes 3 warm-up steps,
then ``--steps`` timed training steps on one fixed batch of random pixels (the arithmetic does not
depend on them). The input pipeline is not in the timing: loading runs in worker threads beside
the steps, and a whole fine-tuning epoch on the demo takes within 10% of its steps' time.

For each variant it prints images/s, the seconds one epoch of the demo's training photos costs at
that speed, and the process's peak RSS. Variants:

- fp32: the default;
- bf16: ``keras.mixed_precision`` policy ``mixed_bfloat16`` (the head stays float32);
- batch16, batch64: another ``fine_tuning.batch_size``;
- intra2_inter1, intra1_inter2: TensorFlow's thread pools set by hand (the default: as many
  threads as cores in each);
- unfreeze20: half the unfrozen layers;
- px160, px192: a smaller input, as in the early epochs of progressive resizing;
- trunk_cached: only the unfrozen top, fed the frozen part's output at the freeze boundary, as if
  that output were cached for each planned view; the frozen part's own speed (what filling such a
  cache costs per view) is printed beside it;
- unresized: the model without its resize layer, fed views of the input size (as ``xla`` is);
- xla, xla_bf16: the training step compiled by XLA (``jit_compile=True``, which Keras turns off
  on a machine with no GPU), in float32 and in ``mixed_bfloat16``.

Accuracy is not measured here: benchmarks/accuracy.py runs whole recipes with 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import ROOT, demo_folder, peak_rss_mb

VARIANTS: dict[str, dict] = {
    "fp32": {},
    "bf16": {"policy": "mixed_bfloat16"},
    "batch16": {"batch": 16},
    "batch64": {"batch": 64},
    "intra2_inter1": {"intra": 2, "inter": 1},
    "intra1_inter2": {"intra": 1, "inter": 2},
    "unfreeze20": {"unfreeze": 20},
    "px160": {"size": 160},
    "px192": {"size": 192},
    "trunk_cached": {"trunk_cached": True},
    "unresized": {"unresized": True},
    "xla": {"xla": True},
    "xla_bf16": {"xla": True, "policy": "mixed_bfloat16"},
}


def _images_per_s(model, inputs, labels, steps: int) -> float:
    for _ in range(3):  # tracing and oneDNN's first-call set-up
        model.train_on_batch(inputs, labels)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(inputs, labels)
    return steps * len(inputs) / (time.perf_counter() - start)


def measure(variant: str, steps: int) -> dict[str, float]:
    """One variant's speed, in this process."""
    options = {"policy": "float32", "batch": 32, "intra": 0, "inter": 0, "unfreeze": 40, "size": 224}
    options |= VARIANTS[variant]
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(options["intra"])
    tf.config.threading.set_inter_op_parallelism_threads(options["inter"])
    import keras
    import numpy as np

    from image_classifier.backbones import get_spec, load_pretrained
    from image_classifier.models import (
        classifier_head,
        compile_classifier,
        feature_extractor,
        full_classifier,
        unfreeze_top,
        unresized_classifier,
    )

    spec, size = get_spec("mobilenet_v2"), options["size"]
    head = classifier_head(1280, 10, 0.2, 0)  # float32 under any policy, like the trained head
    keras.mixed_precision.set_global_policy(options["policy"])
    trunk = load_pretrained(spec.name, size, ROOT / "data/06_models/backbones")
    boundary = spec.tunable(trunk)[-options["unfreeze"]].input
    unfreeze_top(trunk, options["unfreeze"], spec.tunable)
    rng = np.random.default_rng(0)
    labels = keras.utils.to_categorical(rng.integers(0, 10, options["batch"]), 10)
    row = {}
    if options.get("trunk_cached"):
        bottom, top = keras.Model(trunk.input, boundary), keras.Model(boundary, trunk.output)
        cached = keras.Input(boundary.shape[1:])
        model = keras.Model(cached, head(keras.layers.GlobalAveragePooling2D()(top(cached, training=False))))
        pixels = rng.normal(size=(options["batch"], size, size, 3)).astype("float32")
        bottom.predict(pixels, verbose=0)
        start = time.perf_counter()
        for _ in range(steps):
            bottom.predict(pixels, verbose=0)
        row["frozen_part_img_per_s"] = round(steps * len(pixels) / (time.perf_counter() - start), 1)
        inputs = bottom.predict(pixels, verbose=0)
        row["boundary_kb_fp16"] = round(int(np.prod(boundary.shape[1:])) * 2 / 1024, 1)
    else:
        # XLA cannot compile the in-model antialiased resize, which views of the input size skip.
        unresized = options.get("xla") or options.get("unresized")
        model = (
            unresized_classifier(trunk, spec, head)
            if unresized
            else full_classifier(feature_extractor(trunk, spec, size), head)
        )
        inputs = rng.integers(0, 256, (options["batch"], size, size, 3), dtype=np.uint8)
    compile_classifier(model, 1e-4, 0.1)
    # Keras leaves XLA off on a machine with no GPU: it has to be asked for.
    model.jit_compile = options.get("xla", False)
    row["img_per_s"] = round(_images_per_s(model, inputs, labels, steps), 1)
    row["peak_rss_mb"] = round(peak_rss_mb())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per variant")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single variant, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    photos = sum(1 for p in (demo_folder() / "train").glob("*/*") if p.is_file())
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; an epoch = the demo's {photos} training photos"
    )
    print(f"{'variant':<15}{'img/s':>8}{'s/epoch':>9}{'vs fp32':>9}{'peak RSS MB':>13}  other")
    reference = None
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT / "src")}
    for variant in args.variants.split(","):
        child = subprocess.run(
            [sys.executable, __file__, "--one", variant, "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
        )
        if child.returncode:
            print(f"{variant:<15}failed: {child.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        speed = row.pop("img_per_s")
        reference = reference or (speed if variant == "fp32" else None)
        ratio = f"{speed / reference:.2f}x" if reference else "-"
        rss = row.pop("peak_rss_mb")
        other = ", ".join(f"{k} {v}" for k, v in row.items())
        print(f"{variant:<15}{speed:>8.1f}{photos / speed:>9.0f}{ratio:>9}{rss:>13}  {other}", flush=True)


if __name__ == "__main__":
    main()
