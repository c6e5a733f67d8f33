"""Reading an ONNX file's metadata from its protobuf fields, checked against ``onnx`` itself."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from semseg.errors import SemsegError
from semseg.inference.onnx_export import read_onnx_metadata
from semseg.inference.onnx_metadata import read_metadata_props


def small_model(metadata: list[tuple[str, str]], weights: int = 1000) -> onnx.ModelProto:
    """A one-node model with a weight initializer (so the graph is longer than the rest) and
    the given metadata entries, in order."""
    weight = numpy_helper.from_array(np.arange(weights, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [weights])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [weights])],
        initializer=[weight],
    )
    model = helper.make_model(graph, producer_name="tests", doc_string="a doc string")
    model.model_version = 7
    for key, value in metadata:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def by_onnx(path) -> dict[str, str]:
    proto = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in proto.metadata_props}


CASES = [
    [],
    [("num_classes", "2"), ("input_size", "[160, 576]")],
    [("class_names", '["not road", "road"]'), ("empty", ""), ("", "no key")],
    [("unicode", "Straße – 道路 ✓"), ("long", "x" * 70_000)],  # a two-byte length varint
    [("repeated", "first"), ("other", "1"), ("repeated", "last")],  # the last one wins
]


@pytest.mark.parametrize("metadata", CASES)
def test_metadata_matches_what_onnx_reads(tmp_path, metadata):
    path = tmp_path / "model.onnx"
    onnx.save(small_model(metadata, weights=50_000), str(path))
    assert read_metadata_props(path) == by_onnx(path)
    assert read_onnx_metadata(path) == by_onnx(path)


def test_metadata_written_before_the_graph_is_read_too(tmp_path):
    """Field order is free in protobuf: entries may come before or after the graph."""
    model = small_model([("a", "1"), ("b", "2")])
    metadata_only = onnx.ModelProto()
    metadata_only.metadata_props.extend(model.metadata_props)
    del model.metadata_props[:]
    path = tmp_path / "model.onnx"
    path.write_bytes(metadata_only.SerializeToString() + model.SerializeToString())
    assert read_metadata_props(path) == {"a": "1", "b": "2"} == by_onnx(path)


def test_a_real_export_reads_the_same(tmp_path):
    from conftest import tiny_checkpoint

    from semseg.inference.checkpoint import load_model
    from semseg.inference.onnx_export import export_onnx

    loaded = load_model(tiny_checkpoint(tmp_path / "model.ckpt"))
    path = tmp_path / "model.onnx"
    export_onnx(loaded, path)
    found = read_metadata_props(path)
    assert found == by_onnx(path)
    assert found["num_classes"] == "2"


@pytest.mark.parametrize("cut", [1, 5, 200, -3])
def test_a_cut_file_does_not_parse(tmp_path, cut):
    whole = small_model([("k", "v" * 300)]).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(whole[:cut])
    with pytest.raises(ValueError):
        read_metadata_props(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 16, b"plain text, not a model", bytes(range(256)) * 4, b"\x0b\x0c"],
)
def test_what_is_not_a_model_does_not_parse(tmp_path, content):
    path = tmp_path / "junk.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError):
        read_metadata_props(path)


def test_a_file_that_is_no_model_gets_onnx_s_one_line_error(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"plain text, not a model")
    with pytest.raises(SemsegError, match="is not an ONNX model"):
        read_onnx_metadata(path)
