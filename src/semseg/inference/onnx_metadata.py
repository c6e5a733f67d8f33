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

from pathlib import Path
from typing import BinaryIO

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
