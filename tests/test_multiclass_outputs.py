"""Multi-class pictures: ``semseg predict``'s index, colour and legend overlay PNGs, the class
colours through an ONNX export, and ``semseg serve``'s class fractions, palette overlay and legend.

Every expected picture is computed here from the model's probabilities (the Predictor, run in
this process) and the class colours the test chose, not with the palette module under test."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_one_line_error, run_cli, tiny_checkpoint
from PIL import Image

from semseg.data.synthetic import generate_scene
from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel, load_model
from semseg.inference.onnx_export import export_onnx, load_onnx_model, read_onnx_metadata
from semseg.inference.palette import LEGEND_WIDTH, default_colours, legend_swatch_box
from semseg.inference.predictor import Predictor
from semseg.prediction import predict_files
from semseg.serve import create_app

with warnings.catch_warnings():  # newer Starlette warns that its test client prefers httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NAMES = ("sky", "road", "car & van", "tree")  # '&': the page must escape it
COLOURS = [[10, 20, 30], [200, 0, 100], [0, 250, 5], [90, 90, 0]]
STEMS = ("scene_a", "scene_b")


def balanced_checkpoint(path: Path, images: list[np.ndarray], **options) -> Path:
    """:func:`tiny_checkpoint` with four classes, each class's score shifted by its mean
    log-probability on ``images`` so that every class wins somewhere (the untrained model would
    answer two classes only, which would hide a wrong colour)."""
    tiny_checkpoint(path, NAMES, **options)
    predictor = Predictor(load_model(path), batch_size=1)
    means = np.mean([np.log(p).mean(axis=(1, 2)) for p in predictor.predict_batch(images)], 0)
    checkpoint = torch.load(path, weights_only=True)
    shift = torch.tensor(means - means.mean(), dtype=torch.float32)
    checkpoint["state_dict"]["model.score_pool3.bias"] -= shift  # adds to the final logits
    torch.save(checkpoint, path)
    return path


def rounded_blend(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The overlay by hand: each pixel ``(1 - alpha) * image + alpha * colour``, rounded."""
    mixed = (1 - alpha) * image.astype(np.float64) + alpha * colours.astype(np.float64)
    return np.round(mixed).astype(np.uint8)


def reliable(probability: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """Pixels whose top two class probabilities differ by more than ``margin`` (elsewhere a
    different thread count may flip the argmax)."""
    top = np.sort(probability, axis=0)
    return top[-1] - top[-2] > margin


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture)


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    return {
        stem: generate_scene(seed, height=60, width=200).image
        for stem, seed in zip(STEMS, (3, 4), strict=True)
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, images, single_thread) -> Path:
    folder = tmp_path_factory.mktemp("multiclass")
    (folder / "images").mkdir()
    for stem, image in images.items():
        Image.fromarray(image).save(folder / "images" / f"{stem}.png")
    balanced_checkpoint(folder / "four.ckpt", list(images.values()), class_colours=COLOURS)
    return folder


@pytest.fixture(scope="module")
def loaded(work: Path) -> LoadedModel:
    return load_model(work / "four.ckpt")


@pytest.fixture(scope="module")
def probabilities(loaded: LoadedModel, images) -> dict[str, np.ndarray]:
    predictor = Predictor(loaded, batch_size=1)
    return {stem: predictor.predict_batch([image])[0] for stem, image in images.items()}


def test_the_tiny_model_answers_every_class(loaded, probabilities):
    assert loaded.is_multiclass and loaded.class_names == list(NAMES)
    assert loaded.class_colours.tolist() == COLOURS
    for probability in probabilities.values():
        counts = np.bincount(probability.argmax(axis=0).ravel(), minlength=4)
        assert (counts > 0).all(), counts


def check_multiclass_outputs(
    out: Path, images, probabilities, colours: list[list[int]], exact: bool = True
) -> None:
    """label/, colour/ and overlay/ for every image, against the probabilities; no prob/."""
    assert sorted(p.name for p in out.iterdir()) == ["colour", "label", "overlay"]
    palette = np.asarray(colours, dtype=np.uint8)
    for stem, image in images.items():
        expected = probabilities[stem].argmax(axis=0)
        labels = read_png(out / "label" / f"{stem}.png")
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
        if exact:
            np.testing.assert_array_equal(labels, expected)
        else:
            sure = reliable(probabilities[stem])
            assert sure.mean() > 0.95
            np.testing.assert_array_equal(labels[sure], expected[sure])
        colour = read_png(out / "colour" / f"{stem}.png")
        np.testing.assert_array_equal(colour, palette[labels])
        picture = read_png(out / "overlay" / f"{stem}.png")
        height, width = image.shape[:2]
        assert picture.shape[1] == width + LEGEND_WIDTH and picture.shape[0] >= height
        np.testing.assert_array_equal(
            picture[:height, :width], rounded_blend(image, palette[labels])
        )
        key = picture[:, width:]
        for row, rgb in enumerate(colours):
            left, top, right, bottom = legend_swatch_box(row)
            assert (key[top:bottom, left:right] == rgb).all(), row
            text = key[top:bottom, right + 2 :]
            assert (text.max(axis=-1) < 100).any(), f"no name drawn for class {row}"


