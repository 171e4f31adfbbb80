"""Colour strings from a form field -> an RGBA tuple."""
from __future__ import annotations

import re

from PIL import ImageColor

ACCEPTED_FORMS = (
    "'#RGB', '#RGBA', '#RRGGBB', '#RRGGBBAA', 'R,G,B' with each value 0-255, or a CSS colour name "
    "(for example '#00FF00', '255,0,0' or 'rebeccapurple')"
)

_HEX = re.compile(r"#?([0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})")
_TRIPLE = re.compile(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*")
WHITE = (255, 255, 255, 255)


def parse_color(text: str | None, default: tuple[int, int, int, int] = WHITE) -> tuple[int, int, int, int]:
    """Parse '#0F0', '#0F08', '#00FF00', '#00FF0080', '00FF00', '0,255,0' or 'white' into (R, G, B, A).

    Raises ValueError naming the accepted forms.
    """
    if text is None or not text.strip():
        return default
    value = text.strip()
    match = _HEX.fullmatch(value)
    if match:
        digits = match.group(1)
        if len(digits) in (3, 4):
            digits = "".join(ch * 2 for ch in digits)
        if len(digits) == 6:
            digits += "ff"
        return tuple(int(digits[i : i + 2], 16) for i in range(0, 8, 2))  # type: ignore[return-value]
    match = _TRIPLE.fullmatch(value)
    if match:
        rgb = tuple(int(part) for part in match.groups())
        if all(0 <= part <= 255 for part in rgb):
            return (*rgb, 255)  # type: ignore[return-value]
    if value.isalpha() and value.lower() in ImageColor.colormap:
        red, green, blue = ImageColor.getrgb(value.lower())[:3]
        return red, green, blue, 255
    raise ValueError(f"color {value[:40]!r} is not understood; use {ACCEPTED_FORMS}")
