"""``semseg serve``: an HTTP inference service for a checkpoint, with a page to try it.

Endpoints (``create_app`` builds them; the model loads once, when the app is created):

* ``POST /v1/segment?format=overlay|prob|label|json`` -- an image as a multipart upload (field
  ``file``) or as the raw body with an image content type. ``overlay`` (default): PNG of the image
  with the road tinted green (``alpha`` query parameter, default 0.5); ``prob``: 8-bit road
  probability PNG (mode L); ``label``: class-index PNG; ``json``: size, road fraction, per-class
  pixel areas, model name and latency. PNG answers carry the road fraction and the latency in the
  ``X-Road-Fraction`` and ``X-Latency-Ms`` headers. For a multi-class model (more than two
  classes) the overlay tints every pixel in its class colour (the checkpoint's ``class_colours``)
  and the JSON adds ``class_fractions``: class name -> share of the image's pixels (sums to 1).
* ``GET /v1/model`` -- model name, classes, input size, backend, checkpoint SHA-256, limits.
* ``GET /healthz`` -- liveness and queue occupancy.
* ``GET /`` -- a self-contained page (no external assets) to drop an image and see the result
  (for a multi-class model: in the class colours, with their legend).
* ``GET /openapi.json``, ``GET /docs`` -- the OpenAPI description (FastAPI's docs page loads its
  scripts from a CDN; the page at ``/`` does not).

Every error is a 4xx (or 503) with a JSON body ``{"error": "..."}``: 413 for a body over
``max_bytes``, an image side over ``max_side`` or an image over ``max_pixels`` (read from its
header, before any pixel is decoded), 415 for a content type that is not an image, 400 for an
empty body, an image that cannot be decoded or a malformed or truncated multipart upload, 408 for
a body not received within ``body_timeout`` seconds (or a request head not received within the
connection's header deadline, :mod:`semseg.serve.connection`), 422 for a multipart upload without
a ``file`` part or a bad query parameter, 503 (with ``Retry-After``) when every slot is held or
the server ran out of memory. Any other fault of the server's own is a JSON 500; malformed HTTP
is a JSON 400 from the connection itself.

A request first takes one of ``max_queue`` read slots and must deliver its body (at most
``max_bytes``) within ``body_timeout``; its image header is checked; then it takes one of
``max_queue`` queue slots and waits, still encoded, for a single inference worker (one thread)
that drains the queue in micro-batches of at most ``batch_size`` images and ``batch_pixels``
pixels, decoding them as it goes, while decoded images not yet answered stay within a pixel
budget (:mod:`semseg.serve.worker`); at most two answers are encoded at once. Memory therefore
stays bounded however many clients connect, and ``/healthz`` says ``degraded`` while every slot
of a kind is held.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from semseg.errors import SemsegError
from semseg.inference.autotune import choose_backend
from semseg.inference.checkpoint import LoadedModel, checkpoint_sha256, load_model
from semseg.inference.options import BackendOptions
from semseg.inference.palette import blend, class_fractions
from semseg.inference.predictor import Predictor
from semseg.inference.visualize import overlay
from semseg.io import first_line
from semseg.serve.codecs import (
    DEFAULT_MAX_PIXELS,
    is_out_of_memory,
    out_of_memory,
    png_bytes,
    probe_image,
    read_upload,
)
from semseg.serve.page import PAGE_HEADERS, render_page
from semseg.serve.schemas import (
    ERROR_RESPONSES,
    FORMAT_HELP,
    SEGMENT_BODY,
    ApiError,
    CheckpointInfo,
    ClassArea,
    Health,
    InputSize,
    Limits,
    ModelInfo,
    OutputFormat,
    SegmentResult,
)
from semseg.serve.worker import InferenceWorker, Prediction

LOG = logging.getLogger("semseg.serve")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_SIDE = 8192
DEFAULT_MAX_QUEUE = 16
DEFAULT_BATCH_SIZE = 4
DEFAULT_BATCH_PIXELS = 8_000_000  # a micro-batch stops growing past this many pixels
DEFAULT_BODY_TIMEOUT = 30.0  # seconds a client has to send its whole request body
DEFAULT_HEADER_TIMEOUT = 10.0  # seconds a connection has to send a request's headers
DEFAULT_KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for index, name in enumerate(names):
        result.append(name if name not in seen else f"{name}_{index}")
        seen[name] = index
    return result


@dataclass
class Service:
    loaded: LoadedModel
    worker: InferenceWorker
    backend: str
    info: ModelInfo
    class_names: list[str]
    max_bytes: int
    max_side: int
    max_pixels: int
    body_timeout: float
    page: str = ""


def create_app(
    model: LoadedModel | str | Path,
    *,
    backend: str | BackendOptions = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_pixels: int = DEFAULT_BATCH_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decoded_pixels: int | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    warmup: bool = True,
    announce: Callable[[str], None] | None = None,
    calibration_data: str | Path | None = None,
) -> FastAPI:
    """The service for a checkpoint (path) or an already loaded model; loads the model now.

    ``calibration_data``: a data folder whose images calibrate the int8 model the first time
    (``--precision int8``, or ``auto`` where none is cached)."""
    for name, value in (
        ("max_bytes", max_bytes),
        ("max_side", max_side),
        ("max_queue", max_queue),
        ("batch_size", batch_size),
        ("batch_pixels", batch_pixels),
        ("max_pixels", max_pixels),
        ("decoded_pixels", decoded_pixels or 1),
    ):
        if int(value) < 1:
            raise SemsegError(f"{name} must be at least 1, got {value}")
    if not body_timeout > 0:
        raise SemsegError(f"body_timeout must be positive, got {body_timeout}")
    options = backend if isinstance(backend, BackendOptions) else BackendOptions(backend)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    if options.backend == "auto" and announce is not None:
        announce(
            "--backend auto: timing the inference backends on this model (once per "
            "machine and checkpoint; then cached)"
        )
    try:
        engine, _ = choose_backend(
            loaded,
            options,
            batch_size=batch_size,
            announce=announce,
            images=serve_calibration(loaded, calibration_data),
        )
    except SemsegError:
        raise
    except Exception as error:
        raise SemsegError(
            f"cannot start the {options.backend} backend: {first_line(error)}"
        ) from error
    predictor = Predictor(loaded, batch_size=batch_size, backend=engine)
    if warmup:
        height, width = loaded.input_size
        predictor.predict_batch([np.zeros((height, width, 3), dtype=np.uint8)])
    if loaded.path.is_file():
        sha256, size = checkpoint_sha256(loaded.path), loaded.path.stat().st_size
    else:
        sha256, size = "", 0
    class_names = unique_names([str(name) for name in loaded.class_names])
    positive = loaded.positive_class
    info = ModelInfo(
        name=loaded.model_name,
        num_classes=loaded.num_classes,
        classes=class_names,
        positive_class=positive,
        positive_class_name=class_names[positive] if positive < len(class_names) else "",
        input_size=InputSize(height=loaded.input_size[0], width=loaded.input_size[1]),
        backend=engine.name,
        backend_detail=engine.describe(),
        checkpoint=CheckpointInfo(file=loaded.path.name, bytes=size, sha256=sha256),
        formats=[f.value for f in OutputFormat],
        limits=Limits(
            max_bytes=max_bytes,
            max_side=max_side,
            max_pixels=max_pixels,
            max_queue=max_queue,
            batch_size=batch_size,
            body_timeout_s=body_timeout,
        ),
    )
    worker = InferenceWorker(
        predictor,
        positive,
        loaded.num_classes,
        max_queue,
        batch_size,
        batch_pixels,
        max_side,
        max_pixels,
        decoded_pixels,
    )
    service = Service(
        loaded,
        worker,
        engine.name,
        info,
        class_names,
        max_bytes,
        max_side,
        max_pixels,
        body_timeout,
        render_page(class_names, loaded.class_colours if loaded.is_multiclass else None),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(
        title="semseg",
        summary=f"Road segmentation with {loaded.model_name} ({loaded.path.name})",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)
    add_routes(app, service)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semseg")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def error_response(status: int, message: str, headers: dict[str, str] | None = None):
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError):
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException):
        return error_response(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "query")
            problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else item["msg"])
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(Exception)
    async def server_fault(_request: Request, error: Exception):  # a bug: still JSON
        LOG.error("unhandled error: %s", first_line(error))
        if isinstance(error, MemoryError):
            gc.collect()
            return error_response(503, "out of memory; retry later", {"Retry-After": "5"})
        return error_response(500, f"internal error: {type(error).__name__}")


def add_routes(app: FastAPI, service: Service) -> None:
    worker = service.worker
    loaded = service.loaded

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(service.page, headers=PAGE_HEADERS)

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> Health:
        """Liveness, slots held (reading bodies, queued) and images served so far; ``status`` is
        ``degraded`` while every slot of one kind is held (the next request gets a 503)."""
        return Health(
            status="degraded" if worker.saturated else "ok",
            model=loaded.model_name,
            in_flight=worker.in_flight,
            reading=worker.reading,
            capacity=worker.capacity,
            decoded_pixels=worker.held_pixels,
            images=worker.images,
            batches=worker.batches,
            failures=worker.failures,
        )

    app.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)

    @app.get("/v1/model", response_model=ModelInfo, tags=["model"])
    async def model_info() -> ModelInfo:
        """The served model: name, classes, input size, backend, checkpoint SHA-256, limits."""
        return service.info

    @app.post(
        "/v1/segment",
        tags=["model"],
        openapi_extra=SEGMENT_BODY,
        responses={
            200: {
                "model": SegmentResult,
                "description": "PNG (overlay, prob, label) or JSON (json)",
                "content": {"image/png": {}},
            },
            **ERROR_RESPONSES,
        },
    )
    async def segment(
        request: Request,
        output: Annotated[OutputFormat, Query(alias="format", description=FORMAT_HELP)] = (
            OutputFormat.overlay
        ),
        alpha: Annotated[float, Query(ge=0.0, le=1.0, description="Overlay opacity.")] = 0.5,
    ) -> Response:
        """Segment one image (multipart field ``file``, or the raw body with an image type)."""
        started = time.perf_counter()
        data = await read_request(request, service)
        pixels = await run_in_threadpool(probe_image, data, service.max_side, service.max_pixels)
        if not worker.admit():
            raise busy(worker.capacity, "are in flight")
        result: Prediction | None = None
        try:
            result = await worker.predict(data, pixels, want_prob=output is OutputFormat.prob)
            del data
            assert worker.answer_slots is not None
            async with worker.answer_slots:
                return await run_in_threadpool(
                    build_answer, service, result, output, alpha, started
                )
        except ApiError:
            raise
        except Exception as error:
            if is_out_of_memory(error):  # the server's fault, worth retrying
                gc.collect()
                raise out_of_memory("answering") from None
            LOG.exception("segmentation failed")  # a bug: still JSON
            raise ApiError(500, f"segmentation failed: {first_line(error)}") from error
        finally:
            worker.release()
            if result is not None:
                held, result = result.pixels, None  # the decoded image can go now
                await worker.release_pixels(held)


def busy(capacity: int, what: str) -> ApiError:
    return ApiError(
        503, f"busy: {capacity} requests {what}; retry shortly", headers={"Retry-After": "1"}
    )


async def read_request(request: Request, service: Service) -> bytes:
    """The image bytes, read in a read slot under ``body_timeout`` (a slow client gets 408 and
    gives its slot back); an out-of-memory while reading is a 503."""
    worker = service.worker
    if not worker.begin_read():
        raise busy(worker.capacity, "are sending their bodies")
    try:
        async with asyncio.timeout(service.body_timeout):
            return await read_upload(request, service.max_bytes)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within {service.body_timeout:g} s",
            headers={"Connection": "close"},
        ) from None
    except MemoryError:
        gc.collect()
        raise out_of_memory("reading the request") from None
    finally:
        worker.end_read()


def build_answer(
    service: Service,
    result: Prediction,
    output: OutputFormat,
    alpha: float,
    started: float,
) -> Response:
    labels = result.labels
    positive = service.loaded.positive_class
    road = labels == positive
    road_pixels = int(road.sum())
    total = int(labels.size)
    fraction = road_pixels / total
    if output is OutputFormat.json:
        counts = np.bincount(labels.ravel(), minlength=service.loaded.num_classes)
        latency = (time.perf_counter() - started) * 1000.0
        body = SegmentResult(
            width=int(labels.shape[1]),
            height=int(labels.shape[0]),
            road_fraction=fraction,
            road_pixels=road_pixels,
            positive_class=service.info.positive_class_name,
            classes={
                name: ClassArea(pixels=int(counts[i]), fraction=int(counts[i]) / total)
                for i, name in enumerate(service.class_names)
            },
            model=service.loaded.model_name,
            backend=service.backend,
            latency_ms=round(latency, 3),
            inference_ms=round(result.inference_ms, 3),
        )
        if service.loaded.is_multiclass:
            body.class_fractions = class_fractions(labels, service.class_names)
        answer = body.model_dump(exclude_none=True)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})
    if output is OutputFormat.overlay and service.loaded.is_multiclass:
        colours = np.asarray(service.loaded.class_colours)
        content = png_bytes(blend(result.image, labels, colours, alpha=alpha))
    elif output is OutputFormat.overlay:
        content = png_bytes(overlay(result.image, road, alpha=alpha))
    elif output is OutputFormat.prob:
        assert result.road_levels is not None
        content = png_bytes(result.road_levels)
    else:
        content = png_bytes(labels)
    latency = (time.perf_counter() - started) * 1000.0
    headers = {
        "Cache-Control": "no-store",
        "X-Road-Fraction": f"{fraction:.6f}",
        "X-Latency-Ms": f"{latency:.1f}",
        "X-Inference-Ms": f"{result.inference_ms:.1f}",
        "X-Image-Size": f"{labels.shape[1]}x{labels.shape[0]}",
    }
    return Response(content, media_type="image/png", headers=headers)


# ---------------------------------------------------------------------------------------------
# Running it


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket, or a one-line error (address in use, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise SemsegError(f"cannot listen on {host}:{port}: {first_line(error)}") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise SemsegError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    return sock


def serve_calibration(loaded: LoadedModel, data: str | Path | None):
    """A reader of int8 calibration images of ``data`` (None without data)."""
    if data is None:
        return None
    from semseg.inference.calibration_data import images_from_data
    from semseg.inference.int8_cache import CALIBRATION_IMAGES

    return lambda: images_from_data(Path(data), loaded, CALIBRATION_IMAGES)


def run_server(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str | BackendOptions = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_side: int = DEFAULT_MAX_SIDE,
    max_queue: int = DEFAULT_MAX_QUEUE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    keep_alive: float = DEFAULT_KEEP_ALIVE,
    log_level: str = "info",
    announce: Callable[[str], None] = print,
    calibration_data: str | Path | None = None,
) -> None:
    """Bind the socket, load the checkpoint, serve until interrupted."""
    import uvicorn

    from semseg.serve.connection import server_config

    if not isinstance(backend, BackendOptions):
        backend = BackendOptions(backend)  # a bad flag fails before anything else
    sock = listen_socket(host, port)  # an address in use fails before the model loads
    try:
        app = create_app(
            checkpoint,
            backend=backend,
            max_bytes=max_bytes,
            max_side=max_side,
            max_queue=max_queue,
            batch_size=batch_size,
            max_pixels=max_pixels,
            body_timeout=body_timeout,
            announce=announce,
            calibration_data=calibration_data,
        )
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    info: ModelInfo = app.state.service.info
    announce(
        f"serving {info.name} ({info.checkpoint.file}, {info.backend_detail}) on "
        f"http://{shown}:{bound_port}/ (API docs at /docs)"
    )
    config = server_config(
        app, header_timeout=header_timeout, keep_alive=keep_alive, log_level=log_level
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
