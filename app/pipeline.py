"""The one image pipeline behind the HTTP endpoints and the batch command.

bytes -> imaging.open_checked (header, decode cost) -> imaging.decode (inside the slot) -> service.mask
-> crop / cut out / fill -> imaging.encode.
Option values arrive as strings (form fields, command-line flags) and are validated here, so both
front ends give the same messages.
"""
from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from PIL import Image

from app import colors, imaging
from app.config import Config
from app.errors import BadRequest

OUTPUT_FORMATS: dict[str, tuple[str, str, str]] = {
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
    "jpg": ("JPEG", "image/jpeg", "jpg"),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_MARGIN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(px|%)?\s*")
MAX_MARGIN_PX = 1000


class MaskService(Protocol):
    def slot(self) -> AbstractContextManager[int]: ...
    def mask(self, model_rgb: Image.Image, size: tuple[int, int]) -> Image.Image: ...


@dataclass(frozen=True)
class Options:
    """What the caller asked for; None means the endpoint's default."""

    fmt: str | None = None
    only_mask: bool = False
    crop: bool = False
    crop_margin: tuple[float, str] = (0.0, "px")
    color: tuple[int, int, int, int] | None = None
    max_dimension: int | None = None


@dataclass(frozen=True)
class Result:
    payload: bytes
    mimetype: str
    filename: str


def parse_format(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    value = text.strip().lower()
    if value not in OUTPUT_FORMATS:
        raise BadRequest(f"format {text[:20]!r} is not supported; use one of: png, webp, jpeg")
    return "jpeg" if value == "jpg" else value


def parse_bool(name: str, text: str | None) -> bool:
    value = (text or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, not {text[:20]!r}")


def parse_margin(text: str | None) -> tuple[float, str]:
    """'20', '20px' or '10%' (of the subject's size), up to 1000 px or 100 %."""
    if text is None or not text.strip():
        return 0.0, "px"
    match = _MARGIN.fullmatch(text)
    if not match:
        raise BadRequest(f"crop_margin {text[:20]!r} is not understood; use pixels ('20' or '20px') or a percentage ('10%')")
    amount, unit = float(match.group(1)), match.group(2) or "px"
    if amount > (100 if unit == "%" else MAX_MARGIN_PX):
        raise BadRequest(f"crop_margin is at most {MAX_MARGIN_PX}px or 100%")
    return amount, unit


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


def _subject(
    source: Source,
    options: Options,
    service: MaskService,
    config: Config,
    background: imaging.Header | None = None,
) -> tuple[Image.Image, Image.Image, Image.Image | None]:
    """Decode and mask: (RGB at output size, alpha including the upload's own transparency, backdrop).

    The header checks run first, without waiting for the model; decoding (of the photo and of a checked
    background image) waits for the inference slot, so that concurrent requests never hold more than one
    decode between them, and each decode's full-size raster is gone before the model runs.
    """
    max_dimension = options.max_dimension or config.max_dimension
    header = _checked(source, max_dimension, config)
    with service.slot() as input_size:
        decoded = imaging.decode(header, max_dimension, input_size)
        model_rgb, decoded.model_rgb = decoded.model_rgb, None
        mask = service.mask(model_rgb, decoded.size)
        del model_rgb
        backdrop = imaging.decode(background, config.max_dimension).rgb if background is not None else None
    return decoded.rgb, imaging.combine_alpha(mask, decoded.alpha), backdrop


def _cropped(rgb: Image.Image, alpha: Image.Image, options: Options) -> tuple[Image.Image, Image.Image]:
    if not options.crop:
        return rgb, alpha
    box = imaging.subject_box(alpha, options.crop_margin)
    if box is None:
        return rgb, alpha
    return rgb.crop(box), alpha.crop(box)


def _result(image: Image.Image, fmt: str, prefix: str, stem: str) -> Result:
    pil_format, mimetype, extension = OUTPUT_FORMATS[fmt]
    return Result(imaging.encode(image, pil_format), mimetype, f"{prefix}_{stem}.{extension}")


def remove_background(data: Source, stem: str, options: Options, service: MaskService, config: Config) -> Result:
    """The cutout (PNG by default), or the mask alone with only_mask."""
    rgb, alpha, _ = _subject(data, options, service, config)
    rgb, alpha = _cropped(rgb, alpha, options)
    if options.only_mask:
        return _result(alpha, options.fmt or "png", "mask", stem)
    return _result(imaging.cutout(rgb, alpha), options.fmt or "png", "nobg", stem)


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
    rgb, alpha, backdrop = _subject(data, options, service, config, checked_background)
    rgb, alpha = _cropped(rgb, alpha, options)
    if options.only_mask:
        return _result(alpha, options.fmt or "png", "mask", stem)
    under = imaging.cover(backdrop, rgb.size) if backdrop is not None else imaging.solid(rgb.size, color)
    composed = imaging.over_background(rgb, alpha, under)
    fmt = options.fmt or ("png" if translucent else "jpeg")
    return _result(composed if translucent else composed.convert("RGB"), fmt, "colored", stem)
