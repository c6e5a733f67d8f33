"""How a model may be run: the choices of ``--backend`` and ``--precision`` and the options object
the CLI and the service hand to :func:`semseg.inference.autotune.choose_backend`.

Light on purpose (imports only :mod:`semseg.errors`): the command line builds its options from it
without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from semseg.errors import SemsegError


class Precision(StrEnum):
    """``--precision``: fp32 (``32``), bfloat16 autocast (``bf16``, torch) or ``int8`` (the
    checkpoint quantized once on images of the data given and cached: with onnxruntime, or with
    PyTorch's PT2E flow under ``--backend torch``)."""

    fp32 = "32"
    bf16 = "bf16"
    int8 = "int8"


PRECISIONS = tuple(p.value for p in Precision)
TORCH_PRECISIONS = ("32", "bf16")
CALIBRATION_MAX_BATCH = 4
"""The largest batch ``auto`` calibrates at; a larger ``--batch-size`` runs the choice made at 4."""


class Backend(StrEnum):
    """``--backend``: ``auto`` (fastest with parity, calibrated once), torch, onnxruntime."""

    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"


BACKEND_NAMES = tuple(b.value for b in Backend)


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: the backend flags of ``semseg predict``, ``evaluate`` and ``serve``.

    Built from user input: a name or value outside its choices is a :class:`SemsegError` naming
    the flag. ``precision`` / ``channels_last`` None: ``auto`` tries both (torch: 32, NCHW).
    ``precision="int8"`` runs the cached onnxruntime int8 model, or with ``backend="torch"``
    torch's own int8 model (PT2E on oneDNN kernels), falling back to the next path (torch int8 ->
    onnxruntime int8 -> onnxruntime fp32 -> fp32 eager), with a message, where it cannot run or
    fails its parity check.
    """

    backend: str = "auto"
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool = False
    threads: int | None = None
    recalibrate: bool = False

    def __post_init__(self) -> None:
        name = str(self.backend).strip().lower()
        if name not in BACKEND_NAMES:
            raise SemsegError(
                f"--backend must be one of {', '.join(BACKEND_NAMES)}, got {self.backend!r}"
            )
        object.__setattr__(self, "backend", name)
        if self.precision is not None:
            precision = str(self.precision)
            if precision not in PRECISIONS:
                raise SemsegError(
                    f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
                )
            object.__setattr__(self, "precision", precision)
        if self.threads is not None and int(self.threads) < 1:
            raise SemsegError(f"--threads must be at least 1, got {self.threads}")
        if self.precision == "int8" and (self.channels_last or self.compile):
            raise SemsegError(
                "--precision int8 runs a quantized model as it was built: drop "
                "--channels-last and --compile"
            )
        fp32_only = self.precision == "bf16" or self.channels_last or self.compile
        if self.backend == "onnxruntime" and fp32_only:
            raise SemsegError(
                "--backend onnxruntime runs fp32 only (or --precision int8): drop --precision "
                "bf16, --channels-last and --compile"
            )
