"""Edges: refine the model's mask into an alpha matte, and estimate foreground colours in soft pixels.

Two pure numpy functions the pipeline calls once per request:

- refine_alpha: IS-Net's mask is a segmentation (0 or 1 almost everywhere, grey where it is unsure).
  Inside an uncertain band around its edge the alpha is re-estimated from the full-resolution photo:
  unmixed between the local colours of the sure foreground and background where they differ, a colour
  guided filter of the mask (He, Sun and Tang, "Guided Image Filtering", 2013) where they do not. Both
  are computed at half the model's resolution and upsampled as the fast guided filter does (He and Sun,
  2015), so the same step upsamples large outputs with edges that follow the photo. Outside the band
  the mask is returned unchanged.
- estimate_foreground: the RGB of a semi-transparent pixel mixes the old background in. Forte and Pitie's
  blur-fusion estimator ("Approximate Fast Foreground Colour Estimation", ICIP 2021), two levels (a wide
  blur on a reduced image, then a narrow one at full size), replaces it with an estimated foreground
  colour, in soft pixels only.

Full-size work happens tile by tile along the band only, in float32, so memory stays bounded by a tile
(not the image) and time by the length of the edge (not the area).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Radii are given in pixels of an image this size on its long side (the model's input).
WORK_SIDE = 1024
# The guided filter's statistics are computed at this long side (the fast guided filter's subsampling:
# s = 2 from the model's 1024 px) and its coefficients upsampled to the output.
GUIDE_SIDE = 512
# Blur-fusion's wide level runs on the image reduced to this long side: a 90 px window is smooth enough
# to be computed there and upsampled.
WIDE_SIDE = 256


@dataclass(frozen=True)
class RefineParams:
    """Refinement settings, in pixels of the guide's resolution (long side GUIDE_SIDE); chosen on
    bench/edges.py's composites."""

    radius: int = 3  # guided filter window
    eps: float = 1e-4  # guided filter regularisation
    band: int = 4  # half-width of the uncertain band around the mask's 0.5 edge
    near: int = 2  # local foreground/background colour means: narrow window...
    wide: int = 20  # ...and the wide one where the narrow has no sure pixels
    erode: int = 1  # sure = the mask below `low` or above `high`, eroded this much
    low: float = 0.02
    high: float = 0.98
    tau: float = 0.1  # |F - B|^2 at which unmixing and the guided filter count alike


@dataclass(frozen=True)
class ForegroundParams:
    """Blur-fusion radii: the wide one in pixels of a 1024 px image, the narrow one at full size."""

    wide: int = 90
    narrow: int = 6


