"""Colour strings from a form field -> an RGB triple."""
from __future__ import annotations

import re

ACCEPTED_FORMS = "'#RGB', '#RRGGBB' or 'R,G,B' with each value 0-255 (for example '#00FF00' or '255,0,0')"

_HEX = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_TRIPLE = re.compile(r"\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*")


def parse_color(text: str | None, default: tuple[int, int, int] = (255, 255, 255)) -> tuple[int, int, int]:
    """Parse '#0F0', '#00FF00', '00FF00' or '0,255,0'; raise ValueError naming the accepted forms."""
    if text is None or not text.strip():
        return default
    value = text.strip()
    match = _HEX.fullmatch(value)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(ch * 2 for ch in digits)
        return int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)
    match = _TRIPLE.fullmatch(value)
    if match:
        rgb = tuple(int(part) for part in match.groups())
        if all(0 <= part <= 255 for part in rgb):
            return rgb  # type: ignore[return-value]
    raise ValueError(f"color {value[:40]!r} is not understood; use {ACCEPTED_FORMS}")
