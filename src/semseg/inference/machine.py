"""The machine inference runs on: CPU flags and model, bf16 support, the cache folder.

What a cached backend choice (:mod:`semseg.inference.autotune`) depends on besides the checkpoint
is :func:`machine_key`. Imports nothing of semseg, and torch only when asked about it (the
torch-free start of ``semseg predict`` reads the CPU flags and the cache folder).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what :mod:`platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX) through oneDNN."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:
        return False


def machine_key() -> str:
    """What a cached backend choice depends on besides the checkpoint."""
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a dependency
        ort_version = "none"
    return (
        f"{platform.node()}|{cpu_model()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads"
        f"|torch {torch.__version__}|onnxruntime {ort_version}"
    )


def cache_dir() -> Path:
    """``$SEMSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/semseg``, else ``~/.cache/semseg``."""
    if os.environ.get("SEMSEG_CACHE_DIR"):
        return Path(os.environ["SEMSEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semseg"