def _box_sum_axis(x: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Sum over the window [i - r, i + r] (zero outside the array) along one axis.

    Window sums of 1, 2, 4, 8... by shifted adds, then the binary digits of 2r + 1 added up: about
    2 log2(2r + 1) vectorised adds, several times faster than np.cumsum and without its float32 drift.
    """
    if r <= 0:
        return x.astype(np.float32, copy=True)
    n, width = x.shape[axis], 2 * r + 1

    def part(array: np.ndarray, start: int, stop: int) -> np.ndarray:
        index = [slice(None)] * array.ndim
        index[axis] = slice(start, stop)
        return array[tuple(index)]

    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    level = np.pad(x.astype(np.float32, copy=False), pad)
    out: np.ndarray | None = None
    offset, step = 0, 1
    while True:
        if width & step:
            piece = part(level, offset, offset + n)
            out = piece.copy() if out is None else np.add(out, piece, out=out)
            offset += step
        if step * 2 > width:
            break
        length = level.shape[axis] - step
        level = np.add(part(level, 0, length), part(level, step, step + length))
        step *= 2
    assert out is not None
    return out


def _window_counts(n: int, r: int) -> np.ndarray:
    i = np.arange(n)
    return (np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1).astype(np.float32)


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window, clipped at the borders, of (H, W) or channel-first (C, H, W) float32.

    Each plane is filtered on its own: contiguous 2-D planes run several times faster than interleaved
    channels.
    """
    if x.ndim == 3:
        return np.stack([box_mean(np.ascontiguousarray(plane), r) for plane in x])
    h, w = x.shape
    summed = _box_sum_axis(_box_sum_axis(x, r, 0), r, 1)
    summed /= np.outer(_window_counts(h, r), _window_counts(w, r))
    return summed


def _resize_planes(planes: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
                   ) -> np.ndarray:
    """Bilinear resize of channel-first (C, H, W) float32 planes to size (w, h), with Pillow's C resampler."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(plane), mode="F").resize(
        size, Image.Resampling.BILINEAR, box=box)) for plane in planes])


def _source_box(work: tuple[int, int], full: tuple[int, int], left: int, top: int, right: int, bottom: int
                ) -> tuple[float, float, float, float]:
    """The region of a working-size plane that maps onto full-size pixels [left, right) x [top, bottom)."""
    sx, sy = work[0] / full[0], work[1] / full[1]
    return (left * sx, top * sy, min(work[0], right * sx), min(work[1], bottom * sy))


def _work_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """size scaled down (never up) to `side` on the long side."""
    w, h = size
    scale = min(1.0, side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _reduced(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 pixels box-reduced to size (w, h), as float32 in [0, 1]."""
    if (pixels.shape[1], pixels.shape[0]) != size:
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))
    return _as_float(pixels)


Rect = tuple[int, int, int, int]  # top, bottom, left, right


def tiles(active: np.ndarray, tile: int) -> list[Rect]:
    """Rectangles covering every True pixel: per row of tile x tile blocks, each run of blocks that hold one."""
    height, width = active.shape
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.zeros((rows * tile, cols * tile), dtype=bool)
    padded[:height, :width] = active
    blocks = padded.reshape(rows, tile, cols, tile).any(axis=(1, 3))
    found: list[Rect] = []
    for row in np.flatnonzero(blocks.any(axis=1)):
        line = np.concatenate(([False], blocks[row], [False]))
        edges = np.flatnonzero(line[1:] != line[:-1])
        top, bottom = int(row) * tile, min(height, (int(row) + 1) * tile)
        for start, stop in zip(edges[::2], edges[1::2]):
            found.append((top, bottom, int(start) * tile, min(width, int(stop) * tile)))
    return found


def _grown(rect: Rect, by: int, shape: tuple[int, ...]) -> Rect:
    top, bottom, left, right = rect
    return max(0, top - by), min(shape[0], bottom + by), max(0, left - by), min(shape[1], right + by)


def _inverse_sym3(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, e: np.ndarray, f: np.ndarray
                  ) -> tuple[np.ndarray, ...]:
    """Inverse of the symmetric 3x3 [[a, b, c], [b, d, e], [c, e, f]] per pixel (cofactors / determinant)."""
    i00 = d * f - e * e
    i01 = c * e - b * f
    i02 = b * e - c * d
    i11 = a * f - c * c
    i12 = b * c - a * e
    i22 = a * d - b * b
    det = a * i00 + b * i01 + c * i02
    np.maximum(det, np.float32(1e-12), out=det)
    return tuple(x / det for x in (i00, i01, i02, i11, i12, i22))


