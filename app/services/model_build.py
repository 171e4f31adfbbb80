"""Build the int8 catalogue models: ``isnet-general-tiny`` (from IS-Net general-use) and ``u2netp-int8``
(from the bundled fp32 u2netp).

Pipeline: load a source model (fp16 or fp32 ONNX) -> fp32 graph with only
output 0 (the mask) -> static QDQ int8 quantisation calibrated on the public
images in ``app/model_build_calibration/``, pre-processed as the service does
for that model -> atomic write of the model and a ``<dest>.sha256`` sidecar.
The same source gives byte-identical output.

The recipe (``DEFAULT_RECIPE``) was chosen by measurement, see
``bench/experiments/RESULTS-isnet-tiny.md``: QDQ, per-channel, U8 activations / S8 weights
limited to 7 bits (``reduce_range``), Entropy calibration one image at a time, only the mask head
(side1 Conv, last Resize, Sigmoid) in float. On the 6 fixture photos: IoU 0.9936 mean / 0.973 min
vs fp32 IS-Net on a CPU without VNNI (docs/models.md), 44.5 MB.
``U2NETP_INT8_RECIPE`` and why its float nodes are the ones they are: docs/models.md.
This module must not import Flask.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from app.model_io import model_input
from app.services.model_store import CATALOGUE, TINY, U2NETP_INT8, ModelSpec, sidecar_of

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "model_build_calibration"

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


class ModelBuildError(Exception):
    """The source model cannot be turned into the requested int8 model."""


@dataclass(frozen=True)
class ChannelRescale:
    """Output `channel` of Conv `producer` becomes (x - low) * factor; Conv `consumer`, which reads it through
    Relu / Resize / Concat, gets the weights / factor and low folded into its bias (rescale_channel)."""

    producer: str
    channel: int
    consumer: str
    low: float
    factor: float


@dataclass(frozen=True)
class Recipe:
    """How to quantise. ``exclude`` names structural roles kept in float.

    Roles: ``first_conv`` (the Conv reading the graph input), ``mask_conv`` (the
    Conv producing the final mask logits, IS-Net's side1), ``mask_resize`` (the
    Resize after it) and ``mask_sigmoid`` (the final Sigmoid). Extra node names
    can be listed in ``exclude_nodes``.
    """

    calibrate_method: str = "Entropy"  # MinMax | Percentile | Entropy
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = False
    quant_format: str = "QDQ"  # QDQ | QOperator
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    exclude: tuple[str, ...] = ("mask_conv", "mask_resize", "mask_sigmoid")
    exclude_nodes: tuple[str, ...] = ()
    extra_options: tuple[tuple[str, object], ...] = field(default_factory=tuple)
    # Histogram size for Entropy/Percentile. None keeps onnxruntime's default
    # (Entropy: 128 bins that grow with the data, Percentile: 2048).
    num_bins: int | None = None
    num_quantized_bins: int | None = None
    # Run each Resize on the uint8 tensor itself when the DequantizeLinear before it and the
    # QuantizeLinear after it share scale and zero point (integer_resize).
    integer_resize: bool = True
    # Raise an older graph to this opset first (per-channel DequantizeLinear needs 13; u2netp is 11),
    # then let onnxruntime's quant_pre_process fold the Shape/Gather chains that size u2netp's Resizes.
    min_opset: int | None = None
    # Near-constant Conv output channels re-centred and rescaled before quantising (rescale_channel).
    rescaled_channels: tuple[ChannelRescale, ...] = ()
    # Nodes whose output passes through an int8 1x1 identity Conv (identity_conv_after): onnxruntime's NHWC
    # layout then starts right there instead of at the first int8 Conv after a float one.
    identity_conv_after: tuple[str, ...] = ()


# 7-bit weights: on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake, AMD before Zen 4) onnxruntime
# multiplies u8 activations by s8 weights with VPMADDUBSW, which adds two products into a saturating int16;
# with full 8-bit weights IS-Net's sums overflow it and the masks lose fidelity on those CPUs only (IoU
# 0.9846 / 0.942 instead of 0.9928 / 0.967 on a Zen 3 EPYC). Two 7-bit products always fit, on every CPU.
DEFAULT_RECIPE = Recipe(reduce_range=True)

# u2netp: MinMax ranges and 8-bit weights (7-bit ones, isnet-general-tiny's cure for CPUs without VNNI, cost
# u2netp's masks more than that saturation does); in float the first Conv (in int8 the fixtures' minimum IoU
# falls under 0.97), the mask head, side6's Conv (one output channel, an 11.9 weight among <= 1.8 ones) and
# Conv_44 (2 MMAC, the cheapest Conv that lifts the fixtures' minimum over 0.97). Two decoder channels that sit
# far above the others are rescaled, so their chains run in int8 (kept in float, 0.65 GMAC took 17.6 % of the
# time). How each was found: docs/models.md ("u2netp-int8: the recipe").
U2NETP_INT8_RECIPE = Recipe(
    calibrate_method="MinMax",
    exclude=("first_conv", "mask_conv", "mask_sigmoid"),
    exclude_nodes=("Conv_44", "Conv_1026"),
    min_opset=13,
    # Conv_0 stays float, and without this the QLinearAdd, MaxPool and Concat that read its output ran in
    # NCHW: 63 of 723 ms (1 thread) went to a NCHW MaxPool and Transposes of 320x320 maps.
    identity_conv_after=("Relu_1",),
    # Conv_765's channel 14 is 226-228 (the other 15 at most 73) and Conv_898's channel 12 is 52-54 (the
    # others at most 11) on the calibration images: re-centred and scaled to the others' range.
    rescaled_channels=(
        ChannelRescale("Conv_765", 14, "Conv_787", low=225.0, factor=24.0),
        ChannelRescale("Conv_898", 12, "Conv_920", low=51.0, factor=3.5),
    ),
)

RECIPES: dict[str, Recipe] = {TINY: DEFAULT_RECIPE, U2NETP_INT8: U2NETP_INT8_RECIPE}


# --------------------------------------------------------------------------- loading


def load_source(source: Path) -> onnx.ModelProto:
    """Load and validate a source IS-Net; return an fp32 model with output 0 only."""
    source = Path(source)
    if not source.is_file():
        raise ModelBuildError(f"source model {source} does not exist or is not a file")
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # protobuf raises assorted errors on junk
        raise ModelBuildError(f"{source} is not a readable ONNX model: {exc}") from exc
    if len(model.graph.node) == 0 or len(model.graph.output) == 0:
        raise ModelBuildError(f"{source} is not a usable ONNX model (no nodes or no outputs)")
    input_size(model)  # validates the input
    model = fp16_to_fp32(model)
    model = prune_to_first_output(model)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelBuildError(f"{source} does not form a valid ONNX graph: {exc}") from exc
    return model


def input_size(model: onnx.ModelProto) -> tuple[int, int]:
    """Return (height, width) of the single [1, 3, H, W] float input, or raise."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelBuildError(f"expected exactly one image input, found {len(inputs)}")
    tt = inputs[0].type.tensor_type
    if tt.elem_type not in _FLOATS:
        raise ModelBuildError(f"input {inputs[0].name!r} must be float or float16, got type {tt.elem_type}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if len(dims) != 4 or dims[0] not in (1, None) or dims[1] != 3 or not dims[2] or not dims[3]:
        raise ModelBuildError(
            f"input {inputs[0].name!r} must have shape [1, 3, H, W] with fixed H and W, got {dims}"
        )
    return int(dims[2]), int(dims[3])


def _tensor_to_fp32(t: TensorProto) -> None:
    """Convert a FLOAT16 TensorProto to FLOAT in place."""
    arr = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def fp16_to_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return an fp32 copy of a (possibly) fp16 model.

    Float16 weights, constants and value types become float32; Cast nodes
    between float types become identities and are removed; other Casts to
    float16 now cast to float32.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    # Element types before conversion, to recognise float->float Casts.
    try:
        typed = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelBuildError(f"shape inference failed on the source: {exc}") from exc
    elem: dict[str, int] = {}
    for vi in list(typed.graph.value_info) + list(typed.graph.input) + list(typed.graph.output):
        elem[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        elem[t.name] = t.data_type

    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT16:
            _tensor_to_fp32(t)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    del g.value_info[:]

    identity: list[onnx.NodeProto] = []
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                _tensor_to_fp32(attr.t)
            if attr.type == onnx.AttributeProto.GRAPH:
                raise ModelBuildError(f"subgraphs are not supported (node {node.name!r})")
        if node.op_type == "Cast":
            to = helper.get_attribute_value(next(a for a in node.attribute if a.name == "to"))
            if to in _FLOATS and elem.get(node.input[0]) in _FLOATS:
                identity.append(node)
            elif to == TensorProto.FLOAT16:
                for a in node.attribute:
                    if a.name == "to":
                        a.i = TensorProto.FLOAT
    for node in identity:
        _remove_identity(g, node)
    return model


def _remove_identity(g: onnx.GraphProto, node: onnx.NodeProto) -> None:
    """Remove a one-in one-out identity node, rewiring its consumers."""
    src, dst = node.input[0], node.output[0]
    graph_outputs = {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    g.node.remove(node)
    if dst in graph_outputs:
        if src in graph_inputs or src in graph_outputs:
            g.node.append(helper.make_node("Identity", [src], [dst], name=node.name))
            return
        old, new = src, dst  # keep the public output name
    else:
        old, new = dst, src
    for n in g.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for i, name in enumerate(n.output):
            if name == old:
                n.output[i] = new


def prune_to_first_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep only graph output 0 and the nodes and initializers it needs."""
    g = model.graph
    keep_out = g.output[0]
    producers = {o: n for n in g.node for o in n.output}
    needed: set[str] = set()
    live: set[int] = set()
    stack = [keep_out.name]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        n = producers.get(name)
        if n is not None and id(n) not in live:
            live.add(id(n))
            stack.extend(i for i in n.input if i)
    nodes = [n for n in g.node if id(n) in live]
    out = onnx.ModelProto.FromString(model.SerializeToString())
    og = out.graph
    del og.node[:]
    og.node.extend(nodes)
    del og.output[:]
    og.output.append(keep_out)
    inits = [t for t in g.initializer if t.name in needed]
    del og.initializer[:]
    og.initializer.extend(inits)
    del og.value_info[:]
    return out


# --------------------------------------------------------------------------- calibration


def preprocess(image: Image.Image, size: tuple[int, int], spec: ModelSpec = CATALOGUE["isnet-general-use"]) -> np.ndarray:
    """The service's own pre-processing for `spec`, so calibration sees exactly what inference will."""
    h, w = size
    resized = image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    return model_input(resized, spec.mean, spec.std)


def calibration_images(directory: Path = CALIBRATION_DIR) -> list[Path]:
    """Calibration images (sorted, so the build is deterministic)."""
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise ModelBuildError(f"no calibration images in {directory}")
    return paths


class ImageCalibrationReader:
    """CalibrationDataReader feeding one preprocessed image at a time.

    Supports ``set_range`` so the quantiser can collect statistics image by
    image (``CalibStridedMinMax=1``), which bounds calibration memory.
    """

    def __init__(self, paths: Sequence[Path], input_name: str, size: tuple[int, int],
                 spec: ModelSpec = CATALOGUE["isnet-general-use"]) -> None:
        self.paths = list(paths)
        self.input_name = input_name
        self.size = size
        self.spec = spec
        self.set_range(0, len(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._queue = list(self.paths[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self._queue:
            return None
        path = self._queue.pop(0)
        with Image.open(path) as im:
            return {self.input_name: preprocess(im, self.size, self.spec)}

    def __iter__(self):
        while (item := self.get_next()) is not None:
            yield item

    def rewind(self) -> None:
        self.set_range(0, len(self.paths))


# --------------------------------------------------------------------------- quantisation


def role_nodes(model: onnx.ModelProto, roles: Iterable[str]) -> list[str]:
    """Resolve structural roles (see ``Recipe``) to node names in this graph."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output}
    inp = input_name(model)
    found: dict[str, str] = {}
    first = next((n for n in g.node if n.op_type == "Conv" and inp in n.input), None)
    if first is not None:
        found["first_conv"] = first.name
    # Walk back from the output through the mask head: Sigmoid <- Resize <- Conv.
    n = producers.get(g.output[0].name)
    while n is not None and not {"mask_sigmoid", "mask_resize", "mask_conv"} <= set(found):
        key = {"Sigmoid": "mask_sigmoid", "Resize": "mask_resize", "Conv": "mask_conv"}.get(n.op_type)
        if key and key not in found:
            found[key] = n.name
        if n.op_type == "Conv":
            break
        n = producers.get(n.input[0])
    names = []
    for role in roles:
        if role not in found:
            raise ModelBuildError(f"cannot find the {role!r} node in the graph")
        names.append(found[role])
    return names


def input_name(model: onnx.ModelProto) -> str:
    """Name of the image input."""
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique, deterministic name (the quantiser keys on them)."""
    seen: set[str] = set()
    for idx, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{idx}"
        seen.add(n.name)


def quantize(
    model: onnx.ModelProto,
    images: Sequence[Path],
    recipe: Recipe = DEFAULT_RECIPE,
    workdir: Path | None = None,
    calibration_cache: Path | None = None,
    spec: ModelSpec = CATALOGUE["isnet-general-use"],
) -> bytes:
    """Quantise an fp32 model (output 0 only) with ``recipe``; return the serialised model.

    ``spec`` gives the calibration images' pre-processing (mean, std). ``calibration_cache``
    (benchmarks only) stores/reuses the calibrated ranges; it must belong to the same model,
    images and calibration method.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.ModelProto.FromString(model.SerializeToString())
    _ensure_node_names(model)
    if recipe.min_opset is not None:
        model = fold_shapes(model, recipe.min_opset, workdir)
    exclude = role_nodes(model, recipe.exclude) + list(recipe.exclude_nodes)
    named = {r.producer for r in recipe.rescaled_channels} | {r.consumer for r in recipe.rescaled_channels}
    named |= set(recipe.identity_conv_after)
    missing = sorted((set(recipe.exclude_nodes) | named) - {n.name for n in model.graph.node})
    if missing:
        raise ModelBuildError(f"the source has no node {', '.join(missing)}: not the model this recipe is for")
    reader = ImageCalibrationReader(images, input_name(model), input_size(model), spec)
    if recipe.rescaled_channels:
        _check_channel_lows(model, recipe.rescaled_channels, reader)
        for rescale in recipe.rescaled_channels:
            model = rescale_channel(model, rescale)
    for name in recipe.identity_conv_after:
        model = identity_conv_after(model, name)
    extra: dict[str, object] = {"CalibStridedMinMax": 1}  # one image at a time
    if recipe.calibrate_method == "Percentile":
        extra["CalibPercentile"] = recipe.percentile
    extra.update(dict(recipe.extra_options))
    with tempfile.TemporaryDirectory(prefix="isnet-tiny-build.", dir=workdir) as tmp:
        src = Path(tmp) / "fp32.onnx"
        out = Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        if recipe.num_bins is not None and not (calibration_cache and Path(calibration_cache).is_file()):
            # quantize_static cannot pass histogram sizes: calibrate here, hand over via the cache.
            calibration_cache = calibration_cache or Path(tmp) / "ranges.json"
            _calibrate_to_cache(src, reader, recipe, Path(tmp) / "augmented.onnx", Path(calibration_cache))
        quantize_static(
            str(src),
            str(out),
            reader,
            quant_format=getattr(QuantFormat, recipe.quant_format),
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=getattr(QuantType, recipe.activation_type),
            weight_type=getattr(QuantType, recipe.weight_type),
            calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
            nodes_to_exclude=exclude,
            extra_options=extra,
            calibration_cache_path=str(calibration_cache) if calibration_cache else None,
        )
        q = onnx.load(str(out))
    if recipe.integer_resize:
        q = integer_resize(q)
    q.producer_name = "pixport-isnet-tiny-build"
    q.producer_version = "1"
    return q.SerializeToString()


def _conv_parameters(model: onnx.ModelProto, conv: onnx.NodeProto) -> tuple[TensorProto, TensorProto]:
    """A Conv's weight and bias initializers (a zero bias is added if it has none); both must be its own."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    groups = [a.i for a in conv.attribute if a.name == "group"]
    if conv.op_type != "Conv" or conv.input[1] not in inits or (groups and groups[0] != 1):
        raise ModelBuildError(f"{conv.name} is not a plain Conv with constant weights")
    weight = inits[conv.input[1]]
    if len(conv.input) < 3 or not conv.input[2]:
        name = f"{conv.name}_bias"
        g.initializer.append(numpy_helper.from_array(np.zeros(weight.dims[0], np.float32), name))
        del conv.input[2:]
        conv.input.append(name)
        inits[name] = g.initializer[-1]
    shared = [n.name for n in g.node if n is not conv and {conv.input[1], conv.input[2]} & set(n.input)]
    if shared or conv.input[2] not in inits:
        raise ModelBuildError(f"{conv.name}'s weights or bias are shared with {', '.join(shared) or 'no initializer'}")
    return weight, inits[conv.input[2]]


def _channel_offset(model: onnx.ModelProto, rescale: ChannelRescale) -> int:
    """Where the producer's channels sit in the consumer's input: the path must be single-consumer Relu /
    Resize / MaxPool nodes (they commute with x -> (x - low) * factor while x >= low), at most one Concat on
    axis 1, then the consumer."""
    g = model.graph
    nodes = {n.name: n for n in g.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    typed = onnx.shape_inference.infer_shapes(model)
    channels = {vi.name: vi.type.tensor_type.shape.dim[1].dim_value for vi in typed.graph.value_info
                if len(vi.type.tensor_type.shape.dim) > 1}
    tensor, offset = nodes[rescale.producer].output[0], 0
    while True:
        after = [n for n in consumers.get(tensor, []) if n.op_type != "Shape"]  # a Shape reads no values
        if len(after) != 1:
            raise ModelBuildError(f"{rescale.producer}'s channel reaches {len(after)} nodes, not only {rescale.consumer}")
        node = after[0]
        if node.name == rescale.consumer:
            if node.input[0] != tensor:
                raise ModelBuildError(f"{rescale.consumer} reads {rescale.producer}'s output as weights")
            return offset
        if node.op_type == "Concat":
            axis = [a.i for a in node.attribute if a.name == "axis"]
            before = list(node.input).index(tensor)
            if axis != [1] or any(not channels.get(name) for name in node.input[:before]):
                raise ModelBuildError(f"{node.name}: channel offset of {rescale.producer}'s output unknown")
            offset += sum(channels[name] for name in node.input[:before])
        elif node.op_type not in ("Relu", "Resize", "MaxPool"):
            raise ModelBuildError(f"{node.name} ({node.op_type}) between {rescale.producer} and {rescale.consumer} "
                                  "does not commute with rescaling a channel")
        tensor = node.output[0]


def rescale_channel(model: onnx.ModelProto, rescale: ChannelRescale) -> onnx.ModelProto:
    """A copy where the producer's output channel is (x - low) * factor and the consumer compensates.

    A channel that sits far above the others (u2netp's Conv_765 channel 14: 226-228 where the other 15 reach
    73) sets the one uint8 step of every tensor it passes through, so the other channels keep a handful of
    levels; its consumer reads its small variations with weights 35x the others' (5.6 against <= 0.16),
    which sets the consumer's per-channel weight steps too. Re-centred and scaled, the channel spans the
    others' range and the consumer's weights shrink by `factor` to theirs. Relu, linear Resize and MaxPool
    commute with the map while x >= low (_check_channel_lows), and low * (the consumer's weights for that
    channel) goes into its bias. That is exact except on the consumer's one-pixel output border, where its
    zero padding used to cut taps of the constant: on the six fixture photos the fp32 graph rescaled this
    way keeps IoU 0.9989 / 0.9955 with the original's masks (docs/models.md).
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = {n.name: n for n in model.graph.node}
    offset = _channel_offset(model, rescale)
    weight, bias = _conv_parameters(model, nodes[rescale.producer])
    w, b = numpy_helper.to_array(weight).astype(np.float32), numpy_helper.to_array(bias).astype(np.float32)
    if not 0 <= rescale.channel < w.shape[0] or rescale.factor <= 0:
        raise ModelBuildError(f"{rescale.producer} has no output channel {rescale.channel} (or the factor is not positive)")
    w[rescale.channel] *= np.float32(rescale.factor)
    b[rescale.channel] = (b[rescale.channel] - np.float32(rescale.low)) * np.float32(rescale.factor)
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    weight, bias = _conv_parameters(model, nodes[rescale.consumer])
    w, b = numpy_helper.to_array(weight).astype(np.float32), numpy_helper.to_array(bias).astype(np.float32)
    j = offset + rescale.channel
    b += np.float32(rescale.low) * w[:, j].sum(axis=(1, 2))
    w[:, j] /= np.float32(rescale.factor)
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    return model


def identity_conv_after(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy where node `name`'s output reaches its consumers through a 1x1 Conv with identity weights.

    Quantised, that Conv is exact (weights 127 at scale 1/127, the same activation range in and out), and it
    is an int8 Conv that onnxruntime's layout transformer converts to NHWC together with what follows. Without
    it, the int8 nodes that read a float Conv's output (u2netp's Conv_0: the stage-1 Add, the MaxPool after
    it, the last decoder Concat) stayed NCHW with a Transpose of a 320x320 map on either side.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    node = next((n for n in g.node if n.name == name), None)
    if node is None:
        raise ModelBuildError(f"the source has no node {name}: not the model this recipe is for")
    typed = onnx.shape_inference.infer_shapes(model)
    dims = next((vi.type.tensor_type.shape.dim for vi in typed.graph.value_info if vi.name == node.output[0]), [])
    if len(dims) != 4 or not dims[1].dim_value:
        raise ModelBuildError(f"{name}'s output is not a 4-D tensor with a known channel count")
    channels, tensor = dims[1].dim_value, node.output[0]
    bridged = f"{tensor}_identity"
    for other in g.node:
        for i, value in enumerate(other.input):
            if value == tensor:
                other.input[i] = bridged
    weight = np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)
    g.initializer.extend([numpy_helper.from_array(weight, f"{name}_identity_w"),
                          numpy_helper.from_array(np.zeros(channels, np.float32), f"{name}_identity_b")])
    conv = helper.make_node("Conv", [tensor, f"{name}_identity_w", f"{name}_identity_b"], [bridged],
                            name=f"{name}_identity", kernel_shape=[1, 1])
    g.node.insert(list(g.node).index(node) + 1, conv)
    return model


def _check_channel_lows(model: onnx.ModelProto, rescales: Sequence[ChannelRescale],
                        reader: ImageCalibrationReader) -> None:
    """Each rescaled channel stays above its `low` on every calibration image (else Relu would clip it)."""
    import onnxruntime as ort

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    producers = {n.name: n for n in probe.graph.node}
    outputs = [producers[r.producer].output[0] for r in rescales]
    for name in outputs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    lows = [float("inf")] * len(rescales)
    reader.rewind()
    for feed in reader:
        for i, (value, rescale) in enumerate(zip(session.run(outputs, feed), rescales)):
            lows[i] = min(lows[i], float(value[0, rescale.channel].min()))
    reader.rewind()
    for low, rescale in zip(lows, rescales):
        if low < rescale.low:
            raise ModelBuildError(f"{rescale.producer} channel {rescale.channel} falls to {low:.2f} on the calibration "
                                  f"images, below the recipe's low {rescale.low}: not the model this recipe is for")


def fold_shapes(model: onnx.ModelProto, min_opset: int, workdir: Path | None = None) -> onnx.ModelProto:
    """The model at `min_opset` or above, with its constant shape computations folded.

    onnxruntime's quant_pre_process turns u2netp's Shape -> Gather -> Resize chains into constant
    sizes, so every Resize reads one tensor that integer_resize can rewire.
    """
    import onnx.version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="model-build-fold.", dir=workdir) as tmp:
        path = Path(tmp) / "model.onnx"
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < min_opset:
            model = onnx.version_converter.convert_version(model, min_opset)
        onnx.save(model, str(path))
        quant_pre_process(str(path), str(path), skip_symbolic_shape=True)  # symbolic shapes need sympy
        return onnx.load(str(path))


def integer_resize(model: onnx.ModelProto) -> onnx.ModelProto:
    """DequantizeLinear -> Resize -> QuantizeLinear with one scale and zero point -> Resize on uint8.

    onnxruntime drops such Q/DQ pairs around MaxPool or Transpose but keeps them around a linear
    Resize, so IS-Net's 34 upsamplings each dequantise a feature map to float (4x its bytes), resize it
    and quantise it again: about 18 % of isnet-general-tiny's time (docs/performance.md). Bilinear
    interpolation commutes with an affine map that both ends share, so running it on the integers
    changes only the rounding. The graph is rewritten in place order, so the result is deterministic.
    """
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in g.output}
    dropped: set[int] = set()
    renamed: dict[str, str] = {}
    for node in g.node:
        if node.op_type != "Resize" or node.output[0] in graph_outputs:
            continue
        dq, after = producers.get(node.input[0]), consumers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        q = after[0]
        if q.output[0] in graph_outputs or not _same_quantisation(consts, dq, q):
            continue
        node.input[0] = dq.input[0]
        renamed[q.output[0]] = node.output[0]
        dropped.add(id(q))
        if len(consumers[dq.output[0]]) == 1:
            dropped.add(id(dq))
    kept = [n for n in g.node if id(n) not in dropped]
    for n in kept:
        for i, name in enumerate(n.input):
            if name in renamed:
                n.input[i] = renamed[name]
    used = {name for n in kept for name in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(kept)
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.value_info[:]  # stale float types of the rewired tensors; onnxruntime infers them again
    return model


def _same_quantisation(consts: dict[str, np.ndarray], dq: onnx.NodeProto, q: onnx.NodeProto) -> bool:
    """Both nodes have constant, identical scale and zero point (same dtype) and the same axis."""
    if len(dq.input) < 3 or len(q.input) < 3 or any(name not in consts for name in (*dq.input[1:3], *q.input[1:3])):
        return False
    axis = [[a.i for a in n.attribute if a.name == "axis"] for n in (dq, q)]
    dq_scale, dq_zero = consts[dq.input[1]], consts[dq.input[2]]
    q_scale, q_zero = consts[q.input[1]], consts[q.input[2]]
    return (axis[0] == axis[1] and dq_zero.dtype == q_zero.dtype and np.array_equal(dq_scale, q_scale)
            and np.array_equal(dq_zero, q_zero))


def _calibrate_to_cache(src: Path, reader: ImageCalibrationReader, recipe: Recipe, augmented: Path, cache: Path) -> None:
    """Histogram calibration one image at a time with explicit bin counts; save the ranges."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    opts: dict[str, object] = {"num_bins": recipe.num_bins}
    if recipe.num_quantized_bins is not None:
        opts["num_quantized_bins"] = recipe.num_quantized_bins
    if recipe.calibrate_method == "Percentile":
        opts["percentile"] = recipe.percentile
    extra = dict(recipe.extra_options)
    if "CalibTensorRangeSymmetric" in extra:
        opts["symmetric"] = extra["CalibTensorRangeSymmetric"]
    calibrator = create_calibrator(
        src,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),
        augmented_model_path=str(augmented),
        calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
        extra_options=opts,
    )
    for i in range(len(reader)):
        reader.set_range(i, i + 1)
        calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    del calibrator


# --------------------------------------------------------------------------- build


def _atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to path via a temp file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_model(
    name: str,
    source: Path,
    dest: Path,
    recipe: Recipe | None = None,
    calibration_dir: Path = CALIBRATION_DIR,
) -> str:
    """Build the int8 catalogue model ``name`` from ``source`` into ``dest``; return its sha256 hex.

    ``recipe`` defaults to the one in RECIPES. Also writes ``<dest>.sha256`` (the hex digest and a
    newline). Both files are written atomically. Raises ``ModelBuildError`` for an unusable source.
    """
    dest = Path(dest)
    model = load_source(Path(source))
    data = quantize(model, calibration_images(calibration_dir), recipe or RECIPES[name], spec=CATALOGUE[name])
    digest = hashlib.sha256(data).hexdigest()
    # The checksum first: the model file appearing is what tells readers the build is complete.
    _atomic_write(sidecar_of(dest), f"{digest}\n".encode())
    _atomic_write(dest, data)
    return digest


def build_isnet_tiny(source: Path, dest: Path, recipe: Recipe = DEFAULT_RECIPE,
                     calibration_dir: Path = CALIBRATION_DIR) -> str:
    """Build isnet-general-tiny from an IS-Net general-use file (see build_model)."""
    return build_model(TINY, source, dest, recipe, calibration_dir)
