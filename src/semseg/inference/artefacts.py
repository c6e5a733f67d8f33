"""Built-once inference artefacts in the cache folder: int8 ONNX models and AOTInductor packages.

An artefact is keyed (:class:`ArtefactKey`) by what makes it valid: the checkpoint's SHA-256, the
input size, the format and precision, the library versions that built it and will run it
(torch, onnxruntime, onnx, Python) and the CPU's vector extensions (an AOTInductor package is
machine code for this CPU; an int8 model's speed depends on VNNI). It lives in
:func:`semseg.inference.machine.cache_dir` ``/artefacts/`` as ``NAME.EXT`` with a manifest
``NAME.EXT.json`` beside it: the key, the file's SHA-256 and what its build measured (the parity
check). :func:`lookup` returns an entry only when its manifest's key is the current key and the
file still has the recorded SHA-256; otherwise it says why (absent, corrupt, or stale: which key
inputs changed), the caller rebuilds and :func:`store` replaces the entry (and removes stale
entries of the same checkpoint, format and precision). Files are written atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from semseg.inference import machine
from semseg.inference.checkpoint import LoadedModel, file_sha256
from semseg.inference.machine import cache_dir
from semseg.io import write_json_atomic

SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "pt2e": ".pt2"}


def library_versions() -> dict[str, str]:
    """The versions of the libraries that build and run artefacts."""
    import torch

    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("onnxruntime", "onnx"):  # read from the installed metadata: importing onnx is slow
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # pragma: no cover - dependencies
            versions[name] = "none"
    return versions


def cpu_isa() -> list[str]:
    """The CPU's vector and matrix extensions (what compiled kernels and int8 speed depend on)."""
    prefixes = ("avx", "amx", "sse4", "fma", "f16c", "vnni")
    return sorted(f for f in machine.cpu_flags() if f.startswith(prefixes))


@dataclass(frozen=True)
class ArtefactKey:
    """What an artefact is valid for; :meth:`digest` names its file."""

    checkpoint_sha256: str
    input_size: tuple[int, int]
    format: str  # "onnx" (int8) or "pt2" (AOTInductor)
    precision: str  # "int8", "bf16" or "32"
    libraries: dict[str, str] = field(default_factory=lambda: library_versions())
    cpu: list[str] = field(default_factory=lambda: cpu_isa())
    extra: str = ""  # build settings that change the artefact (batch range, calibration, ...)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    def stem(self) -> str:
        return f"{self.checkpoint_sha256[:16]}-{self.format}-{self.precision}"

    def path(self) -> Path:
        name = f"{self.stem()}-{self.digest()[:12]}{SUFFIXES[self.format]}"
        return cache_dir() / "artefacts" / name


def key_for(
    loaded: LoadedModel, sha256: str, fmt: str, precision: str, extra: str = ""
) -> ArtefactKey:
    """The key of ``loaded``'s artefact of that format and precision on this machine."""
    height, width = loaded.input_size
    return ArtefactKey(sha256, (int(height), int(width)), fmt, precision, extra=extra)


def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(manifest_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class Lookup:
    """An intact entry (``path``, ``manifest``), or None and why it is not usable."""

    path: Path
    manifest: dict[str, Any] | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.manifest is not None


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Which key inputs differ between an old entry's key and the current one."""
    changes = []
    for name in ("input_size", "extra", "cpu"):
        if old.get(name) != new.get(name):
            changes.append(name.replace("_", " ") if name != "cpu" else "CPU flags")
    old_libs, new_libs = old.get("libraries") or {}, new.get("libraries") or {}
    for lib in sorted(set(old_libs) | set(new_libs)):
        if old_libs.get(lib) != new_libs.get(lib):
            changes.append(f"{lib} {old_libs.get(lib)} -> {new_libs.get(lib)}")
    return changes or ["its key"]


def stale_entries(key: ArtefactKey) -> list[Path]:
    """Other entries of the same checkpoint, format and precision (built under another key)."""
    folder = cache_dir() / "artefacts"
    current = key.path()
    pattern = f"{key.stem()}-*{SUFFIXES[key.format]}"
    return sorted(p for p in folder.glob(pattern) if p != current) if folder.is_dir() else []


def lookup(key: ArtefactKey) -> Lookup:
    """The cached artefact for ``key`` if it is intact; else why not (``reason``)."""
    path = key.path()
    manifest = read_manifest(path)
    if manifest is None or not path.is_file():
        for old in stale_entries(key):
            previous = read_manifest(old)
            if previous and isinstance(previous.get("key"), dict):
                changes = ", ".join(changed_inputs(previous["key"], key.as_dict()))
                return Lookup(path, None, f"the cached one is stale ({changes})")
        if manifest is not None or path.is_file():
            return Lookup(path, None, "the cached entry is incomplete")
        return Lookup(path, None, "none cached")
    if manifest.get("key") != key.as_dict():
        return Lookup(path, None, "the cached entry's manifest does not match its key")
    try:
        intact = file_sha256(path) == manifest.get("sha256")
    except OSError:
        intact = False
    if not intact:
        return Lookup(path, None, "the cached file was changed or truncated")
    return Lookup(path, manifest)


def store(key: ArtefactKey, built: Path, record: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Move ``built`` (a file in the cache folder's file system) into the entry of ``key`` and
    write its manifest; stale entries of the same checkpoint, format and precision go."""
    path = key.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "key": key.as_dict(),
        "sha256": file_sha256(built),
        "bytes": built.stat().st_size,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **record,
    }
    manifest_path(path).unlink(missing_ok=True)  # never a manifest for a file half replaced
    os.replace(built, path)
    write_json_atomic(manifest_path(path), manifest)
    for old in stale_entries(key):
        with contextlib.suppress(OSError):
            old.unlink()
            manifest_path(old).unlink(missing_ok=True)
    return path, manifest


def work_dir() -> Path:
    """Where artefacts are built before :func:`store` moves them (same file system)."""
    folder = cache_dir() / "artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
