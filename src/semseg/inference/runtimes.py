"""The runtimes that run a model: plain torch with its fast paths, or ONNX Runtime.

Every runtime maps a batch ``(N, 3, H, W)`` float32 RGB in [0, 1] to ``(N, C, H, W)`` float32
logits (:meth:`InferenceBackend.logits`):

* :class:`TorchBackend` ``(model, precision="32"|"bf16", channels_last, compile)``: plain fp32
  eager by default (the reference). ``bf16`` casts a copy of the weights to bfloat16 once and
  runs under CPU autocast (needs a CPU with bf16 instructions:
  :func:`semseg.inference.machine.bf16_supported`); ``channels_last`` converts the weights and
  each input to NHWC, the layout oneDNN's convolutions prefer; ``compile`` wraps the model in
  ``torch.compile`` (inductor, with weight freezing: constants folded and weights pre-packed once)
  and pads every batch to the largest batch seen so far so that a short last batch does not
  trigger a recompilation.
* :class:`OnnxRuntimeBackend` ``(path, threads)``: an ONNX file run by ONNX Runtime's CPU
  execution provider, fp32.

Which runtime runs is chosen in :mod:`semseg.inference.autotune`. Imports only ``options``,
:mod:`semseg.inference.machine`, :mod:`semseg.errors` and :mod:`semseg.io`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.inference.machine import bf16_supported
from semseg.inference.options import TORCH_PRECISIONS
from semseg.io import first_line


class InferenceBackend:
    """``logits(batch)``: ``(N, 3, H, W)`` float32 in [0, 1] -> ``(N, C, H, W)`` float32."""

    name: str = "backend"  # the family: "torch" or "onnxruntime"
    precision: str = "32"

    def logits(self, batch: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class TorchBackend(InferenceBackend):
    """The model in torch: fp32 eager, or with any of bf16 autocast, channels-last, compile.

    The caller's model is left as it was (bf16 and channels-last convert a copy) unless
    ``inplace`` (saves the copy's memory where the caller has no further use for the model).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        precision: str = "32",
        channels_last: bool = False,
        compile: bool = False,
        device: str | torch.device = "cpu",
        inplace: bool = False,
    ) -> None:
        if precision not in TORCH_PRECISIONS:
            raise SemsegError(
                f"torch runs --precision {' or '.join(TORCH_PRECISIONS)}, got {precision!r}"
            )
        self.device = torch.device(device)
        if precision == "bf16" and self.device.type == "cpu" and not bf16_supported():
            raise SemsegError(
                "--precision bf16 needs a CPU with AVX512-BF16 or AMX (not found in "
                "/proc/cpuinfo); use --precision 32"
            )
        self.precision = precision
        self.channels_last = channels_last
        self.compiled = compile
        model = model.to(self.device).eval()
        if (precision == "bf16" or channels_last) and not inplace:
            model = copy.deepcopy(model)  # the caller's model stays as it was
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._module: Callable[[Tensor], Tensor] = model
        self._padded_batch = 0
        if compile:
            if not hasattr(torch, "compile"):  # pragma: no cover - torch >= 2.4 has it
                raise SemsegError("torch.compile is not available in this torch")
            self._module = torch.compile(model, dynamic=False)

    def describe(self) -> str:
        parts = ["torch", "bf16" if self.precision == "bf16" else "fp32"]
        if self.channels_last:
            parts.append("channels-last")
        parts.append("compiled" if self.compiled else "eager")
        return " ".join(parts)

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        if self.compiled:
            import torch._inductor.config as inductor_config

            # Freezing folds the (now constant) weights and lets oneDNN pre-pack them once.
            stack.enter_context(inductor_config.patch(freezing=True))
        return stack

    def logits(self, batch: Tensor) -> Tensor:
        x = batch.to(self.device, torch.float32)
        count = x.shape[0]
        if self.compiled:
            self._padded_batch = max(self._padded_batch, count)
            if count < self._padded_batch:  # same shape as before: no recompilation
                filler = x[-1:].expand(self._padded_batch - count, *x.shape[1:])
                x = torch.cat([x, filler])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._context():
            try:
                out = self._module(x)
            except SemsegError:
                raise
            except Exception as error:
                if not self.compiled:
                    raise
                raise SemsegError(f"torch.compile failed: {first_line(error)}") from error
        return out[:count].float().contiguous()


class OnnxRuntimeBackend(InferenceBackend):
    """An ONNX export run by ONNX Runtime's CPU execution provider (fp32)."""

    name = "onnxruntime"

    def __init__(
        self, path: str | Path, threads: int | None = None, num_classes: int | None = None
    ) -> None:
        from semseg.inference.ort_session import open_session

        self.path = Path(path)
        if not self.path.is_file():
            raise SemsegError(f"ONNX model not found: {self.path}")
        self.threads = threads or torch.get_num_threads()
        try:
            self.session = open_session(self.path, self.threads)
        except Exception as error:
            raise SemsegError(
                f"onnxruntime cannot load {self.path}: {first_line(error)}"
            ) from error
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.num_classes = num_classes
        self._check_signature()

    def _check_signature(self) -> None:
        """One image input and one logits output with the expected channels, where declared."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise SemsegError(
                f"{self.path} takes {len(inputs)} inputs and gives {len(outputs)} outputs; a "
                "semseg model takes one image and gives one logits tensor"
            )
        shape = outputs[0].shape
        if len(shape) != 4:
            raise SemsegError(f"{self.path}: its output is not (N, C, H, W) logits")
        channels = shape[1]  # an int where the file declares it, else a symbolic name
        declared = isinstance(channels, int) and self.num_classes is not None
        if declared and channels != self.num_classes:
            raise SemsegError(
                f"{self.path} gives {channels} output channels but the model has "
                f"{self.num_classes} classes"
            )

    def describe(self) -> str:
        precision = self.metadata.get("precision", "fp32")  # "int8": semseg quantize
        return f"onnxruntime {precision} ({self.threads} threads)"

    def logits(self, batch: Tensor) -> Tensor:
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self.input_name: array})[0]
        expected = (array.shape[0], self.num_classes or out.shape[1], *array.shape[2:])
        if out.ndim != 4 or tuple(out.shape) != expected:
            raise SemsegError(
                f"{self.path} answered {tuple(out.shape)} for an input of {array.shape}; "
                f"expected {expected}"
            )
        return torch.from_numpy(out)
