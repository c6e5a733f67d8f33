"""``semseg export --format onnx-optimized``: the ONNX export as ONNX Runtime optimizes it, saved.

ONNX Runtime rewrites every model when a session opens it (constant folding, operator fusion and,
at ``ORT_ENABLE_ALL``, the NCHWc layout transformation with weights re-laid out for this CPU's
vector width). ``SessionOptions.optimized_model_filepath`` saves the result, so a later process
opens the rewritten graph and skips that work (measured on FCN-8s/VGG16 fp32: a session opens in
about 1.7 s instead of 3.8-5.2 s on the 2-core development machine). The saved graph holds
ONNX Runtime's own operators (domains ``com.microsoft`` and ``com.microsoft.nchwc``), so only
ONNX Runtime runs it, and at ``ORT_ENABLE_ALL`` it is specific to the CPU and ONNX Runtime
version it was made with: the file's ``metadata_props`` record both (``optimized_for``,
``onnxruntime_version``) beside the export's own metadata.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from semseg.errors import SemsegError
from semseg.inference.checkpoint import LoadedModel
from semseg.inference.ort_session import save_optimized


def optimized_for() -> str:
    """The CPU an ``ORT_ENABLE_ALL`` graph is laid out for: model name and vector extensions."""
    from semseg.inference.machine import cpu_flags, cpu_model

    isa = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or f == "fma")
    return f"{cpu_model()} [{' '.join(isa)}]"


def add_metadata(path: Path, values: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def verify_optimized(path: Path, model: torch.nn.Module) -> float:
    """The optimized file against torch on the export's verification inputs; max |dp|."""
    from semseg.inference.onnx_export import VERIFY_SHAPES, VERIFY_TOLERANCE, check_parity
    from semseg.inference.runtimes import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path)
    return check_parity(backend, model, VERIFY_SHAPES, VERIFY_TOLERANCE, "the optimized model")


def export_onnx_optimized(loaded: LoadedModel, out: str | Path, opset: int) -> float:
    """Export ``loaded`` to ONNX, save ONNX Runtime's optimized graph at ``out`` (atomically),
    verify it against torch; returns the max probability difference."""
    import onnxruntime as ort

    from semseg.inference.onnx_export import export_onnx

    if loaded.model is None:
        raise SemsegError(f"{loaded.path} has no torch model to export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        plain, optimized = Path(work) / "plain.onnx", Path(work) / "optimized.onnx"
        export_onnx(loaded, plain, opset=opset, verify=False)
        save_optimized(plain, optimized)
        add_metadata(
            optimized,
            {
                "graph_optimization": "ORT_ENABLE_ALL",
                "optimized_for": optimized_for(),
                "onnxruntime_version": ort.__version__,
            },
        )
        worst = verify_optimized(optimized, loaded.model)
        os.replace(optimized, out)
    return worst
