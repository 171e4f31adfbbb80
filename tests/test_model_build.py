"""Tests for app.services.model_build on a tiny IS-Net-shaped graph (offline, fast), and the u2netp-int8
recipe against the bundled u2netp."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from app.services.model_build import (
    CALIBRATION_DIR,
    U2NETP_INT8_RECIPE,
    ChannelRescale,
    ModelBuildError,
    build_isnet_tiny,
    build_model,
    calibration_images,
    fold_shapes,
    identity_conv_after,
    integer_resize,
    load_source,
    preprocess,
    quantize,
    rescale_channel,
    role_nodes,
)
from app.services.model_store import CATALOGUE, U2NETP_INT8, bundled_u2netp, sidecar_of

SIZE = 64
REAL_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "models" / "isnet-general-use.fp16.onnx"


def _tiny_isnet(half: bool, size: int = SIZE, channels: int = 3) -> onnx.ModelProto:
    """A small graph with IS-Net's shape: conv_in, pool, upsample+concat, side outputs.

    With ``half`` it mimics the fp16 export: fp16 weights, Cast after the input,
    Resize wrapped in Casts to float and back, Casts to float on every output.
    """
    rng = np.random.default_rng(0)
    ftype = np.float16 if half else np.float32
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(name: str, x: str, cin: int, cout: int, stride: int = 1, relu: bool = True) -> str:
        w = rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3)).astype(ftype)
        b = rng.normal(0, 0.05, (cout,)).astype(ftype)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        nodes.append(
            helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.out"], name=f"/{name}/Conv",
                             pads=[1, 1, 1, 1], strides=[stride, stride], kernel_shape=[3, 3])
        )
        if not relu:
            return f"{name}.out"
        nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"/{name}/Relu"))
        return f"{name}.relu"

    def sizes_like(name: str, x: str, like: str) -> str:
        for t, v in ((f"{name}.s0", [0]), (f"{name}.s2", [2]), (f"{name}.s4", [4])):
            nodes.append(helper.make_node("Constant", [], [t], name=f"/{name}/{t}",
                                          value=numpy_helper.from_array(np.array(v, np.int64), t)))
        nodes.extend([
            helper.make_node("Shape", [x], [f"{name}.shx"], name=f"/{name}/ShapeX"),
            helper.make_node("Shape", [like], [f"{name}.shl"], name=f"/{name}/ShapeL"),
            helper.make_node("Slice", [f"{name}.shx", f"{name}.s0", f"{name}.s2"], [f"{name}.nc"], name=f"/{name}/SliceX"),
            helper.make_node("Slice", [f"{name}.shl", f"{name}.s2", f"{name}.s4"], [f"{name}.hw"], name=f"/{name}/SliceL"),
            helper.make_node("Concat", [f"{name}.nc", f"{name}.hw"], [f"{name}.sizes"], name=f"/{name}/Concat", axis=0),
        ])
        return f"{name}.sizes"

    def resize(name: str, x: str, like: str) -> str:
        sizes = sizes_like(name, x, like)
        src, out = x, f"{name}.up"
        if half:
            nodes.append(helper.make_node("Cast", [x], [f"{name}.in32"], name=f"/{name}/in_cast", to=TensorProto.FLOAT))
            src, out = f"{name}.in32", f"{name}.up32"
        nodes.append(helper.make_node("Resize", [src, "", "", sizes], [out], name=f"/{name}/Resize",
                                      mode="linear", coordinate_transformation_mode="half_pixel"))
        if half:
            nodes.append(helper.make_node("Cast", [out], [f"{name}.up"], name=f"/{name}/out_cast", to=TensorProto.FLOAT16))
        return f"{name}.up"

    x = "input"
    if half:
        nodes.append(helper.make_node("Cast", ["input"], ["input16"], name="graph_input_cast0", to=TensorProto.FLOAT16))
        x = "input16"
    c0 = conv("conv_in", x, channels, 8, stride=2, relu=False)
    r1 = conv("c1", c0, 8, 8)
    nodes.append(helper.make_node("MaxPool", [r1], ["pool"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]))
    r2 = conv("c2", "pool", 8, 8)
    up = resize("up1", r2, r1)
    nodes.append(helper.make_node("Concat", [up, r1], ["cat"], name="/cat/Concat", axis=1))
    r3 = conv("c3", "cat", 16, 8)
    nodes.append(helper.make_node("Add", [r3, r1], ["d1"], name="/d1/Add"))
    s1 = conv("side1", "d1", 8, 1, relu=False)
    s2 = conv("side2", r2, 8, 1, relu=False)
    m1 = resize("mask1", s1, x)
    m2 = resize("mask2", s2, x)
    nodes.append(helper.make_node("Sigmoid", [m1], ["sig1"], name="/Sigmoid"))
    nodes.append(helper.make_node("Sigmoid", [m2], ["sig2"], name="/Sigmoid_1"))
    outs = ["sig1", "sig2", "d1"]
    names = ["output", "side2", "input.1252"]
    if half:
        for i, (o, n) in enumerate(zip(outs, names)):
            nodes.append(helper.make_node("Cast", [o], [n], name=f"graph_output_cast{i}", to=TensorProto.FLOAT))
    else:
        for o, n in zip(outs, names):
            for node in nodes:
                node.output[:] = [n if v == o else v for v in node.output]
                node.input[:] = [n if v == o else v for v in node.input]
    graph = helper.make_graph(
        nodes, "tiny_isnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
         for n, s in zip(names, ([1, 1, size, size], [1, 1, size, size], [1, 8, size // 2, size // 2]))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _run(path_or_bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    with Image.open(calibration_images()[0]) as im:
        return preprocess(im, (SIZE, SIZE))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("build")
    out = {}
    for kind in ("fp16", "fp32"):
        src = _save(_tiny_isnet(half=kind == "fp16"), d / f"src-{kind}.onnx")
        dest = d / f"tiny-{kind}.onnx"
        out[kind] = (src, dest, build_isnet_tiny(src, dest))
    return out


def test_calibration_images_ship_with_licence() -> None:
    assert len(calibration_images()) >= 4
    assert (CALIBRATION_DIR / "LICENSE").is_file() and (CALIBRATION_DIR / "README.md").is_file()


def test_preprocess_matches_isnet_recipe() -> None:
    im = Image.new("RGB", (10, 20), (100, 200, 50))
    x = preprocess(im, (8, 16))
    assert x.shape == (1, 3, 8, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [100 / 200 - 0.5, 0.5, 50 / 200 - 0.5], atol=1e-6)


@pytest.mark.parametrize("half", [True, False])
def test_load_source_keeps_only_output0_in_fp32(tmp_path: Path, sample: np.ndarray, half: bool) -> None:
    src = _save(_tiny_isnet(half), tmp_path / "src.onnx")
    model = load_source(src)
    assert [o.name for o in model.graph.output] == ["output"]
    assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)
    assert not any(n.op_type == "Cast" for n in model.graph.node)
    assert not any("side2" in n.name for n in model.graph.node)  # dead side branch pruned
    got = _run(model.SerializeToString(), sample)
    want = _run(src, sample)
    np.testing.assert_allclose(got, want, atol=2e-3 if half else 1e-6)


@pytest.mark.parametrize("kind", ["fp16", "fp32"])
def test_build_quantises_and_stays_close(built: dict, sample: np.ndarray, kind: str) -> None:
    src, dest, digest = built[kind]
    model = onnx.load(str(dest))
    assert len(model.graph.output) == 1 and model.graph.output[0].name == "output"
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops or "QLinearConv" in ops
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert sidecar_of(dest).read_text().strip() == digest
    y = _run(dest, sample)
    ref = _run(src, sample)
    assert y.shape == (1, 1, SIZE, SIZE)
    assert 0.0 <= y.min() and y.max() <= 1.0
    assert np.abs(y - ref).mean() < 0.02
    assert np.abs(y - ref).max() < 0.15


def test_built_weights_fit_seven_bits_so_no_cpu_saturates(built: dict) -> None:
    """Without VNNI, onnxruntime adds two u8 x s8 products into a saturating int16: 255 * 64 * 2 fits, 255 * 127 * 2 does not."""
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(built["fp32"][1])).graph.initializer
               if t.data_type == TensorProto.INT8]
    assert weights
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) > 32  # the 7 bits are used, not 6


def test_build_is_deterministic(built: dict, tmp_path: Path) -> None:
    src, dest, digest = built["fp16"]
    again = tmp_path / "again.onnx"
    assert build_isnet_tiny(src, again) == digest
    assert again.read_bytes() == dest.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_sources_raise(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    with pytest.raises(ModelBuildError, match="ONNX"):
        build_isnet_tiny(junk, tmp_path / "out.onnx")
    with pytest.raises(ModelBuildError, match="does not exist"):
        build_isnet_tiny(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    wrong = _save(_tiny_isnet(half=False, channels=1), tmp_path / "gray.onnx")
    with pytest.raises(ModelBuildError, match=r"\[1, 3, H, W\]"):
        build_isnet_tiny(wrong, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="set RUN_SLOW=1 to build from the real model")
@pytest.mark.skipif(not REAL_SOURCE.is_file(), reason="../shared/models/isnet-general-use.fp16.onnx absent")
def test_build_from_real_isnet(tmp_path: Path) -> None:
    dest = tmp_path / "isnet-general-tiny.onnx"
    digest = build_isnet_tiny(REAL_SOURCE, dest)
    model = onnx.load(str(dest))
    assert len(model.graph.output) == 1
    assert dest.stat().st_size < 60_000_000
    assert sidecar_of(dest).read_text().strip() == digest


def _qdq_resize(out_scale: float) -> onnx.ModelProto:
    """input -> Q -> DQ -> Resize (linear, x2) -> Q(out_scale) -> DQ -> output."""
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s_in"),
        numpy_helper.from_array(np.array(3, np.uint8), "z_in"),
        numpy_helper.from_array(np.array(out_scale, np.float32), "s_out"),
        numpy_helper.from_array(np.array(3, np.uint8), "z_out"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s_in", "z_in"], ["q0"], name="q0"),
        helper.make_node("DequantizeLinear", ["q0", "s_in", "z_in"], ["dq0"], name="dq0"),
        helper.make_node("Resize", ["dq0", "", "scales"], ["up"], name="resize", mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("QuantizeLinear", ["up", "s_out", "z_out"], ["q1"], name="q1"),
        helper.make_node("DequantizeLinear", ["q1", "s_out", "z_out"], ["output"], name="dq1"),
    ]
    graph = helper.make_graph(
        nodes, "qdq_resize",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_integer_resize_runs_resize_on_uint8_and_matches_within_rounding() -> None:
    x = np.random.default_rng(1).random((1, 4, 8, 8), dtype=np.float32) * 4
    model = _qdq_resize(0.02)
    want = _run(model.SerializeToString(), x)
    rewritten = integer_resize(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(rewritten)
    resize = next(n for n in rewritten.graph.node if n.op_type == "Resize")
    assert resize.input[0] == "q0"  # the uint8 tensor, no DequantizeLinear in between
    assert [n.op_type for n in rewritten.graph.node].count("QuantizeLinear") == 1
    got = _run(rewritten.SerializeToString(), x)
    assert np.abs(got - want).max() <= 0.02 + 1e-6  # at most one quantisation step of rounding


def test_integer_resize_leaves_differently_quantised_resize_alone() -> None:
    model = _qdq_resize(0.05)
    rewritten = integer_resize(onnx.ModelProto.FromString(model.SerializeToString()))
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


def test_build_has_no_float_resize_between_equal_qdq(built: dict) -> None:
    _, dest, _ = built["fp32"]
    model = onnx.load(str(dest))
    producers = {o: n for n in model.graph.node for o in n.output}
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    quantised = [n for n in resizes if producers.get(n.input[0]) is not None
                 and producers[n.input[0]].op_type == "QuantizeLinear"]
    assert quantised, "the tiny graph's inner Resize should run on uint8"


# --------------------------------------------------------------------------- u2netp-int8

# The synthetic graph's stand-ins for the real recipe: c2's channel 3 made near-constant (as u2netp's Conv_765
# channel 14: a big bias, small weights) and read by c3, through Relu, Resize and Concat, with large weights
# that see only its variations (a [1,-2,1] x [1,-2,1] kernel: rows and columns sum to zero, so the folded
# constant changes c3's border only at its corners); c1 kept float.
CONSTANT_CHANNEL = 3
SYNTHETIC_RESCALE = ChannelRescale("/c2/Conv", CONSTANT_CHANNEL, "/c3/Conv", low=195.0, factor=1.0)
SYNTHETIC_RECIPE = replace(U2NETP_INT8_RECIPE, exclude_nodes=("/c1/Conv",), rescaled_channels=(SYNTHETIC_RESCALE,),
                           identity_conv_after=("/conv_in/Conv",))


def _with_constant_channel(model: onnx.ModelProto, value: float = 200.0) -> onnx.ModelProto:
    """c2's output channel CONSTANT_CHANNEL about `value` (+- 2 on the calibration photos), read by c3 with
    weights of 1-4 where the others' are about 0.1."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    w, b, w3 = (numpy_helper.to_array(inits[name]).copy() for name in ("c2.w", "c2.b", "c3.w"))
    w[CONSTANT_CHANNEL] *= 0.2
    b[CONSTANT_CHANNEL] = value
    signs = np.random.default_rng(1).choice([-1.0, 1.0], w3.shape[0])
    w3[:, CONSTANT_CHANNEL] = signs[:, None, None] * np.outer([1, -2, 1], [1, -2, 1])
    for name, array in (("c2.w", w), ("c2.b", b), ("c3.w", w3)):
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    return model


