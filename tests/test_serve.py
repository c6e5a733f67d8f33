"""``semseg serve``: the API through the ASGI test client, limits and bad input, the page (also
in headless Chromium: /usr/bin/chromium and playwright, which CI installs), a quick load test, and
hostile clients: slow bodies, half-sent heads, huge images, out of memory, malformed HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from PIL import Image

from semseg.data.synthetic import generate_scene
from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, load_model
from semseg.inference.options import BackendOptions
from semseg.inference.predictor import Predictor, confidence_levels
from semseg.inference.visualize import overlay
from semseg.serve import create_app, listen_socket
from semseg.serve.connection import server_config
from semseg.tasks.segmentation import SegmentationTask

with warnings.catch_warnings():  # newer Starlette warns that its test client prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
FORMATS = ("overlay", "prob", "label", "json")


def save_task_checkpoint(path: Path, num_classes: int = 2, seed: int = 0) -> Path:
    """A tiny untrained FCN-8s; random class-score weights so that its masks are not empty."""
    torch.manual_seed(seed)
    task = SegmentationTask(
        model_name="fcn8s",
        num_classes=num_classes,
        model_options={"width_mult": 0.125, "keep_prob": 1.0},
        input_size=[32, 96],
        class_names=["not road", "road"],
    )
    with torch.no_grad():
        for name in ("score_fr", "score_pool4", "score_pool3"):
            getattr(task.model, name).weight.normal_(0.0, 0.5)
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


def encode(image: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_task_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.ckpt")


@pytest.fixture(scope="module")
def loaded(checkpoint: Path) -> LoadedModel:
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return generate_scene(3, height=60, width=200).image


@pytest.fixture(scope="module")
def client(loaded: LoadedModel):
    with TestClient(create_app(loaded, backend="torch")) as test_client:
        yield test_client


def post_image(client, data: bytes, fmt: str = "overlay", multipart: bool = True, **params):
    params = {"format": fmt, **params}
    if multipart:
        return client.post(
            "/v1/segment", params=params, files={"file": ("scene.png", data, "image/png")}
        )
    return client.post(
        "/v1/segment", params=params, content=data, headers={"Content-Type": "image/png"}
    )


def assert_json_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "\n" not in body["error"]
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


# --- the API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "raw"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_answers_at_the_image_size(client, loaded, scene, fmt, multipart):
    height, width = 47, 133  # odd sizes: the answers follow the input, not the model's size
    image = np.ascontiguousarray(scene[:height, :width])
    response = post_image(client, encode(image), fmt, multipart=multipart)
    assert response.status_code == 200, response.text
    if fmt == "json":
        body = response.json()
        assert (body["width"], body["height"]) == (width, height)
        assert body["model"] == "fcn8s" and body["backend"] == "torch"
        assert set(body["classes"]) == {"not road", "road"}
        assert sum(c["pixels"] for c in body["classes"].values()) == width * height
        assert sum(c["fraction"] for c in body["classes"].values()) == pytest.approx(1.0)
        assert body["classes"]["road"]["fraction"] == pytest.approx(body["road_fraction"])
        assert 0 <= body["road_fraction"] <= 1 and body["latency_ms"] > 0
        return
    assert response.headers["content-type"] == "image/png"
    picture = decode(response.content)
    assert picture.size == (width, height)
    assert picture.mode == {"overlay": "RGB", "prob": "L", "label": "L"}[fmt]
    if fmt == "label":
        assert int(np.asarray(picture).max()) < loaded.num_classes
    assert 0 <= float(response.headers["X-Road-Fraction"]) <= 1


def test_answers_match_the_model_and_each_other(client, loaded, scene):
    data = encode(scene)
    (probability,) = Predictor(loaded, batch_size=1).predict_batch([scene])
    expected_labels = probability.argmax(axis=0)
    labels = np.asarray(decode(post_image(client, data, "label").content))
    prob = np.asarray(decode(post_image(client, data, "prob", multipart=False).content))
    body = post_image(client, data, "json").json()
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(prob, confidence_levels(probability[loaded.positive_class]))
    road = labels == loaded.positive_class
    assert 0.01 < road.mean() < 0.99  # the tiny model's mask is neither empty nor everything
    assert body["road_fraction"] == pytest.approx(float(road.mean()), abs=1e-12)
    assert body["road_pixels"] == int(road.sum())
    assert body["classes"]["road"]["pixels"] == int(road.sum())
    answer = post_image(client, data, "overlay")
    assert float(answer.headers["X-Road-Fraction"]) == pytest.approx(road.mean(), abs=1e-6)
    np.testing.assert_array_equal(np.asarray(decode(answer.content)), overlay(scene, road))
    plain = np.asarray(decode(post_image(client, data, "overlay", alpha=0.0).content))
    np.testing.assert_array_equal(plain, scene)
    green = np.asarray(decode(post_image(client, data, "overlay", alpha=1.0).content))
    assert (green[road] == [0, 255, 0]).all() and (green[~road] == scene[~road]).all()


def test_other_image_kinds_are_accepted(client, scene):
    grey = np.ascontiguousarray(scene[:, :, 1])
    rgba = np.dstack([scene, np.full(scene.shape[:2], 200, np.uint8)])
    for data, kind in (
        (encode(scene, "JPEG", quality=90), "image/jpeg"),
        (encode(grey), "image/png"),
        (encode(rgba), "image/png"),
        (encode(scene, "BMP"), "image/bmp"),
        (encode(scene), "application/octet-stream"),
    ):
        response = client.post(
            "/v1/segment", params={"format": "json"}, content=data, headers={"Content-Type": kind}
        )
        assert response.status_code == 200, (kind, response.text)
        assert (response.json()["width"], response.json()["height"]) == (200, 60)


def test_model_and_health(client, checkpoint):
    info = client.get("/v1/model").json()
    assert info["name"] == "fcn8s" and info["num_classes"] == 2
    assert info["classes"] == ["not road", "road"] and info["positive_class"] == 1
    assert info["positive_class_name"] == "road"
    assert info["input_size"] == {"height": 32, "width": 96}
    assert info["backend"] == "torch" and "torch" in info["backend_detail"]
    assert info["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert info["checkpoint"]["file"] == "tiny.ckpt"
    assert info["limits"]["max_bytes"] == 20 * 1024 * 1024 and info["limits"]["max_side"] == 8192
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["in_flight"] == 0


def test_openapi_describes_the_api(client):
    spec = client.get("/openapi.json").json()
    segment = spec["paths"]["/v1/segment"]["post"]
    content = segment["requestBody"]["content"]
    assert "multipart/form-data" in content and "image/png" in content
    assert {p["name"] for p in segment["parameters"]} == {"format", "alpha"}
    assert {"413", "415", "400", "422", "503"} <= set(segment["responses"])
    assert "/v1/model" in spec["paths"] and "/healthz" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "http://" not in page and "https://" not in page and "//cdn" not in page
    for fragment in (
        'type="file"',
        'id="opacity"',
        'type="range"',
        "<canvas",
        'id="road-fraction"',
        "v1/segment?format=label",
    ):
        assert fragment in page, fragment
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy


# --- limits and bad input ----------------------------------------------------------------------


def test_bad_requests_get_a_4xx_json_error(client, scene):
    data = encode(scene)
    url = "/v1/segment"
    cases = [
        (
            client.post(url, content=b"hello", headers={"Content-Type": "text/plain"}),
            415,
            "text/plain",
        ),
        (
            client.post(url, content=b'{"a": 1}', headers={"Content-Type": "application/json"}),
            415,
            "application/json",
        ),
        (client.post(url, content=data), 415, "Content-Type"),
        (client.post(url, content=b"", headers={"Content-Type": "image/png"}), 400, "empty"),
        (
            client.post(url, content=data[:120], headers={"Content-Type": "image/png"}),
            400,
            "cannot decode",
        ),
        (
            client.post(
                url, content=b"\x89PNG\r\n\x1a\n" + bytes(64), headers={"Content-Type": "image/png"}
            ),
            400,
            "cannot decode",
        ),
        (
            client.post(url, content=b"GIF89a" + bytes(40), headers={"Content-Type": "image/gif"}),
            415,
            "image/gif",
        ),
        (client.post(url, files={"image": ("scene.png", data, "image/png")}), 422, "'file'"),
        (
            client.post(
                url, files={"other": ("x.txt", b"x", "text/plain")}, data={"file": "not a file"}
            ),
            422,
            "'file'",
        ),
        (
            client.post(url, files={"file": ("notes.txt", b"hello", "text/plain")}),
            415,
            "text/plain",
        ),
        (client.post(url, files={"file": ("scene.png", b"", "image/png")}), 400, "empty"),
        (
            client.post(url, files={"file": ("scene.png", data[:200], "image/png")}),
            400,
            "cannot decode",
        ),
        (
            client.post(
                url, content=b"", headers={"Content-Type": "multipart/form-data; boundary=x"}
            ),
            400,
            "empty",
        ),
        (
            client.post(url, content=b"junk", headers={"Content-Type": "multipart/form-data"}),
            400,
            "multipart",
        ),
        (
            client.post(
                url, params={"format": "gif"}, content=data, headers={"Content-Type": "image/png"}
            ),
            422,
            "format",
        ),
        (
            client.post(
                url, params={"alpha": "2"}, content=data, headers={"Content-Type": "image/png"}
            ),
            422,
            "alpha",
        ),
        (client.get(url), 405, ""),
        (client.get("/v2/nothing"), 404, ""),
    ]
    for response, status, fragment in cases:
        assert_json_error(response, status, fragment)
    assert client.get("/healthz").json()["in_flight"] == 0  # every refusal gave its slot back


def test_size_limits(loaded, scene):
    data = encode(scene)
    limited = create_app(loaded, backend="torch", max_bytes=len(data) - 1, warmup=False)
    with TestClient(limited) as small:
        assert_json_error(post_image(small, data, multipart=False), 413, str(len(data) - 1))
        assert_json_error(post_image(small, data, multipart=True), 413)

        def chunks():  # no Content-Length: the limit applies while reading
            yield data[:1000]
            yield data[1000:]

        chunked = small.post("/v1/segment", content=chunks(), headers={"Content-Type": "image/png"})
        assert_json_error(chunked, 413, "over the limit")
        tiny = encode(scene[:20, :20])
        assert post_image(small, tiny, "json").status_code == 200
    with TestClient(create_app(loaded, backend="torch", max_side=150, warmup=False)) as narrow:
        assert_json_error(post_image(narrow, data), 413, "200x60", "150")
        assert (
            post_image(narrow, encode(np.ascontiguousarray(scene[:, :150])), "json").json()["width"]
            == 150
        )


def test_busy_server_answers_503_with_retry_after(loaded, scene):
    app = create_app(loaded, backend="torch", max_queue=2, warmup=False)
    worker = app.state.service.worker
    with TestClient(app) as busy:
        assert worker.admit() and worker.admit()  # two requests in flight: the queue is full
        try:
            response = post_image(busy, encode(scene))
            assert_json_error(response, 503, "busy")
            assert response.headers["retry-after"] == "1"
        finally:
            worker.release()
            worker.release()
        assert post_image(busy, encode(scene), "json").status_code == 200
        assert busy.get("/healthz").json()["in_flight"] == 0


def test_a_bad_image_in_a_micro_batch_fails_alone(loaded, scene):
    from semseg.serve.codecs import probe_image
    from semseg.serve.schemas import ApiError
    from semseg.serve.worker import Job, Prediction

    worker = create_app(loaded, backend="torch", warmup=False).state.service.worker
    good, bad = encode(scene), encode(scene)[:150]  # the header of `bad` passes, its pixels not
    assert probe_image(bad, 8192) == probe_image(good, 8192) == 200 * 60
    jobs = [Job(data, 200 * 60, True, None) for data in (good, bad, good)]  # type: ignore[arg-type]
    first, broken, last = worker._infer(jobs)
    assert isinstance(first, Prediction) and isinstance(last, Prediction)
    assert first.labels.shape == (60, 200) and first.road_levels is not None
    np.testing.assert_array_equal(first.labels, last.labels)
    assert isinstance(broken, ApiError) and broken.status == 400
    assert all(job.data == b"" for job in jobs)  # the encoded bytes are dropped once decoded


def test_a_server_fault_is_a_json_500(loaded, scene, monkeypatch):
    app = create_app(loaded, backend="torch", warmup=False)
    predictor = app.state.service.worker.predictor

    def broken(images):
        raise RuntimeError("out of memory\nsecond line")

    monkeypatch.setattr(predictor, "predict_batch", broken)
    with TestClient(app, raise_server_exceptions=False) as faulty:
        assert_json_error(post_image(faulty, encode(scene)), 500, "out of memory")
        assert faulty.get("/healthz").json()["in_flight"] == 0


def test_onnxruntime_backend(loaded, scene, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))  # the ONNX export goes here
    data = encode(scene)
    with TestClient(create_app(loaded, backend="onnxruntime")) as onnx:
        info = onnx.get("/v1/model").json()
        assert info["backend"] == "onnxruntime" and "onnxruntime" in info["backend_detail"]
        assert post_image(onnx, data, "json").json()["backend"] == "onnxruntime"
        prob = np.asarray(decode(post_image(onnx, data, "prob").content)).astype(int)
    (probability,) = Predictor(loaded, batch_size=1).predict_batch([scene])
    reference = confidence_levels(probability[loaded.positive_class]).astype(int)
    assert np.abs(prob - reference).max() <= 1


def test_backend_choices(loaded):
    assert BackendOptions("torch").backend == "torch"
    assert BackendOptions(" Auto ").backend == "auto"
    assert BackendOptions("onnxruntime").backend == "onnxruntime"
    with pytest.raises(SemsegError, match="--backend must be one of"):
        BackendOptions("tensorrt")
    with pytest.raises(SemsegError, match="--backend must be one of"):
        create_app(loaded, backend="tensorrt", warmup=False)
    with pytest.raises(SemsegError, match="--precision must be one of"):
        BackendOptions("torch", precision="fp8")
    with pytest.raises(SemsegError, match="runs fp32 only"):
        BackendOptions("onnxruntime", compile=True)


@pytest.mark.parametrize("case", ["unknown backend", "address in use"])
def test_cli_refuses_bad_settings_in_one_line(checkpoint, monkeypatch, capsys, case):
    from semseg import cli

    busy = listen_socket("127.0.0.1", 0)  # a port that is taken
    if case == "unknown backend":
        args, fragment = ["--backend", "tensorrt", "--port", "0"], "Invalid value for '--backend'"
    else:
        args, fragment = ["--port", str(busy.getsockname()[1])], "cannot listen"
    monkeypatch.setattr(sys, "argv", ["semseg", "serve", str(checkpoint), *args])
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main()
    finally:
        busy.close()
    assert exited.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("semseg: error:"), lines
    assert fragment in lines[0]


# --- a live server: concurrency, the page in a browser, the load test --------------------------


@pytest.fixture(scope="module")
def live_server(loaded):
    """uvicorn on 127.0.0.1 (a free port) in a background thread."""
    import uvicorn

    app = create_app(loaded, backend="torch", max_queue=4)
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", app
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def test_concurrent_clients_are_queued_or_refused(live_server, scene):
    import httpx

    url, app = live_server
    data = encode(scene)
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(timeout=60) as session:
            for _ in range(3):
                response = session.post(
                    f"{url}/v1/segment",
                    params={"format": "label"},
                    content=data,
                    headers={"Content-Type": "image/png"},
                )
                if response.status_code == 503:
                    assert response.headers["retry-after"] == "1"
                    assert "busy" in response.json()["error"]
                else:
                    assert decode(response.content).size == (200, 60)
                with lock:
                    statuses.append(response.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 30 and set(statuses) <= {200, 503} and 200 in statuses
    worker = app.state.service.worker
    assert worker.in_flight == 0 and worker.capacity == 4


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium, driven by playwright; the test skips (before any server starts)
    where either is missing (CI installs both and fails on an unexpected skip)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no {CHROMIUM} (Debian's chromium package): the browser test needs it")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    return CHROMIUM


def test_page_in_headless_chromium(chromium, live_server, scene, tmp_path):
    from playwright.sync_api import sync_playwright

    url, _ = live_server
    picture = tmp_path / "scene.png"
    picture.write_bytes(encode(scene))
    import httpx

    expected = httpx.post(
        f"{url}/v1/segment",
        params={"format": "json"},
        content=picture.read_bytes(),
        headers={"Content-Type": "image/png"},
    )
    labels = np.asarray(
        decode(
            httpx.post(
                f"{url}/v1/segment",
                params={"format": "label"},
                content=picture.read_bytes(),
                headers={"Content-Type": "image/png"},
            ).content
        )
    )
    road = labels == 1
    fraction = expected.json()["road_fraction"]
    external: list[str] = []
    console: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.on("request", lambda r: None if r.url.startswith(url) else external.append(r.url))
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.goto(f"{url}/")
            # Selectors, not wait_for_function: the page's CSP forbids eval, and stays on.
            page.wait_for_selector("#model:has-text('fcn8s')", timeout=20_000)
            page.set_input_files("#file", str(picture))
            page.wait_for_selector("body[data-state='done']", timeout=30_000)
            shown = page.text_content("#road-fraction")
            assert shown.endswith("%") and abs(float(shown[:-1]) - 100 * fraction) <= 0.051

            def canvas() -> np.ndarray:
                size, values = page.evaluate("""() => {
                    const c = document.getElementById('result');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    return [[c.height, c.width], Array.from(d)];
                }""")
                return np.array(values, dtype=np.int16).reshape(*size, 4)[:, :, :3]

            drawn = canvas()
            assert drawn.shape[:2] == scene.shape[:2]
            half = overlay(scene, road).astype(np.int16)
            assert np.abs(drawn - half).max() <= 2  # the page's composite is the 0.5 overlay
            page.eval_on_selector(
                "#opacity", "e => { e.value = '100'; e.dispatchEvent(new Event('input')); }"
            )
            full = canvas()
            assert (np.abs(full[road] - [0, 255, 0]) <= 1).all()
            assert np.abs(full[~road] - scene[~road]).max() <= 1
            assert page.text_content("#opacity-value") == "100%"
            bad = tmp_path / "broken.png"
            bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("body[data-state='error']", timeout=30_000)
            assert "400" in page.text_content("#status")
        finally:
            browser.close()
    assert external == []
    assert not [line for line in console if "Content Security Policy" in line], console


def test_quick_load(checkpoint, tmp_path):
    serve_load = load_benchmark("serve_load")
    out = tmp_path / "load.json"
    code = serve_load.main(
        ["--quick", "--checkpoint", str(checkpoint), "--backend", "torch", "--json", str(out)]
    )
    summary = json.loads(out.read_text())
    assert code == 0, summary
    assert summary["requests"] == 40 and summary["clients"] == 4
    assert summary["ok"] == 40 and summary["failures"] == 0
    assert summary["throughput_rps"] > 0 and summary["latency_ms"]["p95"] > 0


# --- hostile and careless clients (issue 20: items 3, 4, 5, 14) ------------------------------


@contextlib.contextmanager
def running(app, **config):
    """uvicorn with the service's connection settings on 127.0.0.1 (a free port), in a thread."""
    import uvicorn

    sock = listen_socket("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def raw_connection(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    return conn


def read_until_closed(conn: socket.socket, limit_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded by ``limit_s``)."""
    conn.settimeout(limit_s)
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def json_error_of(raw: bytes, status: int) -> str:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} "), lines[0]
    assert "content-type: application/json" in [line.lower() for line in lines[1:]], lines
    message = json.loads(body)["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


def health(port: int) -> dict:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()


def test_slow_bodies_time_out_and_do_not_lock_the_service(loaded, scene):
    """Clients that never finish their body got a queue slot each and held it for minutes while
    /healthz said ok; now bodies are read (under a deadline) before a request is admitted."""
    import httpx

    data = encode(scene)
    app = create_app(loaded, backend="torch", max_queue=3, body_timeout=2.0, warmup=False)
    with running(app, header_timeout=5.0, keep_alive=5.0) as port:
        slow = []
        for _ in range(2):
            conn = raw_connection(port)
            conn.sendall(
                b"POST /v1/segment?format=json HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n" + data[:50]
            )
            slow.append(conn)
        deadline = time.monotonic() + 5
        while health(port)["reading"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        state = health(port)
        assert state["reading"] == 2 and state["status"] == "ok"
        normal = httpx.post(
            f"http://127.0.0.1:{port}/v1/segment",
            params={"format": "json"},
            content=data,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert normal.status_code == 200, normal.text  # the slow ones do not block the rest
        third = raw_connection(port)  # every read slot held: degraded, and the next is a 503
        third.sendall(
            b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n" + data[:50]
        )
        deadline = time.monotonic() + 5
        while health(port)["reading"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health(port)["status"] == "degraded"
        refused = httpx.post(
            f"http://127.0.0.1:{port}/v1/segment",
            content=data,
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert_json_error(refused, 503, "busy")
        for conn in [*slow, third]:
            assert "did not arrive within 2 s" in json_error_of(read_until_closed(conn), 408)
            conn.close()
        after = health(port)
        assert after["status"] == "ok" and after["reading"] == 0 and after["in_flight"] == 0


def test_half_sent_heads_and_idle_connections_are_closed(loaded):
    app = create_app(loaded, backend="torch", warmup=False)
    with running(app, header_timeout=1.0, keep_alive=1.0) as port:
        silent = raw_connection(port)  # connects, sends nothing
        half = raw_connection(port)
        half.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Ty")
        for conn in (silent, half):  # the 408 shows the server closed it, not our time-out
            assert "no complete request head" in json_error_of(read_until_closed(conn), 408)
            conn.close()
        idle = raw_connection(port)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(idle)  # the answer, then the idle keep-alive is closed
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"status":"ok"' in answer
        idle.close()


def test_malformed_http_is_a_json_400(loaded):
    app = create_app(loaded, backend="torch", warmup=False)
    with running(app) as port:
        for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n"):
            conn = raw_connection(port)
            conn.sendall(request)
            assert json_error_of(read_until_closed(conn), 400)
            conn.close()


def test_megapixel_limit_is_read_from_the_header(loaded, monkeypatch):
    """A small PNG that decodes to many megapixels is refused before any pixel is decoded."""
    from PIL import ImageFile

    big = encode(np.zeros((2000, 2100, 3), np.uint8))  # 4.2 MP in a few kilobytes
    assert len(big) < 100_000

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    app = create_app(loaded, backend="torch", warmup=False)
    assert app.state.service.info.limits.max_pixels == 4_000_000
    with TestClient(app) as client:
        monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
        assert_json_error(post_image(client, big, "json"), 413, "4200000 pixels", "4000000")
        monkeypatch.undo()
        assert (
            post_image(client, encode(np.zeros((60, 200, 3), np.uint8)), "json").status_code == 200
        )
    with TestClient(create_app(loaded, backend="torch", max_pixels=10_000, warmup=False)) as small:
        assert_json_error(
            post_image(small, encode(np.zeros((60, 200, 3), np.uint8))), 413, "12000 pixels"
        )


def test_decoded_pixels_in_flight_stay_within_the_budget(loaded, scene):
    """However many requests wait, the worker starts a batch only while the decoded pixels not
    yet answered fit the budget (here one 200 x 60 image)."""
    import asyncio

    app = create_app(loaded, backend="torch", max_queue=8, decoded_pixels=200 * 60, warmup=False)
    worker = app.state.service.worker
    data = encode(scene)
    peaks = []
    original = worker.predictor.predict_batch

    def watched(images):
        peaks.append(worker.held_pixels)
        return original(images)

    worker.predictor.predict_batch = watched

    async def request() -> None:
        result = await worker.predict(data, 200 * 60, want_prob=True)
        await asyncio.sleep(0.01)  # the answer is being written
        await worker.release_pixels(result.pixels)

    async def main() -> None:
        worker.start()
        try:
            await asyncio.wait_for(asyncio.gather(*[request() for _ in range(6)]), timeout=120)
        finally:
            await worker.stop()

    asyncio.run(main())
    assert len(peaks) == 6 and max(peaks) == 200 * 60  # one image at a time, never two
    assert worker.held_pixels == 0 and worker.images == 6


@pytest.mark.parametrize("where", ["decoding", "inference", "worker loop"])
def test_out_of_memory_is_a_503_and_the_service_stays_healthy(loaded, scene, monkeypatch, where):
    """A MemoryError was answered 500, then 400 "MemoryError", then nothing answered at all."""
    import semseg.serve.codecs as codecs

    app = create_app(loaded, backend="torch", warmup=False)
    worker = app.state.service.worker
    failures = {"left": 1}

    def fail_once(original):
        def wrapped(*args, **kwargs):
            if failures["left"]:
                failures["left"] -= 1
                raise MemoryError()
            return original(*args, **kwargs)

        return wrapped

    if where == "decoding":
        monkeypatch.setattr(codecs, "to_rgb_array", fail_once(codecs.to_rgb_array))
    elif where == "inference":
        monkeypatch.setattr(
            worker.predictor, "predict_batch", fail_once(worker.predictor.predict_batch)
        )
    else:
        original = worker._serve_batch

        async def broken(jobs):
            if failures["left"]:
                failures["left"] -= 1
                raise MemoryError()
            return await original(jobs)

        monkeypatch.setattr(worker, "_serve_batch", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = post_image(client, encode(scene), "json")
        assert_json_error(response, 503, "out of memory")
        assert response.headers["retry-after"]
        for _ in range(2):
            assert post_image(client, encode(scene), "json").status_code == 200
        state = client.get("/healthz").json()
        assert state["status"] == "ok" and state["in_flight"] == 0
        assert state["decoded_pixels"] == 0 and state["reading"] == 0


def test_small_http_points(client, scene):
    # no object addresses in error texts
    response = client.post(
        "/v1/segment", content=b"not an image at all", headers={"Content-Type": "image/png"}
    )
    assert_json_error(response, 400, "cannot decode")
    assert "0x" not in response.json()["error"] and "BytesIO" not in response.json()["error"]
    # a truncated multipart upload is a 400, as documented
    boundary = "semsegboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="scene.png"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    body += encode(scene) + f"\r\n--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert client.post("/v1/segment", content=body, headers=headers).status_code == 200
    for cut in (len(body) - 8, len(body) // 2, 120):
        assert_json_error(
            client.post("/v1/segment", content=body[:cut], headers=headers), 400, "multipart"
        )
    # HEAD /healthz
    head = client.head("/healthz")
    assert head.status_code == 200 and head.content == b""


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="needs Linux prlimit")
def test_a_real_address_space_limit_leaves_the_service_healthy(checkpoint, tmp_path):
    """Under an address-space limit, a request too large for the memory left is answered 503 (or
    500) as JSON, frees what it took, and the service keeps answering, /healthz included."""
    import resource

    import httpx

    serve_load = load_benchmark("serve_load")
    process, url = serve_load.start_server(
        checkpoint,
        ["--backend", "torch", "--max-pixels", "70000000", "--max-side", "16384"],
        tmp_path / "server.log",
    )
    try:
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        size_kb = int(next(line for line in status if line.startswith("VmSize:")).split()[1])
        limit = size_kb * 1024 + 800 * 2**20  # 800 MB more: the 64 MP image below needs more
        resource.prlimit(process.pid, resource.RLIMIT_AS, (limit, limit))
        big = encode(np.zeros((8000, 8000, 3), np.uint8))
        small = encode(np.zeros((60, 200, 3), np.uint8))
        for _ in range(2):
            refused = httpx.post(
                f"{url}/v1/segment",
                params={"format": "json"},
                content=big,
                headers={"Content-Type": "image/png"},
                timeout=120,
            )
            assert refused.status_code in (500, 503), refused.text
            assert_json_error(refused, refused.status_code, "memory")
            answered = httpx.post(
                f"{url}/v1/segment",
                params={"format": "json"},
                content=small,
                headers={"Content-Type": "image/png"},
                timeout=60,
            )
            assert answered.status_code == 200, answered.text
            health = httpx.get(f"{url}/healthz", timeout=10).json()
            assert health["status"] == "ok" and health["in_flight"] == 0
            assert health["decoded_pixels"] == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