def guided_coefficients(guide: np.ndarray, p: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter: the averaged linear coefficients (4, H, W) = (A_r, A_g, A_b, b) of q = A.I + b,
    for a channel-first guide (3, H, W) and an input p (H, W)."""
    mean_i = box_mean(guide, radius)
    mean_p = box_mean(p, radius)
    cov_ip = box_mean(guide * p, radius)
    cov_ip -= mean_i * mean_p
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    var = [box_mean(guide[i] * guide[j], radius) - mean_i[i] * mean_i[j] for i, j in pairs]
    e = np.float32(eps)
    var[0] += e
    var[3] += e
    var[5] += e
    i00, i01, i02, i11, i12, i22 = _inverse_sym3(*var)
    del var
    cr, cg, cb = cov_ip
    coef = np.empty((4,) + p.shape, dtype=np.float32)
    coef[0] = i00 * cr + i01 * cg + i02 * cb
    coef[1] = i01 * cr + i11 * cg + i12 * cb
    coef[2] = i02 * cr + i12 * cg + i22 * cb
    coef[3] = mean_p - coef[0] * mean_i[0] - coef[1] * mean_i[1] - coef[2] * mean_i[2]
    return box_mean(coef, radius)


def _as_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> float32 in [0, 1], colour channel-first (3, H, W)."""
    scaled = pixels.astype(np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1)) if scaled.ndim == 3 else scaled


