"""An ONNX file's ``metadata_props`` read straight from its protobuf fields.

``onnx.load`` parses the whole graph and importing ``onnx`` alone takes about 0.3 s, a tenth of
what a fresh ``semseg predict`` may spend before its first image. Reading the metadata needs
neither: ``ModelProto`` is a sequence of tagged fields, ``metadata_props`` is field 14 (each entry
a ``StringStringEntryProto``: key = 1, value = 2) and every other field, the graph (7) with its
weights included, is skipped by its length without being read. Anything that does not parse as
a ``ModelProto`` with a graph raises :class:`ValueError`; the caller then lets ``onnx`` itself say
what is wrong with the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO

from semseg.errors import SemsegError
from semseg.inference.model_info import (
    LoadedModel,
    check_model_description,
    check_positive_class,
    checked_colours,
    checked_names,
)
from semseg.io import first_line

GRAPH_FIELD = 7
METADATA_FIELD = 14
MAX_ENTRY_BYTES = 1 << 24  # a metadata entry larger than 16 MiB is not one semseg writes
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


def read_varint(stream: BinaryIO) -> int | None:
    """The next base-128 varint, or None at the end of the stream (before its first byte)."""
    value = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift:
                raise ValueError("the file ends inside a varint")
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def skip(stream: BinaryIO, count: int, size: int) -> None:
    if count < 0 or stream.tell() + count > size:
        raise ValueError("a field runs past the end of the file")
    stream.seek(count, 1)


def string_pair(entry: bytes) -> tuple[str, str]:
    """``(key, value)`` of a serialized ``StringStringEntryProto``."""
    import io

    fields = {1: "", 2: ""}
    stream = io.BytesIO(entry)
    while (tag := read_varint(stream)) is not None:
        number, wire = tag >> 3, tag & 7
        if wire != LENGTH_DELIMITED:
            raise ValueError("a metadata entry holds a field that is not a string")
        length = read_varint(stream)
        if length is None or stream.tell() + length > len(entry):
            raise ValueError("a metadata entry is cut short")
        text = stream.read(length)
        if number in fields:
            fields[number] = text.decode("utf-8")
    return fields[1], fields[2]


def read_metadata_props(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX model in ``path`` (the last value of a repeated key
    wins, as in ``onnx``); :class:`ValueError` where the file is not a ``ModelProto`` with a
    graph."""
    path = Path(path)
    size = path.stat().st_size
    metadata: dict[str, str] = {}
    has_graph = False
    with open(path, "rb") as stream:
        while (tag := read_varint(stream)) is not None:
            number, wire = tag >> 3, tag & 7
            if number == 0:
                raise ValueError("field number 0")
            if wire == VARINT:
                if read_varint(stream) is None:
                    raise ValueError("the file ends inside a field")
            elif wire == FIXED64:
                skip(stream, 8, size)
            elif wire == FIXED32:
                skip(stream, 4, size)
            elif wire == LENGTH_DELIMITED:
                length = read_varint(stream)
                if length is None:
                    raise ValueError("the file ends inside a field")
                if number == METADATA_FIELD:
                    if length > MAX_ENTRY_BYTES or stream.tell() + length > size:
                        raise ValueError("a metadata entry runs past the end of the file")
                    key, value = string_pair(stream.read(length))
                    metadata[key] = value
                else:
                    has_graph = has_graph or number == GRAPH_FIELD
                    skip(stream, length, size)
            else:
                raise ValueError(f"wire type {wire} is not one an ONNX model uses")
    if not has_graph:
        raise ValueError("no graph")
    return metadata


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without reading its weights: the fields are read
    directly; ``onnx`` parses a file that does not read as a model, to say why)."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"ONNX model not found: {path}")
    try:
        return read_metadata_props(path)
    except (ValueError, UnicodeDecodeError, OSError):
        pass
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise SemsegError(f"{path} is not an ONNX model: {first_line(error)}") from error
    return {entry.key: entry.value for entry in proto.metadata_props}


def load_onnx_model(path: str | Path) -> LoadedModel:
    """A :class:`LoadedModel` describing a semseg ONNX export (its ``model`` is None)."""
    return loaded_from_metadata(path, read_onnx_metadata(path), "a semseg ONNX export")


def loaded_from_metadata(path: str | Path, meta: dict[str, str], what: str) -> LoadedModel:
    """A :class:`LoadedModel` (``model`` None) from an export's metadata, checked as a
    checkpoint's description is."""
    try:
        num_classes, (height, width) = check_model_description(
            path, meta["num_classes"], json.loads(meta["input_size"])
        )
        names = checked_names(path, json.loads(meta.get("class_names", "[]")), num_classes)
        colours = meta.get("class_colours")
        return LoadedModel(
            model=None,  # type: ignore[arg-type]
            model_name=meta.get("model_name", "onnx"),
            num_classes=num_classes,
            input_size=(height, width),
            positive_class=check_positive_class(path, meta.get("positive_class", 1), num_classes),
            class_names=names,
            path=Path(path),
            class_colours=checked_colours(
                path, None if colours is None else json.loads(colours), num_classes
            ),
        )
    except (KeyError, ValueError, TypeError) as error:
        raise SemsegError(f"{path} is not {what} (metadata: {first_line(error)})") from error