@pytest.fixture(scope="module")
def u2netp_built(tmp_path_factory) -> tuple[Path, Path, str]:
    d = tmp_path_factory.mktemp("u2netp-int8")
    src = _save(_with_constant_channel(_tiny_isnet(half=False)), d / "src.onnx")
    dest = d / "u2netp-int8.onnx"
    return src, dest, build_model(U2NETP_INT8, src, dest, SYNTHETIC_RECIPE)


def _outputs(model: onnx.ModelProto, x: np.ndarray, names: tuple[str, ...]) -> list[np.ndarray]:
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(list(names), {"input": x})


def test_rescale_channel_is_exact_inside_the_consumers_border(sample, tmp_path: Path) -> None:
    model = load_source(_save(_with_constant_channel(_tiny_isnet(half=False)), tmp_path / "src.onnx"))
    rescaled = rescale_channel(model, SYNTHETIC_RESCALE)
    (c2, c3), (c2r, c3r) = _outputs(model, sample, ("c2.relu", "c3.out")), _outputs(rescaled, sample, ("c2.relu", "c3.out"))
    assert c2[0, CONSTANT_CHANNEL].min() > SYNTHETIC_RESCALE.low
    np.testing.assert_allclose(c2r[0, CONSTANT_CHANNEL], c2[0, CONSTANT_CHANNEL] - 195.0, atol=1e-4)
    np.testing.assert_array_equal(np.delete(c2r, CONSTANT_CHANNEL, axis=1), np.delete(c2, CONSTANT_CHANNEL, axis=1))
    np.testing.assert_allclose(c3r[..., 1:-1, :], c3[..., 1:-1, :], atol=2e-3)
    np.testing.assert_allclose(c3r[..., :, 1:-1], c3[..., :, 1:-1], atol=2e-3)
    # In the corners the consumer's zero padding cut taps of the constant, which the folded bias now adds.
    assert np.abs(c3r[..., 0, 0] - c3[..., 0, 0]).max() > 1


