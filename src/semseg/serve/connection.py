"""The HTTP/1.1 connection of ``semseg serve``: uvicorn's h11 protocol with a header deadline and
JSON errors.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) and bounds the size of a
request's headers (``h11_max_incomplete_event_size``), but waits for headers forever and answers
a malformed request with a plain-text 400. Here a connection that has not sent a complete request
head within ``header_timeout`` seconds of opening (or of its previous answer) gets a JSON 408 and
is closed, and a malformed request gets a JSON 400, as every other error of the API.
"""

from __future__ import annotations

import asyncio
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 32 * 1024  # request line plus headers


def raw_json_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request heads and JSON errors."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return  # a request is being served: its body has its own deadline
        message = f"no complete request head within {self.header_timeout:g} s"
        self.transport.write(raw_json_response(408, "Request Timeout", message))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._cancel_head_timer()
        self.transport.write(raw_json_response(400, "Bad Request", msg))
        self.transport.close()


def server_config(
    app,
    *,
    header_timeout: float = 10.0,
    keep_alive: float = 5.0,
    log_level: str = "info",
) -> uvicorn.Config:
    """uvicorn's settings for the service: the guarded h11 protocol, idle keep-alive closed after
    ``keep_alive`` seconds, request heads bounded to :data:`MAX_HEAD_BYTES`."""
    protocol = type("Protocol", (GuardedH11Protocol,), {"header_timeout": float(header_timeout)})
    return uvicorn.Config(
        app,
        http=protocol,
        log_level=log_level,
        timeout_keep_alive=max(1, round(keep_alive)),
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
