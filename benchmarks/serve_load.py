"""Load test of ``semseg serve`` on loopback: every answer checked, throughput and latency.

Sends ``--requests`` POST /v1/segment requests from ``--clients`` concurrent clients (threads,
one keep-alive connection each), cycling the four formats (overlay, prob, label, json) and the
two upload styles (raw image body, multipart ``file``) over synthetic KITTI-like road scenes of
two sizes. Every answer is checked against the model run directly in this process: status 200,
PNG size and mode, class indices in range, labels and road fraction matching the reference
(a handful of pixels may differ where two classes tie to within float rounding, since the server
micro-batches), probabilities within one 8-bit level. The run is bounded by ``--requests`` and
``--max-seconds``.

    python3 benchmarks/serve_load.py                    # 200 requests, 8 clients, 375x1242
    python3 benchmarks/serve_load.py --quick            # 40 requests, 4 clients, small images
    python3 benchmarks/serve_load.py --model reference  # the full-size FCN-8s/VGG16
    python3 benchmarks/serve_load.py --checkpoint runs/RUN/checkpoints/best.ckpt
    python3 benchmarks/serve_load.py --url http://127.0.0.1:8000 --checkpoint CKPT
    python3 benchmarks/serve_load.py --hostile          # the same, beside hostile clients

``--hostile`` runs, for as long as the normal load lasts: ``--slow-clients`` connections that
send their headers and then trickle the body one byte a second (each is answered 408 after the
server's body deadline and starts again), ``--half-open`` connections that send half a request
head (408 after the header deadline), and ``--worst-clients`` clients that send the worst image
the server admits (``--max-pixels`` pixels, a few kilobytes as PNG; each answered 200 or 503).
It reports what each got and the server's peak resident memory (VmHWM), and fails on any answer
other than those.

Without ``--url`` it starts ``semseg serve`` in a subprocess on a free port. Without
``--checkpoint`` it serves an untrained FCN-8s with random class-score weights (so that the masks
are not trivial): ``--model tiny`` (default; width 1/8, input 32x96: this measures the service
more than the network) or ``--model reference`` (full VGG16 at 160x576, a 537 MB checkpoint).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

FORMATS = ("overlay", "prob", "label", "json")


@dataclass
class Sample:
    """One test image, encoded, with the model's reference answer."""

    png: bytes
    image: np.ndarray
    labels: np.ndarray | None = None
    levels: np.ndarray | None = None
    overlay: np.ndarray | None = None


@dataclass
class LoadReport:
    requests: int
    clients: int
    completed: int
    ok: int
    rejected: int
    failures: list[str]
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    mean_batch: float | None = None

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "clients": self.clients,
            "completed": self.completed,
            "ok": self.ok,
            "rejected_503": self.rejected,
            "failures": len(self.failures),
            "wall_s": round(self.wall_s, 2),
            "throughput_rps": round(self.throughput, 2),
            "latency_ms": {
                "p50": round(self.percentile(50), 1),
                "p95": round(self.percentile(95), 1),
                "p99": round(self.percentile(99), 1),
                "max": round(max(self.latencies_ms), 1) if self.latencies_ms else None,
                "mean": round(float(np.mean(self.latencies_ms)), 1) if self.latencies_ms else None,
            },
            "mean_micro_batch": None if self.mean_batch is None else round(self.mean_batch, 2),
        }


