"""The one image pipeline behind the HTTP endpoints and the batch command.

bytes -> imaging.open_checked (header, decode cost) -> the inference slot, held from here to the encoded
bytes: imaging.decode (at most max_dimension on the long side and max_megapixels in all) -> service.mask ->
matting.refine (the mask made an alpha matte guided by the output-size photo) -> region of interest ->
matting.decontaminate (foreground colours in soft pixels) -> crop -> scale / position on the canvas -> hard
edges -> cut out / fill -> imaging.encode (or a zip of the colour image and the mask).
Option values arrive as strings (form fields, command-line flags) and are validated here, so both
front ends give the same messages.
"""
from __future__ import annotations

import io
import re
import zipfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Callable, Protocol

from PIL import Image

from app import colors, heap, imaging, matting
from app.config import Config
from app.errors import BadRequest

OUTPUT_FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
    "jpg": ("JPEG", "image/jpeg", "jpg"),
}
FORMATS: tuple[str, ...] = ("png", "webp", "jpeg", "jpg", "auto", "zip")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_LENGTH = re.compile(r"(\d+(?:\.\d+)?)(px|%)?")
MAX_MARGIN_PX = 1000
MIN_SCALE, MIN_MEGAPIXELS, MAX_MEGAPIXELS = 0.1, 0.0001, 1000.0
NO_MARGIN: imaging.Margin = ((0.0, "px"),) * 4


class MaskService(Protocol):
    def slot(self) -> AbstractContextManager[int]: ...
    def mask(self, model_rgb: Image.Image, size: tuple[int, int]) -> Image.Image: ...


@dataclass(frozen=True)
class Options:
    """What the caller asked for; None means the endpoint's default."""

    fmt: str | None = None
    only_mask: bool = False
    crop: bool = False
    crop_margin: imaging.Margin = NO_MARGIN
    color: tuple[int, int, int, int] | None = None
    max_dimension: int | None = None
    max_megapixels: float | None = None
    roi: tuple[imaging.Length, imaging.Length, imaging.Length, imaging.Length] | None = None
    semitransparency: bool = True
    scale: float | None = None
    position: tuple[float, float] | None = None
    refine: bool = True
    decontaminate: bool = True


@dataclass(frozen=True)
class Result:
    """The encoded answer, its size, and the subject's box in it (left, top, width, height; None if empty)."""

    payload: bytes
    mimetype: str
    filename: str
    size: tuple[int, int] = (0, 0)
    foreground: tuple[int, int, int, int] | None = None


