"""Static size checks: refuse a model whose tensors would be too large, before its first forward pass.

A few hundred bytes of ONNX, or a Keras config, can declare tensors of many GiB: a
``ConstantOfShape`` to [45000, 45000], a fixed 20000 x 20000 input, an ``UpSampling2D`` by 300,
a chain of 8000 x 8000 ``MatMul``\\ s. The test forward pass would then take the process down.
The checks here compute tensor shapes from the file for one image — ONNX shape inference over
the declared input, initializer and constant sizes; Keras's own output-shape rules (see
:func:`workbench.adapters.loading_keras.layer_output_sizes`) — and refuse any input side over
``max_input_side`` and any tensor over ``max_tensor_mb``. They see declared sizes only: a size
known only when the model runs is left to the worker's memory limit.

Importing this module imports no framework (ONNX is imported inside the function that reads it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Iterator, Sequence

from .errors import LimitExceeded
from .settings import Settings

# Initializers and constants up to this many elements keep their values for shape inference: they
# are the shape arguments of Reshape, Expand, ConstantOfShape, ... that data propagation needs.
# Larger ones are weights, of which only the shape matters, so they go in as declared inputs.
_SHAPE_ARGUMENT_ELEMENTS = 64


@dataclasses.dataclass(frozen=True)
class TensorSize:
    name: str
    kind: str  # what produces it: "input", "initializer", an ONNX operator or a Keras layer class
    shape: tuple[int, ...]
    itemsize: int = 4

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def check_input_size(size: Sequence[int], subject: str, settings: Settings) -> None:
    """Refuse an (H, W, ...) input size with a side over ``max_input_side``."""
    h, w = int(size[0]), int(size[1])
    limit = settings.max_input_side
    if max(h, w) > limit:
        raise LimitExceeded(
            f"{subject}: a {h} x {w} pixel input is over the maximum input side of {limit} pixels; "
            "an operator can raise it with WORKBENCH_MAX_INPUT_SIDE."
        )


def check_tensor_sizes(tensors: Iterable[TensorSize], subject: str, settings: Settings) -> None:
    """Refuse the first tensor over ``max_tensor_mb`` (sizes are for one image)."""
    limit = settings.max_tensor_mb * 2**20
    for tensor in tensors:
        if tensor.nbytes > limit:
            dims = " x ".join(map(str, tensor.shape))
            name = tensor.name if len(tensor.name) <= 60 else tensor.name[:57] + "..."
            raise LimitExceeded(
                f"{subject}: the {tensor.kind} tensor {name!r} would be {dims} ({_size_text(tensor.nbytes)}) "
                f"for one image, over the limit of {settings.max_tensor_mb} MiB per tensor; an operator can "
                "raise it with WORKBENCH_MAX_TENSOR_MB."
            )


def input_tensor(size: Sequence[int]) -> TensorSize:
    """The float32 input batch of one image of (H, W, C)."""
    return TensorSize("input", "input", (1, *(int(v) for v in size)))


# ====================================================================== ONNX
def onnx_graphs(graph):
    """The graph and every subgraph (If/Loop/Scan bodies) inside it."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from onnx_graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from onnx_graphs(subgraph)


def _itemsize(elem_type: int) -> int:
    from onnx import helper

    try:
        return max(1, helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except Exception:  # noqa: BLE001 - undefined or exotic types: count them as float32
        return 4


def _stored_elements(tensor) -> int:
    """How many elements a TensorProto actually carries in the file."""
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data) // _itemsize(tensor.data_type)
    return sum(
        len(field)
        for field in (tensor.float_data, tensor.int32_data, tensor.int64_data, tensor.double_data, tensor.uint64_data, tensor.string_data)
    )


def _declared(name: str, kind: str, tensor) -> Iterator[TensorSize]:
    """A weight or constant, when it declares more elements than the file stores: weights that are in
    the file are bounded by the upload limit, but a declared shape alone is not."""
    dims = tuple(tensor.dims)
    if math.prod(dims) > _stored_elements(tensor):
        yield TensorSize(name, kind, dims, _itemsize(tensor.data_type))


def _large_constant(node) -> bool:
    return node.op_type == "Constant" and any(
        attribute.name == "value" and math.prod(attribute.t.dims) > _SHAPE_ARGUMENT_ELEMENTS for attribute in node.attribute
    )


