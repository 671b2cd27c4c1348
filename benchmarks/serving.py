"""Latency and throughput of the served champion, through a real `mlflow models serve`.

    .venv/bin/python benchmarks/serving.py [--model-uri models:/image_classifier@champion]
        [--requests 200] [--batches 20] [--seconds 120]

Starts `mlflow models serve` on 127.0.0.1 (as `make serve` does) with the store that
MLFLOW_TRACKING_URI names (default: the project's sqlite:///mlflow.db), then, from this process,
sends the README's request: base64-encoded JPEG files of the demo's test photos. First one photo
per request (the latency a user waits for: p50, p90, p99), then batches of 32 (photos per second).
Requests go one at a time; each phase stops at its count or its time bound, whichever comes first.
A few requests before each phase are not counted: they pay for connection set-up, not the model.

It prints figures and asserts nothing. The champion comes from `make run`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARM_UP = 3


def _photos(folder: Path, count: int) -> list[str]:
    """Base64 text of up to ``count`` JPEG files, as the README's request sends them."""
    files = sorted(folder.rglob("*.jpg"))[:count]
    if not files:
        sys.exit(f"no JPEG photos under {folder}: run `make data`, or pass --photos")
    return [base64.b64encode(path.read_bytes()).decode("ascii") for path in files]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(model_uri: str, port: int, log: Path) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent  # `mlflow models serve` runs `uvicorn` from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, seconds: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if server.poll() is not None:
            sys.exit(f"`mlflow models serve` exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.5)
    sys.exit(f"`mlflow models serve` did not answer within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


def _post(url: str, photos: list[str]) -> float:
    """Seconds for one request, from sending to the parsed answer."""
    body = json.dumps({"inputs": {"images": photos}}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - start
    if len(answer["predictions"]) != len(photos):
        sys.exit(f"expected {len(photos)} predictions, got {len(answer['predictions'])}")
    return elapsed


def _phase(url: str, photos: list[str], per_request: int, count: int, seconds: float) -> list[float]:
    """Times of up to ``count`` requests of ``per_request`` photos each, within ``seconds``."""

    def request(i: int) -> list[str]:
        return [photos[(i * per_request + j) % len(photos)] for j in range(per_request)]

    for i in range(WARM_UP):
        _post(url, request(i))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < count and time.perf_counter() - start < seconds:
        times.append(_post(url, request(len(times))))
    return times


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", default="models:/image_classifier@champion")
    parser.add_argument("--photos", type=Path, default=ROOT / "data/01_raw/images/test")
    parser.add_argument("--requests", type=int, default=200, help="one-photo requests, at most")
    parser.add_argument("--batches", type=int, default=20, help="requests of 32 photos, at most")
    parser.add_argument("--seconds", type=float, default=120, help="time bound of each phase")
    args = parser.parse_args()

    photos = _photos(args.photos, 64)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        server = _serve(args.model_uri, port, log)
        try:
            ready = _wait_until_up(url, server, log, 300)
            single = _phase(url, photos, 1, args.requests, args.seconds)
            batched = _phase(url, photos, 32, args.batches, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    sizes = [len(base64.b64decode(p)) for p in photos]
    print(
        f"model {args.model_uri}; {len(photos)} JPEG photos of {statistics.mean(sizes) / 1024:.0f} KiB on average"
    )
    print(f"server up (model loaded) in {ready:.1f} s")
    print(
        f"one photo a request, {len(single)} requests: p50 {_percentile(single, 0.5) * 1000:.0f} ms, "
        f"p90 {_percentile(single, 0.9) * 1000:.0f} ms, p99 {_percentile(single, 0.99) * 1000:.0f} ms, "
        f"max {max(single) * 1000:.0f} ms"
    )
    print(
        f"32 photos a request, {len(batched)} requests: p50 {_percentile(batched, 0.5) * 1000:.0f} ms, "
        f"{32 * len(batched) / sum(batched):.1f} photos/s"
    )


if __name__ == "__main__":
    main()