def test_rescaling_the_constant_channel_makes_the_int8_build_closer(u2netp_built, sample, tmp_path: Path) -> None:
    src, dest, _ = u2netp_built
    plain = tmp_path / "plain.onnx"
    build_model(U2NETP_INT8, src, plain, replace(SYNTHETIC_RECIPE, rescaled_channels=()))
    with Image.open(calibration_images()[1]) as im:
        x = preprocess(im, (SIZE, SIZE), CATALOGUE[U2NETP_INT8])
    ref = _run(src, x)
    # One shared uint8 step for c2's 8 channels (up to ~200 with the constant one) and for c3's weights.
    assert np.abs(_run(dest, x) - ref).mean() * 3 < np.abs(_run(plain, x) - ref).mean()


def test_rescale_refuses_a_channel_that_falls_below_its_low(tmp_path: Path) -> None:
    src = _save(_with_constant_channel(_tiny_isnet(half=False), value=100.0), tmp_path / "src.onnx")
    with pytest.raises(ModelBuildError, match="channel 3 falls to .* below the recipe's low 195.0"):
        build_model(U2NETP_INT8, src, tmp_path / "out.onnx", SYNTHETIC_RECIPE)
    assert not (tmp_path / "out.onnx").exists()


def test_rescale_refuses_a_path_that_does_not_commute(tmp_path: Path) -> None:
    model = load_source(_save(_tiny_isnet(half=False), tmp_path / "src.onnx"))
    with pytest.raises(ModelBuildError, match="Add.*does not commute"):
        rescale_channel(model, ChannelRescale("/c3/Conv", 0, "/side1/Conv", low=0.0, factor=2.0))