def test_predict_writes_index_colour_and_legend_overlay(work, images, probabilities):
    out = work / "predicted"
    result = run_cli(
        "predict",
        str(work / "four.ckpt"),
        str(work / "images"),
        "--out",
        str(out),
        "--backend",
        "torch",
        "--batch-size",
        "1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "colour labels" in result.stdout
    check_multiclass_outputs(out, images, probabilities, COLOURS, exact=False)


def test_a_checkpoint_without_colours_uses_the_default_palette(work, images, tmp_path):
    path = balanced_checkpoint(tmp_path / "plain.ckpt", list(images.values()))
    plain = load_model(path)
    assert plain.class_colours.tolist() == default_colours(4).tolist()
    predictor = Predictor(plain, batch_size=1)
    probabilities = {s: predictor.predict_batch([i])[0] for s, i in images.items()}
    predict_files(plain, [work / "images" / f"{s}.png" for s in STEMS], tmp_path / "out", 1)
    check_multiclass_outputs(tmp_path / "out", images, probabilities, default_colours(4).tolist())


def test_binary_predict_keeps_the_road_outputs(work, tmp_path):
    road = load_model(tiny_checkpoint(tmp_path / "road.ckpt"))
    assert not road.is_multiclass
    predict_files(road, [work / "images" / "scene_a.png"], tmp_path / "out", 1)
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.*"))
    assert written == ["label/scene_a.png", "overlay/scene_a.png", "prob/scene_a_road.png"]


@pytest.fixture(scope="module")
def exported(work: Path, loaded: LoadedModel) -> Path:
    """The checkpoint's verified ONNX export."""
    export_onnx(loaded, work / "four.onnx")
    return work / "four.onnx"


def test_onnx_export_keeps_the_class_colours(work, exported, images, probabilities):
    meta = read_onnx_metadata(exported)
    assert json.loads(meta["class_colours"]) == COLOURS
    restored = load_onnx_model(exported)
    assert restored.class_colours.tolist() == COLOURS and restored.class_names == list(NAMES)
    assert restored.is_multiclass
    out = work / "from-onnx"
    paths = [work / "images" / f"{stem}.png" for stem in STEMS]
    predict_files(restored, paths, out, 1, backend="onnxruntime")
    check_multiclass_outputs(out, images, probabilities, COLOURS, exact=False)


def test_corrupt_onnx_colours_are_refused(exported, tmp_path):
    for value in ("[[1, 2, 3]]", "not json", "[[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 999]]"):
        proto = onnx.load(str(exported))
        for entry in proto.metadata_props:
            if entry.key == "class_colours":
                entry.value = value
        forged = tmp_path / "forged.onnx"
        onnx.save(proto, str(forged))
        with pytest.raises(SemsegError) as error:
            load_onnx_model(forged)
        assert "\n" not in str(error.value) and "forged.onnx" in str(error.value)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("class_colours", [[0, 0, 0]] * 3, "class_colours must be 4 RGB triples"),
        ("class_colours", [[0, 0, 256]] * 4, "class_colours must be 4 RGB triples"),
        ("class_colours", "red", "class_colours must be 4 RGB triples"),
        ("class_names", ["sky", "road"], "2 class_names for 4 classes"),
    ],
    ids=["three-colours", "out-of-range", "not-a-list", "two-names"],
)
def test_corrupt_class_tables_give_one_line_errors(work, tmp_path, key, value, fragment):
    checkpoint = torch.load(work / "four.ckpt", weights_only=True)
    checkpoint["hyper_parameters"][key] = value
    path = tmp_path / "corrupt.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(SemsegError, match=fragment):
        load_model(path)
    if key == "class_colours" and value == "red":  # one CLI run for the whole family
        out = tmp_path / "out"
        result = run_cli("predict", str(path), str(work / "images"), "--out", str(out))
        assert_one_line_error(result, "corrupt.ckpt", fragment)
        assert not out.exists()


# --- serve -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(loaded: LoadedModel):
    with TestClient(create_app(loaded, backend="torch")) as test_client:
        yield test_client