def _from_float(planes: np.ndarray) -> np.ndarray:
    """Channel-first float32 in [0, 1] -> uint8 (H, W, 3), rounded."""
    return (planes.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def _band(p: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels within half_width of the mask's 0.5 edge, or soft in the mask itself."""
    near = box_mean((p >= 0.5).astype(np.float32), half_width)
    band = (near > 0.0) & (near < 1.0)
    band |= (p > 0.02) & (p < 0.98)
    return band


def _sure(flags: np.ndarray, erode: int) -> np.ndarray:
    """1.0 where flags hold over the whole (2 erode + 1)^2 window, else 0.0."""
    return (box_mean(flags.astype(np.float32), erode) >= np.float32(0.999)).astype(np.float32)


def _colour_mean(guide: np.ndarray, sure: np.ndarray, near: int, wide: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour (3, H, W) of the sure pixels around each pixel (the narrow window where it holds
    some, else the wide one) and whether any were found (H, W)."""
    weight_near = box_mean(sure, near)
    weight_wide = box_mean(sure, wide)
    mean_near = box_mean(guide * sure, near) / (weight_near + np.float32(1e-6))
    mean_wide = box_mean(guide * sure, wide) / (weight_wide + np.float32(1e-6))
    has_near = weight_near > np.float32(0.05)
    return np.where(has_near, mean_near, mean_wide), has_near | (weight_wide > np.float32(0.01))


def refine_alpha(rgb: np.ndarray, mask: np.ndarray, params: RefineParams = RefineParams()) -> np.ndarray:
    """The mask (H, W) uint8 refined into an alpha (H, W) uint8 guided by the photo rgb (H, W, 3) uint8.

    In the uncertain band the alpha is the photo's colour unmixed between the local means F and B of
    the sure foreground and background, alpha = (I - B).(F - B) / |F - B|^2 (the colour-line estimate
    of Knockout, Berman et al. 2000), where F and B differ; where they do not, a colour guided filter
    of the mask. Both are computed at GUIDE_SIDE and applied to the full-size photo tile by tile along
    the band (the fast guided filter's upsampling), which is also how an output larger than the model's
    input gets edges that follow the photo rather than a resized mask. Outside the band (within
    params.band guide pixels of the 0.5 edge, or soft in the mask) the result is the mask itself.
    """
    height, width = mask.shape
    work = _work_size((width, height), GUIDE_SIDE)
    p = _reduced(mask, work)
    band_small = _band(p, params.band)
    if not band_small.any():
        return mask.copy()
    guide = _reduced(rgb, work)
    fore, has_fore = _colour_mean(guide, _sure(p >= params.high, params.erode), params.near, params.wide)
    back, has_back = _colour_mean(guide, _sure(p <= params.low, params.erode), params.near, params.wide)
    coef = guided_coefficients(guide, p, params.radius, params.eps)
    planes = np.concatenate([fore, back, (has_fore & has_back)[None].astype(np.float32), coef])
    del guide, p, fore, back, coef
    band_full = (band_small if work == (width, height) else
                 np.asarray(Image.fromarray(band_small).resize((width, height), Image.Resampling.NEAREST)))
    tau = np.float32(params.tau)
    out = mask.copy()
    for top, bottom, left, right in tiles(band_full, 64):
        where = band_full[top:bottom, left:right]
        up = _resize_planes(planes, (right - left, bottom - top),
                            box=_source_box(work, (width, height), left, top, right, bottom))
        image = _as_float(rgb[top:bottom, left:right])
        diff = up[0:3] - up[3:6]
        spread = (diff * diff).sum(axis=0)
        unmixed = ((image - up[3:6]) * diff).sum(axis=0) / (spread + np.float32(1e-6))
        np.clip(unmixed, 0.0, 1.0, out=unmixed)
        filtered = up[10] + up[7] * image[0] + up[8] * image[1] + up[9] * image[2]
        np.clip(filtered, 0.0, 1.0, out=filtered)
        trust = spread / (spread + tau) * (up[6] > np.float32(0.99))
        alpha = filtered + trust * (unmixed - filtered)
        out[top:bottom, left:right][where] = (alpha[where] * 255 + 0.5).astype(np.uint8)
    return out


def _blur_fusion(image: np.ndarray, fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, radius: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion step (Forte and Pitie 2021, eq. 4-6): local F and B means weighted by alpha, then
    F = F_mean + alpha (I - alpha F_mean - (1 - alpha) B_mean)."""
    a = alpha
    mean_a = box_mean(alpha, radius)
    mean_f = box_mean(fg * a, radius)
    mean_f /= mean_a + np.float32(1e-5)
    mean_b = box_mean(bg * (1 - a), radius)
    mean_b /= (1 - mean_a) + np.float32(1e-5)
    f = image - a * mean_f - (1 - a) * mean_b
    f *= a
    f += mean_f
    np.clip(f, 0.0, 1.0, out=f)
    return f, mean_b


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray, params: ForegroundParams = ForegroundParams()
                        ) -> np.ndarray:
    """rgb (H, W, 3) uint8 with estimated foreground colours wherever 0 < alpha < 255; other pixels unchanged.

    Level 1 (the wide blur) runs on the image reduced to WIDE_SIDE, where a 90 px window (at 1024 px)
    is a 23 px one; its F and B means are upsampled into each tile along the soft band; level 2 (the
    narrow blur) runs at full size, in those tiles only.
    """
    height, width = alpha.shape
    soft = (alpha > 0) & (alpha < 255)
    if not soft.any():
        return rgb.copy()
    long_side = max(width, height)
    wide_size = _work_size((width, height), WIDE_SIDE)
    small_rgb = _reduced(rgb, wide_size)
    wide = max(1, round(params.wide * max(wide_size) / WORK_SIDE))
    f1, b1 = _blur_fusion(small_rgb, small_rgb, small_rgb, _reduced(alpha, wide_size), wide)
    del small_rgb
    narrow = max(params.narrow, round(params.narrow * long_side / WORK_SIDE))
    out = rgb.copy()
    for rect in tiles(soft, 64):
        top, bottom, left, right = _grown(rect, narrow + 1, soft.shape)
        box = _source_box(wide_size, (width, height), left, top, right, bottom)
        size = (right - left, bottom - top)
        fg = _resize_planes(f1, size, box=box)
        bg = _resize_planes(b1, size, box=box)
        image = _as_float(rgb[top:bottom, left:right])
        a = _as_float(alpha[top:bottom, left:right])
        # level 1 at full size: blur-fusion's update with the wide means
        update = image - a * fg
        update -= (1 - a) * bg
        update *= a
        fg += update
        np.clip(fg, 0.0, 1.0, out=fg)
        f2, _ = _blur_fusion(image, fg, bg, a, narrow)
        t, b, l, r = rect
        where = soft[t:b, l:r]
        out[t:b, l:r][where] = _from_float(f2[:, t - top:b - top, l - left:r - left])[where]
    return out
