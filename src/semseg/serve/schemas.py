"""The service's request options, answers and errors, as described in its OpenAPI document."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class OutputFormat(StrEnum):
    overlay = "overlay"
    prob = "prob"
    label = "label"
    json = "json"


class ApiError(Exception):
    """An answer to a bad request: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# ---------------------------------------------------------------------------------------------
# Response schemas (for the OpenAPI description)


class ErrorBody(BaseModel):
    error: str


class ClassArea(BaseModel):
    pixels: int
    fraction: float


class SegmentResult(BaseModel):
    width: int
    height: int
    road_fraction: float
    road_pixels: int
    positive_class: str
    classes: dict[str, ClassArea]
    model: str
    backend: str
    latency_ms: float
    inference_ms: float
    # multi-class models only: class name -> share of the image's pixels (sums to 1)
    class_fractions: dict[str, float] | None = None


class InputSize(BaseModel):
    height: int
    width: int


class CheckpointInfo(BaseModel):
    file: str
    bytes: int
    sha256: str


class Limits(BaseModel):
    max_bytes: int
    max_side: int
    max_pixels: int
    max_queue: int
    batch_size: int
    body_timeout_s: float


class ModelInfo(BaseModel):
    name: str
    num_classes: int
    classes: list[str]
    positive_class: int
    positive_class_name: str
    input_size: InputSize
    backend: str
    backend_detail: str
    checkpoint: CheckpointInfo
    formats: list[str]
    limits: Limits


class Health(BaseModel):
    status: str  # "ok", or "degraded" while every read or queue slot is held (next: 503)
    model: str
    in_flight: int
    reading: int
    capacity: int
    decoded_pixels: int
    images: int
    batches: int
    failures: int


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "Empty body, undecodable image or malformed (or truncated) multipart upload"),
        (408, "The request body did not arrive within body_timeout seconds"),
        (
            413,
            "Request body over max_bytes, an image side over max_side, or an image over max_pixels",
        ),
        (415, "Content type that is not an image (or multipart)"),
        (422, "Multipart upload without a 'file' part, or a bad query parameter"),
        (
            503,
            "Too many requests in flight, or the server ran out of memory; retry after the "
            "Retry-After seconds",
        ),
    )
}

FORMAT_HELP = (
    "overlay (PNG), prob (8-bit road probability PNG), label (class-index PNG) or json (areas "
    "and road fraction)"
)
BINARY = {"schema": {"type": "string", "format": "binary"}}
SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "description": "A multipart upload with the image in the 'file' part, or the image "
        "itself as the body with its content type.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            **{
                kind: BINARY
                for kind in (
                    "image/png",
                    "image/jpeg",
                    "image/bmp",
                    "image/tiff",
                    "image/webp",
                    "image/x-portable-pixmap",
                    "application/octet-stream",
                )
            },
        },
    }
}
