"""onnxruntime CPU sessions as semseg opens them, in one place and without torch.

Every path that runs an ONNX file (:class:`semseg.inference.runtimes.OnnxRuntimeBackend`, the
torch-free start of ``semseg predict``) opens it with :func:`open_session`, so the same file runs
with the same settings and gives the same numbers; :func:`save_optimized` writes onnxruntime's
optimized graph of a file for ``semseg export --format onnx-optimized`` and for a recorded route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from semseg.errors import SemsegError
from semseg.io import first_line


def open_session(path: str | Path, threads: int, optimized: bool = False) -> Any:
    """An ``InferenceSession`` on the CPU: ``threads`` intra-op threads, one inter-op thread,
    every graph optimization, or none for a graph :func:`save_optimized` already optimized."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_DISABLE_ALL if optimized else level.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def save_optimized(src: Path, dst: Path) -> None:
    """Open ``src`` in ONNX Runtime at ``ORT_ENABLE_ALL``; save the optimized graph at ``dst``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3  # its note that the file is hardware-specific is ours to say
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise SemsegError(f"onnxruntime cannot optimize {src.name}: {first_line(error)}") from error