def post(client, image: np.ndarray, fmt: str, **params):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return client.post(
        "/v1/segment",
        params={"format": fmt, **params},
        content=buffer.getvalue(),
        headers={"Content-Type": "image/png"},
    )


def decode(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return read_png_bytes(response.content)


def read_png_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture)


def test_serve_json_has_class_fractions(client, images, probabilities):
    image = images["scene_b"]
    labels = decode(post(client, image, "label"))
    np.testing.assert_array_equal(labels, probabilities["scene_b"].argmax(axis=0))
    body = post(client, image, "json").json()
    fractions = body["class_fractions"]
    assert list(fractions) == list(NAMES)
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-12)
    counts = np.bincount(labels.ravel(), minlength=len(NAMES))
    for index, name in enumerate(NAMES):
        assert fractions[name] == pytest.approx(counts[index] / labels.size, abs=1e-12)
        assert body["classes"][name]["pixels"] == counts[index]
    assert all(0 < value < 1 for value in fractions.values())


def test_serve_overlay_is_in_the_palette(client, images):
    image = images["scene_a"]
    labels = decode(post(client, image, "label"))
    palette = np.asarray(COLOURS, dtype=np.uint8)
    half = decode(post(client, image, "overlay"))
    np.testing.assert_array_equal(half, rounded_blend(image, palette[labels]))
    full = decode(post(client, image, "overlay", alpha=1.0))
    np.testing.assert_array_equal(full, palette[labels])


def test_serve_page_shows_the_legend(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.text
    for name, (r, g, b) in zip(["sky", "road", "car &amp; van", "tree"], COLOURS, strict=True):
        entry = f'<span class="swatch" style="background:#{r:02x}{g:02x}{b:02x}"></span>{name}</li>'
        assert entry in page, name
    assert "car & van" not in page  # escaped
    assert f"const PALETTE = {json.dumps(COLOURS)};" in page
    assert '<span id="road" hidden>' in page
    assert "__LEGEND__" not in page and "__PALETTE__" not in page


def test_binary_serve_is_unchanged(work, images, tmp_path):
    road = load_model(tiny_checkpoint(tmp_path / "road.ckpt"))
    with TestClient(create_app(road, backend="torch", warmup=False)) as road_client:
        body = post(road_client, images["scene_a"], "json").json()
        page = road_client.get("/").text
    assert "class_fractions" not in body and set(body["classes"]) == {"not road", "road"}
    assert "const PALETTE = null;" in page and 'class="legend"' not in page
    assert '<span id="road">' in page


CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def live_url(loaded: LoadedModel):
    """uvicorn on 127.0.0.1 (a free port) in a background thread; skips (before it starts)
    without Debian's Chromium and playwright, which CI installs."""
    import importlib.util
    import threading
    import time

    import uvicorn

    from semseg.serve import listen_socket
    from semseg.serve.connection import server_config

    if not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None:
        pytest.skip("the page test needs /usr/bin/chromium and playwright")
    app = create_app(loaded, backend="torch", max_queue=4)
    sock = listen_socket("127.0.0.1", 0)
    server = uvicorn.Server(server_config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


def test_page_in_headless_chromium_paints_the_palette(live_url, images, work, client):
    from playwright.sync_api import sync_playwright

    image = images["scene_b"]
    labels = decode(post(client, image, "label"))
    palette = np.asarray(COLOURS, dtype=np.uint8)
    counts = np.bincount(labels.ravel(), minlength=len(NAMES))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page()
            page.goto(f"{live_url}/")
            page.wait_for_selector("#model:has-text('fcn8s')", timeout=20_000)
            page.set_input_files("#file", str(work / "images" / "scene_b.png"))
            page.wait_for_selector("body[data-state='done']", timeout=30_000)
            size, values = page.evaluate("""() => {
                const c = document.getElementById('result');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                return [[c.height, c.width], Array.from(d)];
            }""")
            drawn = np.array(values, dtype=np.int16).reshape(*size, 4)[:, :, :3]
            shares = page.eval_on_selector_all("#legend .share", "s => s.map(e => e.textContent)")
            road_shown = page.is_visible("#road")
        finally:
            browser.close()
    expected = rounded_blend(image, palette[labels]).astype(np.int16)
    assert drawn.shape == expected.shape and np.abs(drawn - expected).max() <= 2
    assert all(share.endswith("%") for share in shares) and len(shares) == len(NAMES)
    shown = np.array([float(share[:-1]) for share in shares])
    np.testing.assert_allclose(shown, 100 * counts / labels.size, atol=0.051)
    assert not road_shown  # a multi-class model has no single road fraction to show