def test_identity_conv_after_a_float_conv_changes_no_output(tmp_path: Path, sample) -> None:
    model = load_source(_save(_tiny_isnet(half=False), tmp_path / "src.onnx"))
    bridged = identity_conv_after(model, "/conv_in/Conv")
    assert [n.op_type for n in bridged.graph.node].count("Conv") == [n.op_type for n in model.graph.node].count("Conv") + 1
    recipe = replace(SYNTHETIC_RECIPE, exclude_nodes=(), rescaled_channels=(), identity_conv_after=(), min_opset=None)
    images = calibration_images()[:2]
    plain = quantize(model, images, recipe, spec=CATALOGUE[U2NETP_INT8])
    with_identity = quantize(bridged, images, recipe, spec=CATALOGUE[U2NETP_INT8])
    np.testing.assert_array_equal(_run(with_identity, sample), _run(plain, sample))


def test_preprocess_uses_the_models_own_mean_and_std() -> None:
    im = Image.new("RGB", (4, 4), (255, 0, 128))
    x = preprocess(im, (4, 4), CATALOGUE[U2NETP_INT8])
    # model_io.model_input divides by the image's own maximum, then applies ImageNet's mean and std.
    np.testing.assert_allclose(x[0, :, 0, 0], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225],
                               atol=1e-5)