def parse_format(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    value = text.strip().lower()
    if value not in FORMATS:
        raise BadRequest(f"format {text[:20]!r} is not supported; use one of: png, webp, jpeg, auto (PNG where "
                         "the result has transparency, else JPEG) or zip (color.jpg and alpha.png)")
    return "jpeg" if value == "jpg" else value


def parse_bool(name: str, text: str | None) -> bool:
    value = (text or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, not {text[:20]!r}")


def _lengths(name: str, text: str, counts: tuple[int, ...], example: str) -> list[imaging.Length]:
    """Space-separated lengths, each a number with px (the default) or %."""
    parts = text.split()
    lengths = [_LENGTH.fullmatch(part.lower()) for part in parts]
    if len(parts) not in counts or not all(lengths):
        raise BadRequest(f"{name} {text[:40]!r} is not understood; {example}")
    return [(float(match.group(1)), match.group(2) or "px") for match in lengths if match]


def parse_margin(text: str | None) -> imaging.Margin:
    """1, 2 or 4 lengths as in CSS (all; top/bottom left/right; top right bottom left), each '20', '20px'
    or '10%' (of the subject's size), up to 1000 px or 100 %."""
    if text is None or not text.strip():
        return NO_MARGIN
    sides = _lengths("crop_margin", text, (1, 2, 4), "use pixels ('20' or '20px') or a percentage ('10%'), "
                     "one value for all sides, two (top/bottom left/right) or four (top right bottom left)")
    for amount, unit in sides:
        if amount > (100 if unit == "%" else MAX_MARGIN_PX):
            raise BadRequest(f"crop_margin is at most {MAX_MARGIN_PX}px or 100%")
    if len(sides) == 1:
        sides *= 4
    elif len(sides) == 2:
        sides *= 2
    return tuple(sides)  # type: ignore[return-value]


def parse_roi(text: str | None) -> tuple[imaging.Length, imaging.Length, imaging.Length, imaging.Length] | None:
    """'x1 y1 x2 y2', each in px (the default) or % of the image: only the subject inside is kept."""
    if text is None or not text.strip():
        return None
    corners = _lengths("roi", text, (4,), "use four values 'x1 y1 x2 y2' in px or %, e.g. '0% 0% 100% 100%'")
    if any(unit == "%" and amount > 100 for amount, unit in corners):
        raise BadRequest("roi percentages are at most 100%")
    for start, end in ((corners[0], corners[2]), (corners[1], corners[3])):
        if start[1] == end[1] and start[0] >= end[0]:
            raise BadRequest(f"roi {text[:40]!r} is empty; x1 < x2 and y1 < y2 are needed")
    if corners == [(0.0, "px"), (0.0, "px"), (100.0, "%"), (100.0, "%")] or \
            corners == [(0.0, "%"), (0.0, "%"), (100.0, "%"), (100.0, "%")]:
        return None  # the whole image: remove.bg's default
    return tuple(corners)  # type: ignore[return-value]


def _percent(name: str, text: str, low: float) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if not match or not low <= float(match.group(1)) <= 100:
        raise BadRequest(f"{name} {text[:20]!r} is not understood; use a percentage from {low:g}% to 100%")
    return float(match.group(1)) / 100


def parse_scale(text: str | None) -> float | None:
    """'original' (or nothing) or '10%'..'100%': the subject's larger side relative to the canvas."""
    if text is None or not text.strip() or text.strip().lower() == "original":
        return None
    try:
        return _percent("scale", text, MIN_SCALE * 100)
    except BadRequest:
        raise BadRequest(f"scale {text[:20]!r} is not understood; use 'original' or 10% to 100%") from None


def parse_position(text: str | None) -> tuple[float, float] | None:
    """'original' (or nothing), 'center', or one or two percentages (horizontal, vertical) of the free space."""
    if text is None or not text.strip() or text.strip().lower() == "original":
        return None
    if text.strip().lower() == "center":
        return 0.5, 0.5
    parts = text.split()
    try:
        if len(parts) not in (1, 2):
            raise BadRequest("wrong count")
        values = [_percent("position", part, 0) for part in parts]
    except BadRequest:
        raise BadRequest(f"position {text[:20]!r} is not understood; use 'original', 'center', or one or two "
                         "percentages (horizontal vertical) such as '50%' or '0% 100%'") from None
    return (values[0], values[-1])


def parse_megapixels(text: str | None) -> float | None:
    """A cap on the result's pixel count in megapixels (1 MP = 1,000,000 pixels), on top of max_dimension."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text.strip())
    except ValueError:
        raise BadRequest(f"max_megapixels must be a number such as 0.25 or 4, not {text[:20]!r}") from None
    if not MIN_MEGAPIXELS <= value <= MAX_MEGAPIXELS:
        raise BadRequest(f"max_megapixels must be between {MIN_MEGAPIXELS:g} and {MAX_MEGAPIXELS:g}")
    return value


def parse_max_dimension(text: str | None, server_max: int) -> int | None:
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"max_dimension must be a whole number of pixels, not {text[:20]!r}") from None
    if not 1 <= value <= server_max:
        raise BadRequest(f"max_dimension must be between 1 and the server's limit, {server_max}")
    return value


def parse_color(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None or not text.strip():
        return None
    try:
        return colors.parse_color(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


Source = bytes | BinaryIO


def _checked(source: Source, max_dimension: int, config: Config) -> imaging.Header:
    """The header check: format, pixel count and estimated decode memory, before anything is decoded."""
    return imaging.open_checked(source, config.max_pixels, config.max_decode_bytes, max_dimension)


def _output_side(size: tuple[int, int], options: Options, config: Config) -> int:
    """The long side of the result: the request's (or the server's) max_dimension, lowered by max_megapixels."""
    side = options.max_dimension or config.max_dimension
    if options.max_megapixels is not None:
        side = min(side, imaging.megapixel_side(size, int(options.max_megapixels * 1_000_000)))
    return side


def _roi_box(roi: tuple[imaging.Length, ...], size: tuple[int, int], original: tuple[int, int]) -> imaging.Box:
    """roi corners (px of the original image, or %) -> a box in the output image, clamped; 400 when empty."""
    factor = max(size) / max(original)
    values = [amount / 100 * size[index % 2] if unit == "%" else amount * factor
              for index, (amount, unit) in enumerate(roi)]
    left, top = max(0, round(values[0])), max(0, round(values[1]))
    right, bottom = min(size[0], round(values[2])), min(size[1], round(values[3]))
    if right <= left or bottom <= top:
        raise BadRequest(f"roi {' '.join(f'{a:g}{u}' for a, u in roi)} leaves no area inside the "
                         f"{original[0]}x{original[1]} image; x1 < x2 and y1 < y2 are needed")
    return left, top, right, bottom


Finish = Callable[[Image.Image, Image.Image, Image.Image | None], Result]


def _in_slot(
    source: Source,
    stem: str,
    options: Options,
    service: MaskService,
    config: Config,
    finish: Finish,
    background: imaging.Header | None = None,
) -> Result:
    """Decode, mask, edges and framing, then the mask alone (only_mask) or finish(framed RGB, its alpha
    including the upload's own transparency, backdrop) -> the encoded Result, all inside the inference slot.

    The header checks run first, without waiting for the model; decoding (of the photo and of a checked
    background image) waits for the inference slot, so that concurrent requests never hold more than one
    decode between them, and each decode's full-size raster is gone before the model runs. The edge stage
    and the output (framing, compositing, encoding) run in the slot too, and every image is released
    before it is left: the process holds one request's images at a time. Encoding after the slot let a
    12 MP cutout (its RGBA copy and PNG, ~110 MB) overlap the next request's decode and inference:
    470-498 MB whole-server with 8 clients at MAX_DIMENSION=4096, 341 MB now (docs/performance.md, Edges).
    The mask is refined before the upload's own transparency and the roi are applied (they are exact, not estimates);
    colours are estimated against the final alpha, and not at all for the mask alone. The edge stage's
    temporaries come from the heap (heap.scratch): as fresh mappings their page faults cost more than its
    arithmetic.
    """
    header = _checked(source, options.max_dimension or config.max_dimension, config)
    max_dimension = _output_side(header.size, options, config)
    with service.slot() as input_size:
        decoded = imaging.decode(header, max_dimension, input_size)
        model_rgb, decoded.model_rgb = decoded.model_rgb, None
        mask = service.mask(model_rgb, decoded.size)
        del model_rgb
        with heap.scratch():
            if options.refine:
                mask = matting.refine(decoded.rgb, mask)
            alpha = imaging.combine_alpha(mask, decoded.alpha)
            del mask
            if options.roi is not None:
                alpha = imaging.keep_region(alpha, _roi_box(options.roi, decoded.size, header.size))
            if options.decontaminate and not options.only_mask:
                decoded.rgb = matting.decontaminate(decoded.rgb, alpha)
        backdrop = imaging.decode(background, config.max_dimension).rgb if background is not None else None
        rgb, decoded = decoded.rgb, None
        rgb, alpha = _framed(rgb, alpha, options)
        if options.only_mask:
            result = _result(alpha, alpha, rgb, options.fmt or "png", "mask", stem)
        else:
            result = finish(rgb, alpha, backdrop)
        del rgb, alpha, backdrop
    return result


def _framed(rgb: Image.Image, alpha: Image.Image, options: Options) -> tuple[Image.Image, Image.Image]:
    """crop (with its margin), scale / position the subject on the canvas, then (last, as scaling makes soft
    edges) hard edges for semitransparency=false."""
    if options.crop:
        box = imaging.subject_box(alpha, options.crop_margin)
        if box is not None:
            rgb, alpha = rgb.crop(box), alpha.crop(box)
    if options.scale is not None or options.position is not None:
        box = imaging.subject_box(alpha)
        if box is not None:
            rgb, alpha = imaging.place(rgb, alpha, box, options.scale, options.position or (0.5, 0.5))
    if not options.semitransparency:
        alpha = imaging.hard_alpha(alpha)
    return rgb, alpha


def _foreground(alpha: Image.Image) -> tuple[int, int, int, int] | None:
    box = imaging.subject_box(alpha)
    return None if box is None else (box[0], box[1], box[2] - box[0], box[3] - box[1])


def _zip(color: Image.Image, alpha: Image.Image) -> bytes:
    """remove.bg's zip: color.jpg (opaque RGB) and alpha.png (greyscale, white = foreground)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("color.jpg", imaging.encode(color.convert("RGB"), "JPEG"))
        archive.writestr("alpha.png", imaging.encode(alpha, "PNG"))
    return buffer.getvalue()


def _result(image: Image.Image, alpha: Image.Image, color: Image.Image, fmt: str, prefix: str, stem: str) -> Result:
    """Encode `image` as fmt; zip packs `color` and `alpha`; auto is PNG when anything is transparent."""
    foreground = _foreground(alpha)
    if fmt == "zip":
        return Result(_zip(color, alpha), "application/zip", f"{prefix}_{stem}.zip", image.size, foreground)
    if fmt == "auto":
        transparent = image.mode != "RGB" and (image.mode == "L" or image.getchannel("A").getextrema()[0] < 255)
        fmt = "png" if transparent else "jpeg"
    pil_format, mimetype, extension = OUTPUT_FORMATS[fmt]
    return Result(imaging.encode(image, pil_format), mimetype, f"{prefix}_{stem}.{extension}", image.size, foreground)


def remove_background(data: Source, stem: str, options: Options, service: MaskService, config: Config) -> Result:
    """The cutout (PNG by default), or the mask alone with only_mask."""
    def finish(rgb: Image.Image, alpha: Image.Image, _backdrop: Image.Image | None) -> Result:
        return _result(imaging.cutout(rgb, alpha), alpha, rgb, options.fmt or "png", "nobg", stem)

    return _in_slot(data, stem, options, service, config, finish)


def change_background(
    data: Source,
    stem: str,
    options: Options,
    service: MaskService,
    config: Config,
    background: Source | None = None,
) -> Result:
    """The subject over a colour (default white, JPEG) or over a background image scaled to cover."""
    if background is not None and options.color is not None:
        raise BadRequest("send either color (or bg_color) or bg_image, not both")
    color = options.color or colors.WHITE
    translucent = background is None and color[3] < 255
    if translucent and options.fmt == "jpeg":
        raise BadRequest("a colour with alpha below 255 needs format png or webp; JPEG has no transparency")
    checked_background = _checked(background, config.max_dimension, config) if background is not None else None

    def finish(rgb: Image.Image, alpha: Image.Image, backdrop: Image.Image | None) -> Result:
        under = imaging.cover(backdrop, rgb.size) if backdrop is not None else imaging.solid(rgb.size, color)
        composed = imaging.over_background(rgb, alpha, under)
        del under
        flat = composed.convert("RGB")
        fmt = options.fmt or ("png" if translucent else "jpeg")
        return _result(composed if translucent else flat, alpha, flat, fmt, "colored", stem)

    return _in_slot(data, stem, options, service, config, finish, checked_background)
