"""``semseg serve``: an HTTP inference service for a checkpoint, with a page to try it.

Owns the service only: ``app`` (the FastAPI application, its routes and errors, running it with
uvicorn), ``worker`` (admission control and the single inference thread), ``codecs`` (reading
requests and images, writing PNG answers), ``schemas`` (answers and errors of the API) and
``page`` (the page at ``/``). It runs models through :mod:`semseg.inference` (the backend
chooser, the predictor, checkpoints) and may import ``semseg.io`` and ``semseg.errors``; nothing
else in semseg imports it except the CLI's ``serve`` command.
"""

from __future__ import annotations

from semseg.errors import SemsegError

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as _error:  # pragma: no cover - depends on the installed extras
    raise SemsegError(
        f"semseg serve needs the serve extra ({_error.name} is missing): "
        "pip install 'semseg[serve]'"
    ) from _error
try:
    import python_multipart  # noqa: F401
except ImportError:  # pragma: no cover - older python-multipart releases
    try:
        import multipart  # noqa: F401
    except ImportError as _error:
        raise SemsegError(
            "semseg serve needs the serve extra (python-multipart is missing): "
            "pip install 'semseg[serve]'"
        ) from _error

from semseg.serve.app import create_app, listen_socket, run_server  # noqa: E402

__all__ = ["create_app", "listen_socket", "run_server"]