def test_u2netp_int8_build_folds_shapes_and_keeps_its_float_nodes_float(u2netp_built, sample) -> None:
    src, dest, digest = u2netp_built
    model = onnx.load(str(dest))
    assert sidecar_of(dest).read_text().strip() == digest == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert not any(n.op_type == "Shape" for n in model.graph.node), "Resize sizes should be folded to constants"
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name for t in model.graph.initializer}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert convs["/c1/Conv"].input[1] in inits, "a recipe node must keep its float weights"
    for name in ("/c2/Conv", "/c3/Conv", "/conv_in/Conv_identity"):
        assert producers[convs[name].input[1]].op_type == "DequantizeLinear", f"{name} is int8"
    first = role_nodes(model, ("first_conv",))[0]
    assert convs[first].input[1] in inits, "u2netp-int8 keeps the first Conv in float"
    with Image.open(calibration_images()[0]) as im:
        x = preprocess(im, (SIZE, SIZE), CATALOGUE[U2NETP_INT8])
    y, ref = _run(dest, x), _run(src, x)
    assert y.shape == (1, 1, SIZE, SIZE)
    assert np.abs(y - ref).mean() < 0.03  # the synthetic mask is saturated (0 or 1) almost everywhere


def test_u2netp_int8_build_is_deterministic(u2netp_built, tmp_path: Path) -> None:
    src, dest, digest = u2netp_built
    again = tmp_path / "again.onnx"
    assert build_model(U2NETP_INT8, src, again, SYNTHETIC_RECIPE) == digest
    assert again.read_bytes() == dest.read_bytes()


def test_u2netp_int8_recipe_refuses_a_graph_without_its_nodes(tmp_path: Path) -> None:
    src = _save(_tiny_isnet(half=False), tmp_path / "src.onnx")
    with pytest.raises(ModelBuildError, match="has no node .*Conv_1026.*not the model this recipe is for"):
        build_model(U2NETP_INT8, src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif(bundled_u2netp() is None, reason="the bundled u2netp (requirements-models.txt) is not installed")
def test_u2netp_int8_recipe_names_nodes_of_the_bundled_u2netp() -> None:
    model = fold_shapes(load_source(bundled_u2netp()), U2NETP_INT8_RECIPE.min_opset)
    names = {n.name for n in model.graph.node}
    assert set(U2NETP_INT8_RECIPE.exclude_nodes) <= names
    rescaled = U2NETP_INT8_RECIPE.rescaled_channels
    assert {r.producer for r in rescaled} | {r.consumer for r in rescaled} | set(U2NETP_INT8_RECIPE.identity_conv_after) <= names
    assert role_nodes(model, U2NETP_INT8_RECIPE.exclude) == ["Conv_0", "Conv_1047", "Sigmoid_1048"]
    assert not any(n.op_type == "Shape" for n in model.graph.node)


@pytest.mark.skipif(os.environ.get("RUN_SLOW") != "1", reason="set RUN_SLOW=1 to build u2netp-int8 twice")
@pytest.mark.skipif(bundled_u2netp() is None, reason="the bundled u2netp (requirements-models.txt) is not installed")
def test_u2netp_int8_from_the_bundled_file_is_deterministic_and_close(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "u2netp-int8.onnx", tmp_path / "b" / "u2netp-int8.onnx"
    digest = build_model(U2NETP_INT8, bundled_u2netp(), first)
    assert build_model(U2NETP_INT8, bundled_u2netp(), second) == digest
    assert first.read_bytes() == second.read_bytes()
    with Image.open(calibration_images()[0]) as im:
        x = preprocess(im, (320, 320), CATALOGUE[U2NETP_INT8])
    ref = ort.InferenceSession(str(bundled_u2netp()), providers=["CPUExecutionProvider"]).run(None, {"input.1": x})[0]
    y = ort.InferenceSession(str(first), providers=["CPUExecutionProvider"]).run(None, {"input.1": x})[0]
    a, b = y[0, 0] > 0.5, ref[0, 0] > 0.5
    assert (a & b).sum() / max((a | b).sum(), 1) > 0.97
