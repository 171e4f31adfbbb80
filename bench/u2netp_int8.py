"""Where int8 hurts u2netp, and what each float node buys: the evidence behind model_build.U2NETP_INT8_RECIPE.

    .venv/bin/python bench/u2netp_int8.py [--groups 12] [--nodes Conv_743-Conv_824] [--variants]

Every variant is built by app.services.model_build.quantize from the bundled u2netp (the recipe's
MinMax ranges, calibrated once on app/model_build_calibration/ and cached) with a different set of
nodes kept in float, and scored with the service's own session (create_session, 2 threads, arena off),
pre- and post-processing (model_io) against rembg's u2netp masks (fixtures/masks/NAME.u2netp.png):
IoU of alpha > 127, mean and min over the fixture photos. Fidelity only: speed and memory of the shipped
build come from bench/compare_rembg.py.

--groups N   quantise one slice of the graph at a time (the Convs split into N runs in graph order,
             everything else float): which part of the network loses the masks.
--nodes A-B  the same one node at a time, for the nodes from A to B in graph order.
--variants   the float sets of the recipe before channel rescaling (both decoder chains in float) and
             after it (rescale_channel), each part removed in turn, and 7-bit weights on it.
--exact      with --variants: also score each with graph optimisation off (exact int8 arithmetic).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import fixture_images, reference_mask, score  # noqa: E402
from fidelity import exact_session  # noqa: E402

from app import model_io  # noqa: E402
from app.services import model_build  # noqa: E402
from app.services.isnet_tiny_service import create_session  # noqa: E402
from app.services.model_store import CATALOGUE, U2NETP_INT8, bundled_u2netp  # noqa: E402

SPEC = CATALOGUE[U2NETP_INT8]
RECIPE = model_build.U2NETP_INT8_RECIPE
CHAIN_787 = ("Conv_765", "Relu_766", "Resize_785", "Concat_786", "Conv_787")
CHAIN_920 = ("Conv_898", "Relu_899", "Resize_918", "Concat_919", "Conv_920")
# label: (in float, channels rescaled?, 7-bit weights?): the recipe of 677abba2 (both decoder chains in float),
# the current one built up part by part, and 7-bit weights (isnet-general-tiny's reduce_range) on it.
VARIANTS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "the mask head only": ((), False, False),
    "+ Conv_787 and Concat_786": (("Conv_787", "Concat_786"), False, False),
    "+ the Conv_765 -> Conv_787 chain": (CHAIN_787, False, False),
    "+ the chain, first Conv": (CHAIN_787 + ("first_conv",), False, False),
    "+ both chains, first Conv, Conv_1026": (CHAIN_787 + CHAIN_920 + ("first_conv", "Conv_1026"), False, False),
    "+ both chains, first Conv, Conv_1026, Conv_44 (the recipe of 677abba2)": (
        CHAIN_787 + CHAIN_920 + ("first_conv", "Conv_1026", "Conv_44"), False, False),
    "channels rescaled: the mask head only": ((), True, False),
    "channels rescaled: + first Conv": (("first_conv",), True, False),
    "channels rescaled: + first Conv, Conv_1026": (("first_conv", "Conv_1026"), True, False),
    "channels rescaled: + first Conv, Conv_1026, Conv_44 (the recipe)": (("first_conv", "Conv_1026", "Conv_44"), True, False),
    "channels rescaled: + Conv_1026, Conv_44 (first Conv int8)": (("Conv_1026", "Conv_44"), True, False),
    "7-bit weights: the recipe": (("first_conv", "Conv_1026", "Conv_44"), True, True),
    "7-bit weights: the recipe with the first Conv int8": (("Conv_1026", "Conv_44"), True, True),
}


class Scorer:
    """The fixture photos at the model's input, and their rembg u2netp masks."""

    def __init__(self) -> None:
        self.items = []
        for photo in fixture_images():
            ref = reference_mask(photo, "u2netp")
            if ref is None:
                continue
            with Image.open(photo) as im:
                resized = im.convert("RGB").resize((SPEC.input_size, SPEC.input_size), Image.Resampling.LANCZOS)
                self.items.append((im.size, model_io.model_input(resized, SPEC.mean, SPEC.std), ref))

    def __call__(self, path: Path, exact: bool = False) -> tuple[float, float]:
        """IoU mean and min with the service's session, or (exact) with graph optimisation off: each QDQ triple
        in float, what a CPU with exact int8 kernels (VNNI) computes (docs/models.md, 7-bit weights)."""
        session = exact_session(str(path), 2) if exact else create_session(str(path), 2, False)
        ious = []
        for size, tensor, ref in self.items:
            out = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: tensor})[0]
            ious.append(score(model_io.mask_from_output(np.asarray(out), size), ref)[0])
        return statistics.mean(ious), min(ious)