def _light_model(proto, *, layout: str, size: Sequence[int]):
    """The graph without its weights' values, its image input fixed to one image of ``size``."""
    import onnx
    from onnx import helper

    h, w, c = (int(v) for v in size)
    image_dims = (1, c, h, w) if layout == "NCHW" else (1, h, w, c)
    source = proto.graph
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    graph = light.graph
    weights = {tensor.name for tensor in source.initializer} | {sparse.values.name for sparse in source.sparse_initializer}
    for value in source.input:
        if value.name in weights:
            continue
        copy = graph.input.add()
        copy.CopyFrom(value)
        dims = copy.type.tensor_type.shape.dim
        if len(dims) == len(image_dims):
            for dim, fixed in zip(dims, image_dims):
                dim.Clear()
                dim.dim_value = fixed
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= _SHAPE_ARGUMENT_ELEMENTS:
            graph.initializer.add().CopyFrom(tensor)
        else:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    for sparse in source.sparse_initializer:
        graph.input.append(helper.make_tensor_value_info(sparse.values.name, sparse.values.data_type, list(sparse.dims)))
    for node in source.node:
        if _large_constant(node):
            value = next(attribute.t for attribute in node.attribute if attribute.name == "value")
            graph.input.append(helper.make_tensor_value_info(node.output[0], value.data_type, list(value.dims)))
        else:
            graph.node.add().CopyFrom(node)
    for value in source.output:  # names and types only: the declared output shape is for any batch
        graph.output.append(helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, None))
    return light


def _constant_of_shape_sizes(graph) -> Iterator[TensorSize]:
    """``ConstantOfShape`` outputs whose shape argument is a constant, read directly (also when inference fails)."""
    from onnx import TensorProto, numpy_helper

    values = {}
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= _SHAPE_ARGUMENT_ELEMENTS:
            values[tensor.name] = tensor
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attribute in node.attribute:
                if attribute.name == "value" and math.prod(attribute.t.dims) <= _SHAPE_ARGUMENT_ELEMENTS:
                    values[node.output[0]] = attribute.t
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or not node.input or node.input[0] not in values:
            continue
        try:
            shape = tuple(int(v) for v in numpy_helper.to_array(values[node.input[0]]).ravel())
        except Exception:  # noqa: BLE001 - an unreadable shape argument: the checker and the worker decide
            continue
        elem_type = next((a.t.data_type for a in node.attribute if a.name == "value"), TensorProto.FLOAT)
        if all(v >= 0 for v in shape):
            yield TensorSize(node.output[0], "ConstantOfShape", shape, _itemsize(elem_type))


def onnx_tensor_sizes(proto, *, layout: str, size: Sequence[int]) -> Iterator[TensorSize]:
    """Every tensor size the file declares or ONNX shape inference derives, for one image of (H, W, C)."""
    from onnx import shape_inference

    stored = set()  # weights and constants whose values are in the file
    for graph in onnx_graphs(proto.graph):
        for tensor in graph.initializer:
            stored.add(tensor.name)
            yield from _declared(tensor.name, "initializer", tensor)
        for sparse in graph.sparse_initializer:  # made dense when the model is loaded: its dense size counts
            stored.add(sparse.values.name)
            yield TensorSize(sparse.values.name, "sparse initializer", tuple(sparse.dims), _itemsize(sparse.values.data_type))
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    stored.update(node.output[:1])
                    yield from _declared(node.output[0] if node.output else node.name, node.op_type, attribute.t)
                if attribute.HasField("sparse_tensor"):
                    sparse = attribute.sparse_tensor
                    yield TensorSize(node.output[0] if node.output else node.name, node.op_type, tuple(sparse.dims), _itemsize(sparse.values.data_type))
        yield from _constant_of_shape_sizes(graph)

    try:
        inferred = shape_inference.infer_shapes(
            _light_model(proto, layout=layout, size=size), check_type=False, strict_mode=False, data_prop=True
        )
    except Exception:  # noqa: BLE001 - a graph ONNX cannot infer: the declared sizes above are all we know
        return
    producers = {output: node.op_type for graph in onnx_graphs(inferred.graph) for node in graph.node for output in node.output}
    for graph in onnx_graphs(inferred.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.name in stored:
                continue
            tensor_type = value.type.tensor_type
            if not tensor_type.HasField("shape"):
                continue
            dims = tuple(dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim)
            if all(d >= 0 for d in dims):
                yield TensorSize(value.name, producers.get(value.name, "input"), dims, _itemsize(tensor_type.elem_type))


def check_onnx_sizes(proto, filename: str, *, layout: str, size: Sequence[int], settings: Settings) -> None:
    """Refuse an ONNX graph with an input side or any tensor over the limits, for one image of (H, W, C)."""
    check_input_size(size, filename, settings)
    check_tensor_sizes(onnx_tensor_sizes(proto, layout=layout, size=size), filename, settings)