def untrained_checkpoint(path: Path, size: str = "tiny", seed: int = 0) -> Path:
    """An untrained FCN-8s whose class scores are not all zero: ``tiny`` (width 1/8, input
    32x96) or ``reference`` (full-width VGG16, input 160x576, as configs/kitti_fcn8s.yaml)."""
    import torch

    from semseg.tasks.segmentation import SegmentationTask

    torch.manual_seed(seed)
    tiny = size == "tiny"
    options = {"width_mult": 0.125, "keep_prob": 1.0} if tiny else {"keep_prob": 1.0}
    task = SegmentationTask(
        model_name="fcn8s",
        num_classes=2,
        model_options=options,
        input_size=[32, 96] if tiny else [160, 576],
        class_names=["not road", "road"],
    )
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            getattr(task.model, name).weight.normal_(0.0, 0.5 if tiny else 0.01)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def make_samples(count: int, height: int, width: int, seed: int = 0) -> list[Sample]:
    """Synthetic road scenes, alternating the full and a 3/4 size (mixed micro-batches)."""
    from semseg.data.synthetic import generate_scene

    samples = []
    for index in range(count):
        h, w = (height, width) if index % 2 == 0 else (height * 3 // 4, width * 3 // 4)
        image = generate_scene(seed + index, height=h, width=w).image
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        samples.append(Sample(buffer.getvalue(), image))
    return samples


def add_references(samples: list[Sample], checkpoint: Path) -> tuple[int, int]:
    """The model's own labels and road levels per sample; returns (positive class, classes)."""
    from semseg.inference.checkpoint import load_model
    from semseg.inference.predictor import Predictor, confidence_levels
    from semseg.inference.visualize import overlay

    loaded = load_model(checkpoint)
    predictor = Predictor(loaded, batch_size=1)
    for sample in samples:
        (probability,) = predictor.predict_batch([sample.image])
        sample.labels = probability.argmax(axis=0).astype(np.uint8)
        sample.levels = confidence_levels(probability[loaded.positive_class])
        sample.overlay = overlay(sample.image, sample.labels == loaded.positive_class)
    return loaded.positive_class, loaded.num_classes


def undecided(sample: Sample, num_classes: int, tolerance: int) -> np.ndarray:
    """Pixels whose label may legitimately differ from the reference: with two classes, those
    whose reference road level is within ``tolerance`` (+1 for rounding) of the 0.5 tie."""
    assert sample.levels is not None
    if num_classes != 2:
        return np.zeros(sample.levels.shape, dtype=bool)
    return np.abs(2 * sample.levels.astype(np.int16) - 255) <= 2 * (tolerance + 1)


def check_answer(
    response: httpx.Response,
    fmt: str,
    sample: Sample,
    positive: int,
    num_classes: int,
    tolerance: int = 1,
) -> str | None:
    """None when the answer is right, else what is wrong. ``tolerance``: how many 8-bit levels
    the road probability may differ from the fp32 reference (1: rounding; more for bf16)."""
    if response.status_code != 200:
        return f"status {response.status_code}: {response.text[:200]}"
    assert sample.labels is not None and sample.levels is not None and sample.overlay is not None
    height, width = sample.labels.shape
    loose = undecided(sample, num_classes, tolerance)
    loose_share = float(loose.mean()) if num_classes == 2 else 0.005
    reference_fraction = float((sample.labels == positive).mean())
    if fmt == "json":
        body = response.json()
        if (body["width"], body["height"]) != (width, height):
            return f"json size {body['width']}x{body['height']}, expected {width}x{height}"
        if abs(body["road_fraction"] - reference_fraction) > loose_share + 1e-9:
            return f"road fraction {body['road_fraction']:.4f} vs {reference_fraction:.4f}"
        if sum(area["pixels"] for area in body["classes"].values()) != width * height:
            return "class areas do not add up to the image"
        return None
    if response.headers.get("content-type") != "image/png":
        return f"content type {response.headers.get('content-type')}"
    picture = Image.open(io.BytesIO(response.content))
    if picture.size != (width, height):
        return f"{fmt} PNG is {picture.size}, expected {(width, height)}"
    array = np.asarray(picture)
    if fmt == "prob":
        if picture.mode != "L":
            return f"prob PNG mode {picture.mode}"
        worst = int(np.abs(array.astype(np.int16) - sample.levels.astype(np.int16)).max())
        return None if worst <= tolerance else f"prob differs by {worst} levels"
    if fmt == "label":
        if int(array.max()) >= num_classes:
            return f"label value {int(array.max())} out of range"
        wrong = float(((array != sample.labels) & ~loose).mean())
        return (
            None
            if wrong <= (0 if num_classes == 2 else 0.005)
            else (f"labels differ on {wrong:.3%} of the pixels that are not near a tie")
        )
    differing = np.abs(array.astype(np.int16) - sample.overlay.astype(np.int16)).max(axis=2) > 1
    wrong = float((differing & ~loose).mean())
    return (
        None
        if wrong <= (0 if num_classes == 2 else 0.005)
        else (f"overlay differs on {wrong:.3%} of the pixels that are not near a tie")
    )


def run_load(
    url: str,
    samples: list[Sample],
    positive: int,
    num_classes: int,
    requests: int,
    clients: int,
    max_seconds: float,
    tolerance: int = 1,
) -> LoadReport:
    """``requests`` requests from ``clients`` threads; stops early at ``max_seconds``."""
    url = url.rstrip("/")
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    failures: list[str] = []
    counts = {"completed": 0, "ok": 0, "rejected": 0}
    deadline = time.perf_counter() + max_seconds

    def health() -> dict:
        return httpx.get(f"{url}/healthz", timeout=10).json()

    before = health()

    def client() -> None:
        with httpx.Client(timeout=max(30.0, max_seconds)) as session:
            while True:
                with lock:
                    index = state["next"]
                    if index >= requests or time.perf_counter() > deadline:
                        return
                    state["next"] += 1
                sample = samples[index % len(samples)]
                fmt = FORMATS[index % len(FORMATS)]
                raw = (index // len(FORMATS)) % 2 == 0
                started = time.perf_counter()
                try:
                    if raw:
                        response = session.post(
                            f"{url}/v1/segment",
                            params={"format": fmt},
                            content=sample.png,
                            headers={"Content-Type": "image/png"},
                        )
                    else:
                        response = session.post(
                            f"{url}/v1/segment",
                            params={"format": fmt},
                            files={"file": (f"scene{index}.png", sample.png, "image/png")},
                        )
                    elapsed = (time.perf_counter() - started) * 1000.0
                    problem = check_answer(response, fmt, sample, positive, num_classes, tolerance)
                except Exception as error:  # a dropped connection is a failure to report
                    elapsed = (time.perf_counter() - started) * 1000.0
                    problem = f"{type(error).__name__}: {error}"
                    response = None
                with lock:
                    counts["completed"] += 1
                    latencies.append(elapsed)
                    if problem is None:
                        counts["ok"] += 1
                    elif response is not None and response.status_code == 503:
                        counts["rejected"] += 1
                    else:
                        failures.append(
                            f"request {index} ({fmt}, {'raw' if raw else 'multipart'}): {problem}"
                        )

    threads = [threading.Thread(target=client, name=f"client{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    after = health()
    batches = after["batches"] - before["batches"]
    mean_batch = (after["images"] - before["images"]) / batches if batches else None
    return LoadReport(
        requests,
        clients,
        counts["completed"],
        counts["ok"],
        counts["rejected"],
        failures,
        wall,
        latencies,
        mean_batch,
    )


@dataclass
class Hostile:
    """What the hostile clients got."""

    slow_408: int = 0
    half_open_408: int = 0
    worst_ok: int = 0
    worst_503: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "slow_bodies_answered_408": self.slow_408,
            "half_open_heads_answered_408": self.half_open_408,
            "worst_image_ok": self.worst_ok,
            "worst_image_503": self.worst_503,
            "failures": len(self.failures),
        }


def status_of(conn: socket.socket, limit_s: float) -> int | None:
    """The status code the server sends before it closes (None if it sends nothing)."""
    conn.settimeout(limit_s)
    data = b""
    try:
        while chunk := conn.recv(65536):
            data += chunk
    except OSError:
        pass
    try:
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    except (IndexError, ValueError):
        return None


def worst_image(max_pixels: int) -> tuple[bytes, int, int]:
    """The largest image the server admits, as a small PNG (smooth: it compresses well)."""
    width = min(int(max_pixels**0.5 * 1.5), 8192)
    height = max_pixels // width
    ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    image = np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue(), width, height


def run_hostile(
    url: str, stop: threading.Event, slow: int, half_open: int, worst: int, max_pixels: int
) -> tuple[Hostile, list[threading.Thread]]:
    """Start the hostile clients; they run until ``stop`` is set."""
    host, port = url.split("//", 1)[1].split(":")
    address = (host, int(port))
    report = Hostile()
    lock = threading.Lock()
    png, width, height = worst_image(max_pixels)

    def slow_body() -> None:
        while not stop.is_set():
            with socket.create_connection(address, timeout=10) as conn:
                conn.sendall(
                    b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png"
                    b"\r\nContent-Length: 1000000\r\n\r\n"
                )
                conn.settimeout(1.0)
                status = None
                while not stop.is_set():
                    try:
                        conn.sendall(b"\x89")
                        reply = conn.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:  # closed by the server: read what it said first
                        status = status_of(conn, 1.0)
                        break
                    if reply.startswith(b"HTTP/1.1 "):
                        status = int(reply.split(b" ", 2)[1])
                    break
                if stop.is_set():
                    return
                with lock:
                    if status == 408:
                        report.slow_408 += 1
                    else:
                        report.failures.append(f"slow body answered {status}")

    def half_head() -> None:
        while not stop.is_set():
            with socket.create_connection(address, timeout=10) as conn:
                conn.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Ty")
                deadline = time.monotonic() + 60
                status = None
                while not stop.is_set() and time.monotonic() < deadline:
                    status = status_of(conn, 1.0)
                    if status is not None:
                        break
                if stop.is_set():
                    return
                with lock:
                    if status == 408:
                        report.half_open_408 += 1
                    else:
                        report.failures.append(f"half-sent head answered {status}")

    def worst_client() -> None:
        with httpx.Client(timeout=120) as session:
            while not stop.is_set():
                try:
                    response = session.post(
                        f"{url}/v1/segment",
                        params={"format": "json"},
                        content=png,
                        headers={"Content-Type": "image/png"},
                    )
                except httpx.HTTPError as error:
                    with lock:
                        report.failures.append(f"worst image: {type(error).__name__}: {error}")
                    continue
                with lock:
                    body = response.json() if response.status_code == 200 else {}
                    if response.status_code == 200 and (body.get("width"), body.get("height")) == (
                        width,
                        height,
                    ):
                        report.worst_ok += 1
                    elif response.status_code == 503:
                        report.worst_503 += 1
                        time.sleep(float(response.headers.get("retry-after", "1")))
                    else:
                        report.failures.append(
                            f"worst image answered {response.status_code}: {response.text[:200]}"
                        )

    threads = [threading.Thread(target=slow_body, daemon=True) for _ in range(slow)]
    threads += [threading.Thread(target=half_head, daemon=True) for _ in range(half_open)]
    threads += [threading.Thread(target=worst_client, daemon=True) for _ in range(worst)]
    for thread in threads:
        thread.start()
    return report, threads


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def start_server(checkpoint: Path, extra: list[str], log: Path, timeout: float = 120.0):
    """``semseg serve CHECKPOINT --port 0`` in a subprocess; returns (process, url)."""
    command = [sys.executable, "-m", "semseg.cli", "serve", str(checkpoint), "--port", "0", *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, env=env
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"semseg serve exited ({process.returncode}): {log.read_text()[-2000:]}"
            )
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if " on http://" in line:
            url = line.split(" on ", 1)[1].split()[0].rstrip("/")
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        return process, url
                except httpx.HTTPError:
                    time.sleep(0.2)
    process.terminate()
    raise RuntimeError("semseg serve did not start in time")


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores, {model}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="An already running server (needs --checkpoint).")
    parser.add_argument("--checkpoint", type=Path, help="Default: an untrained FCN-8s.")
    parser.add_argument(
        "--model",
        choices=("tiny", "reference"),
        default="tiny",
        help="Without --checkpoint: width 1/8 at 32x96, or VGG16 at 160x576.",
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=1242)
    parser.add_argument("--images", type=int, default=8, help="Distinct test images.")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--batch-size", type=int, help="Passed to semseg serve.")
    parser.add_argument(
        "--backend",
        default="torch",
        help="Passed to semseg serve (default torch: fp32 eager, the reference).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="40 requests, 4 clients, 120x400 images, 60 s at most."
    )
    parser.add_argument("--json", type=Path, help="Write the summary here.")
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="Run slow, half-open and worst-image clients beside the load.",
    )
    parser.add_argument("--slow-clients", type=int, default=4)
    parser.add_argument("--half-open", type=int, default=2)
    parser.add_argument("--worst-clients", type=int, default=8)
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=4_000_000,
        help="Passed to semseg serve; the worst image has this many pixels.",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=5.0, help="Passed to semseg serve with --hostile."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.clients, args.height, args.width = 40, 4, 120, 400
        args.images, args.max_seconds = 4, 60.0
    if args.url and not args.checkpoint:
        parser.error("--url needs --checkpoint (the answers are checked against it)")

    with tempfile.TemporaryDirectory(prefix="serve_load_") as scratch:
        checkpoint = args.checkpoint or untrained_checkpoint(
            Path(scratch) / f"{args.model}.ckpt", args.model
        )
        samples = make_samples(args.images, args.height, args.width)
        positive, num_classes = add_references(samples, checkpoint)
        process = None
        url = args.url
        if url is None:
            extra = ["--backend", args.backend, "--max-pixels", str(args.max_pixels)]
            if args.hostile:
                extra += ["--body-timeout", str(args.body_timeout)]
            if args.batch_size is not None:
                extra += ["--batch-size", str(args.batch_size)]
            process, url = start_server(checkpoint, extra, Path(scratch) / "server.log")
        try:
            info = httpx.get(f"{url}/v1/model", timeout=10).json()
            detail = str(info.get("backend_detail", info.get("backend", "")))
            # bf16 is accepted by --backend auto within 0.02 of fp32 (about 5 levels).
            tolerance = 6 if "bf16" in detail else 1
            hostile, stop, threads = None, threading.Event(), []
            rss_start = peak_rss_mb(process.pid)[0] if process is not None else None
            if args.hostile:
                hostile, threads = run_hostile(
                    url,
                    stop,
                    args.slow_clients,
                    args.half_open,
                    args.worst_clients,
                    args.max_pixels,
                )
            try:
                report = run_load(
                    url,
                    samples,
                    positive,
                    num_classes,
                    args.requests,
                    args.clients,
                    args.max_seconds,
                    tolerance,
                )
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=30)
            rss_end = peak_rss_mb(process.pid) if process is not None else None
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    summary = {
        "machine": machine(),
        "backend": detail,
        "command": " ".join(["python3 benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
        "images": f"{args.images} synthetic scenes, {args.height}x{args.width} and 3/4 of that",
        **report.summary(),
    }
    if rss_start is not None and rss_end is not None:
        summary["server_rss_mb"] = {
            "start": round(rss_start),
            "end": round(rss_end[0]),
            "peak": round(rss_end[1]),
        }
    if hostile is not None:
        summary["hostile"] = {
            "slow_clients": args.slow_clients,
            "half_open": args.half_open,
            "worst_clients": args.worst_clients,
            "worst_image_pixels": args.max_pixels,
            **hostile.summary(),
        }
        for failure in hostile.failures[:20]:
            print("FAILED (hostile)", failure, file=sys.stderr)
    print(json.dumps(summary, indent=2))
    for failure in report.failures[:20]:
        print("FAILED", failure, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if hostile is not None:  # 503s are expected beside hostile clients; nothing else is
        return 0 if not report.failures and not hostile.failures and report.ok > 0 else 1
    return 0 if not report.failures and report.ok == report.completed else 1


if __name__ == "__main__":
    sys.exit(main())