def build(model, names: tuple[str, ...], work: Path, cache: Path, rescale: bool = True, seven_bit: bool = False) -> Path:
    """model_build.quantize with the recipe's ranges and the mask head plus `names` (roles or nodes) in float;
    rescale=False leaves out the recipe's channel rescaling (and its cached ranges belong to that graph),
    seven_bit builds 7-bit weights (reduce_range)."""
    roles = tuple(n for n in names if n == "first_conv")
    recipe = replace(RECIPE, exclude=("mask_conv", "mask_sigmoid") + roles,
                     exclude_nodes=tuple(n for n in names if n != "first_conv"), min_opset=None,
                     rescaled_channels=RECIPE.rescaled_channels if rescale else (), reduce_range=seven_bit)
    path = work / "variant.onnx"
    cache = cache.with_name(f"{cache.stem}-{'rescaled' if rescale else 'plain'}.json")
    path.write_bytes(model_build.quantize(model, model_build.calibration_images(), recipe, work, cache, SPEC))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=0)
    parser.add_argument("--nodes", default="")
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--exact", action="store_true", help="--variants: also score with exact int8 arithmetic")
    args = parser.parse_args()
    source = bundled_u2netp()
    if source is None:
        print("SKIPPED: the bundled u2netp (requirements-models.txt) is not installed")
        return 2
    model = model_build.fold_shapes(model_build.load_source(source), RECIPE.min_opset)
    order = [n.name for n in model.graph.node]
    head = model_build.role_nodes(model, ("mask_conv", "mask_sigmoid"))
    scorer = Scorer()
    print(f"u2netp int8 variants, IoU vs rembg's u2netp masks on {len(scorer.items)} photos "
          f"(mean / min); MinMax ranges, service session, 2 threads\n")
    with tempfile.TemporaryDirectory(prefix="u2netp-int8-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "ranges.json"
        if args.groups:
            convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
            print("| quantised (all else float) | IoU mean / min |\n| --- | --- |")
            for k in range(args.groups):
                part = convs[len(convs) * k // args.groups:len(convs) * (k + 1) // args.groups]
                lo, hi = order.index(part[0]), order.index(part[-1])
                floats = tuple(n for i, n in enumerate(order) if not lo <= i <= hi and n not in head)
                mean, low = scorer(build(model, floats, work, cache))
                print(f"| {part[0]} .. {part[-1]} ({hi - lo + 1} nodes) | {mean:.4f} / {low:.4f} |", flush=True)
        if args.nodes:
            first, last = args.nodes.split("-")
            print("| quantised alone | IoU mean / min |\n| --- | --- |")
            for name in order[order.index(first):order.index(last) + 1]:
                if name.startswith("Relu"):
                    continue  # fused into the Conv before it
                floats = tuple(n for n in order if n != name and n not in head)
                mean, low = scorer(build(model, floats, work, cache))
                print(f"| {name} | {mean:.4f} / {low:.4f} |", flush=True)
        if args.variants:
            print("| in float | IoU mean / min |" + (" exact arithmetic |\n| --- | --- | --- |" if args.exact else "\n| --- | --- |"))
            for label, (names, rescale, seven_bit) in VARIANTS.items():
                path = build(model, names, work, cache, rescale, seven_bit)
                mean, low = scorer(path)
                exact = " {:.4f} / {:.4f} |".format(*scorer(path, exact=True)) if args.exact else ""
                print(f"| {label} | {mean:.4f} / {low:.4f} |{exact}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
