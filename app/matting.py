"""Edges: refine the model's mask into an alpha matte, and estimate foreground colours in soft pixels.

Two functions the pipeline calls once per request, on Pillow images at the output's size:

- refine: IS-Net's mask is a segmentation (0 or 1 almost everywhere, grey where it is unsure).
  Inside an uncertain band around its edge the alpha is re-estimated from the full-resolution photo:
  unmixed between the local colours of the sure foreground and background where they differ, a colour
  guided filter of the mask (He, Sun and Tang, "Guided Image Filtering", 2013) where they do not. Both
  are computed on the image reduced to GUIDE_SIDE and evaluated at full size as the fast guided filter does
  (He and Sun, 2015), so the same step upsamples large outputs with an edge that follows the photo. A pixel
  crosses 0.5 only where the model is unsure (its mask between 0.02 and 0.98 at the output's size: its own soft
  band, or the ramp a resize from its input makes) and the colours around are plain and known; where the model
  is sure, alpha > 0.5 stays the model's. Outside the band the mask is returned unchanged.
- decontaminate: the RGB of a semi-transparent pixel mixes the old background in. Forte and Pitie's
  blur-fusion estimator ("Approximate Fast Foreground Colour Estimation", ICIP 2021), two levels (a wide
  blur, then a narrow one), replaces it with an estimated foreground colour, in soft pixels near the
  background only.

Both step back, down to exactly the model's mask and the photo's colours, where the photo cannot tell
foreground from background (a busy or absent sure background): each guard answers a composite that the
estimate made worse on bench/edges.py (docs/performance.md, Edges).

Window statistics are computed on reduced images (float32 box filters); full-size work touches only the
band's (or the soft) pixels, a strip of rows at a time, so time follows the length of the edge and the
extra memory is a few reduced planes plus one strip, not the image.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Radii are given in pixels of an image this size on its long side (the model's input).
WORK_SIDE = 1024
# The refinement's statistics are computed at this long side (the fast guided filter's subsampling:
# s = 2.7 from the model's 1024 px) and its coefficients evaluated at the output's size; 512 was no
# better on bench/edges.py's composites and took 40 % longer.
GUIDE_SIDE = 384
# Blur-fusion's narrow level's local means at this long side; its wide level (a 90 px window is smooth
# enough) at half of it. Wide windows, and the guided filter, also run at half the guide's resolution.
NARROW_SIDE = 384


@dataclass(frozen=True)
class RefineParams:
    """Refinement settings, in pixels of the guide's resolution (long side GUIDE_SIDE); chosen on
    bench/edges.py's composites."""

    radius: int = 3  # guided filter window
    eps: float = 1e-4  # guided filter regularisation
    band: int = 1  # half-width of the uncertain band around the mask's 0.5 edge
    near: int = 2  # local foreground/background colour means: narrow window...
    wide: int = 20  # ...and the wide one where the narrow has no sure pixels
    erode: int = 1  # sure = the mask below `low` or above `high`, eroded this much...
    far: int = 2  # ...and this much for the colour variances (beyond the edge's own mixed pixels)
    low: float = 0.02
    high: float = 0.98
    tau: float = 0.1  # |F - B|^2 at which unmixing and the guided filter count alike...
    noise: float = 6.0  # ...plus this times the colour variance of the sure pixels around (a busy background)
    busy: float = 0.002  # the refinement counts busy/(busy + colour variance of the sure background around):
    # on a busy background the model's own edge is usually the better one (0: always fully)...
    cover: float = 0.5  # ...and in full only where this fraction of the wide window is sure background: with
    # less, the background's colours are unknown (a model that kept part of the background, a soft region)...
    cover_plain: float = 0.25  # ...a fraction that falls to this on a plain background (its colour is known from
    # fewer pixels; in hair the wide window is mostly hair)
    floor: float = 0.05  # a weight below this counts as 0: the model's mask exactly, not a sliver of an estimate
    feather: float = 2.0  # the weight fades to 0 at the band's edge, as clip(feather * b - (feather - 1)) for b the
    # band's flags sampled bilinearly: without it, the refined edge met the untouched mask in a step along the
    # guide's pixels (a staircase of 10 px squares at 4096 px); 0: no fade
    cross: float = 0.7  # a pixel may cross 0.5 only where the model is unsure (its mask between low and high at
    # the output's size: its own soft band, or the ramp a resize from its input makes), and in full only where
    # the refinement itself counts in full (busy and cover), fading out as that weight falls to this; 1: never


@dataclass(frozen=True)
class ForegroundParams:
    """Blur-fusion settings; radii in pixels of a 1024 px image (scaled to the reduced images they run on)."""

    wide: int = 90
    narrow: int = 6
    far: int = 2  # background pixels this far (at half NARROW_SIDE) from any foreground measure the variance
    busy: float = 0.002  # the estimate counts busy/(busy + the wide window's background colour variance): a busy
    # background's local mean says little about the colour behind one pixel (0: always fully)
    floor: float = 0.05  # a weight below this counts as 0: the photo's colour exactly
    reach: int = 2  # only soft pixels this near (at NARROW_SIDE) a sure background pixel are an edge's mix; farther
    # in, a soft alpha is the model's doubt about an opaque region, and "removing" background there tints it
    opaque: float = 0.01  # colour evidence of opacity, |I - B| / |F - B|, counts spread/(spread + opaque)...
    residual: float = 0.01  # ...and the estimate counts 1/(1 + |I - (a F + (1-a) B)|^2 / residual): where the
    # local means do not explain the pixel, they say little about its foreground


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

    shape = list(x.shape)
    shape[axis] += 2 * r
    level = np.zeros(shape, dtype=np.float32)
    part(level, r, r + n)[...] = x
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


def _work_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    """size scaled down (never up) to `side` on the long side."""
    w, h = size
    scale = min(1.0, side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _reduced(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """An L or RGB image box-reduced to size (w, h), as float32 in [0, 1], colour channel-first (3, H, W)."""
    if image.size != size:
        image = image.resize(size, Image.Resampling.BOX)
    scaled = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1)) if scaled.ndim == 3 else scaled


def _resized(planes: np.ndarray, size: tuple[int, int], method: Image.Resampling = Image.Resampling.BILINEAR
             ) -> np.ndarray:
    """Channel-first (C, H, W) float32 planes resized to size (w, h), with Pillow's C resampler."""
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(plane), mode="F").resize(size, method))
                     for plane in planes])


def _halved(planes: np.ndarray) -> np.ndarray:
    """(..., H, W) float32 planes averaged over 2x2 blocks (an odd last row or column is dropped; 1 stays 1)."""
    height, width = planes.shape[-2:]
    if height > 1:
        even = planes[..., : height // 2 * 2, :]
        planes = (even[..., 0::2, :] + even[..., 1::2, :]) * np.float32(0.5)
    if width > 1:
        even = planes[..., : width // 2 * 2]
        planes = (even[..., 0::2] + even[..., 1::2]) * np.float32(0.5)
    return planes


def _doubled(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The inverse of _halved for smooth planes: each value repeated over its 2x2 block, to (H, W) = shape."""
    rows = np.minimum(np.arange(shape[0]) // 2, planes.shape[-2] - 1)
    cols = np.minimum(np.arange(shape[1]) // 2, planes.shape[-1] - 1)
    return np.take(np.take(planes, rows, axis=-2), cols, axis=-1)


class _Sampler:
    """Bilinear samples of low-resolution planes (C, h, w) at full-size pixel positions (the fast guided
    filter's upsampling, done only where it is needed rather than for the whole image).

    Samples come channel-first, (C, N): the per-pixel arithmetic that follows then runs along N with a scalar
    per pixel, several times faster in numpy than rows of C values with a column broadcast against them."""

    def __init__(self, planes: np.ndarray, full: tuple[int, int]) -> None:
        _, height, width = planes.shape
        # each plane flat, padded by one edge pixel so i + 1 is always inside
        padded = np.pad(planes, ((0, 0), (0, 1), (0, 1)), mode="edge")
        self._flat = padded.reshape(padded.shape[0], -1)
        self._stride = width + 1
        self._shape = height, width
        self._scale = np.float32(height / full[1]), np.float32(width / full[0])

    def _axis(self, index: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        where = (index.astype(np.float32) + np.float32(0.5)) * self._scale[axis] - np.float32(0.5)
        np.clip(where, 0, self._shape[axis] - 1, out=where)
        low = where.astype(np.intp)
        return low, where - low.astype(np.float32)

    def _take(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((self._flat.shape[0], index.size), dtype=np.float32)
        for plane, row in zip(self._flat, out):
            np.take(plane, index, out=row)
        return out

    def __call__(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """(C, N) planes at full-size rows ys and columns xs."""
        y0, wy = self._axis(ys, 0)
        x0, wx = self._axis(xs, 1)
        index = y0 * self._stride + x0
        rows = []
        for _ in range(2):
            left = self._take(index)
            right = self._take(index + 1)
            right -= left
            right *= wx
            right += left
            rows.append(right)
            index += self._stride
        top, bottom = rows
        bottom -= top
        bottom *= wy
        bottom += top
        return bottom


def _colours(strip: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The RGB (H, W, 3) uint8 strip's pixels at (ys, xs) as channel-first (3, N) float32 in [0, 1]."""
    picked = strip[ys, xs].T.astype(np.float32, order="C")
    picked *= np.float32(1 / 255)
    return picked


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel dot product of channel-first (3, N) colours (an unrolled sum: np.einsum is several times
    slower on three terms)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


STRIP_PIXELS = 1 << 18  # full-size pixels handled at once: bounds the per-request buffers at large outputs


def _strip_rows(width: int) -> int:
    return max(8, STRIP_PIXELS // max(1, width))


def _row_strips(size: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    """(left, top, right, bottom) boxes of whole rows covering an image of size (w, h), STRIP_PIXELS each: the
    full-size work holds one strip's flags, indices and samples at a time (at 12 MP the whole image's would be
    tens of MB)."""
    width, height = size
    rows = _strip_rows(width)
    for top in range(0, height, rows):
        yield 0, top, width, min(height, top + rows)


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


def _near_edge(p: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels within half_width of the mask's 0.5 edge."""
    near = box_mean((p >= 0.5).astype(np.float32), half_width)
    return (near > 0.0) & (near < 1.0)


def _band(p: np.ndarray, half_width: int) -> np.ndarray:
    """Pixels within half_width of the mask's 0.5 edge, or soft in the mask itself."""
    band = _near_edge(p, half_width)
    band |= (p > 0.02) & (p < 0.98)
    return band


def _sure(flags: np.ndarray, erode: int) -> np.ndarray:
    """1.0 where flags hold over the whole (2 erode + 1)^2 window, else 0.0."""
    return (box_mean(flags.astype(np.float32), erode) >= np.float32(0.999)).astype(np.float32)


def _colour_mean(guide: np.ndarray, sure: np.ndarray, far: np.ndarray, near: int, wide: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean colour (3, H, W) of the sure pixels around each pixel (the narrow window where it holds
    some, else the wide one), the colour variance (H, W; summed over channels) of the `far` ones (sure and
    away from the edge, whose own mixed pixels would count as variance) in the wide window, and whether
    any sure pixels were found (H, W), and the fraction of the wide window that is `far` (H, W). Wide
    windows are smooth, so they are taken at half the resolution and upsampled."""
    squares = (guide * guide).sum(axis=0)
    weighted = np.concatenate([guide * sure, sure[None], guide * far, far[None], (squares * far)[None]])
    sums_wide = _doubled(box_mean(_halved(weighted), max(1, wide // 2)), sure.shape)
    sums_near = box_mean(weighted[:4], near)
    has_near = sums_near[3] > np.float32(0.05)
    mean = np.where(has_near, sums_near[:3] / (sums_near[3] + np.float32(1e-6)),
                    sums_wide[:3] / (sums_wide[3] + np.float32(1e-6)))
    weight = sums_wide[7] + np.float32(1e-6)
    mean_far = sums_wide[4:7] / weight
    variance = np.maximum(sums_wide[8] / weight - (mean_far * mean_far).sum(axis=0), 0)
    return mean, variance, has_near | (sums_wide[3] > np.float32(0.01)), sums_wide[7]


def _nearest(flags: np.ndarray, size: tuple[int, int]) -> Callable[[int, int], np.ndarray]:
    """flags (h, w) as if resized to size (w, h) by nearest neighbour, one band of rows [top, bottom) at a time."""
    height, width = flags.shape
    cols = np.minimum(((np.arange(size[0]) + 0.5) * (width / size[0])).astype(np.intp), width - 1)

    def rows(top: int, bottom: int) -> np.ndarray:
        index = np.minimum(((np.arange(top, bottom) + 0.5) * (height / size[1])).astype(np.intp), height - 1)
        return flags[index][:, cols]

    return rows


def _unmixing(guide: np.ndarray, p: np.ndarray, params: RefineParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knockout's colour-line alpha as a linear function of the colour, alpha = u.I + c (4, H, W) = (u, c),
    with u = (F - B) / |F - B|^2 and c = -u.B for the local sure-foreground and -background means; how
    far it is trusted against the guided filter (H, W): by how much F and B differ for their spread, 0
    where either has no sure pixels near; and how plain and how present the sure background around is
    (H, W), which weighs the whole refinement against the model's own mask."""
    sure_fore, sure_back = p >= params.high, p <= params.low
    fore, var_fore, has_fore, _ = _colour_mean(guide, _sure(sure_fore, params.erode), _sure(sure_fore, params.far),
                                               params.near, params.wide)
    back, var_back, has_back, cover = _colour_mean(guide, _sure(sure_back, params.erode),
                                                   _sure(sure_back, params.far), params.near, params.wide)
    diff = fore - back
    spread = (diff * diff).sum(axis=0)
    linear = np.empty((4,) + p.shape, dtype=np.float32)
    linear[:3] = diff / (spread + np.float32(1e-6))
    linear[3] = -(linear[:3] * back).sum(axis=0)
    trust = spread / (spread + np.float32(params.tau) + np.float32(params.noise) * (var_fore + var_back))
    trust *= has_fore & has_back
    busy = np.float32(params.busy)
    plain = busy / (busy + var_back) if params.busy else np.ones_like(trust)
    if params.cover:
        need = np.float32(params.cover) + np.float32(params.cover_plain - params.cover) * plain
        plain *= np.minimum(cover / need, 1)
    return linear, trust, plain


def _floored(weight: np.ndarray, floor: float) -> np.ndarray:
    """weight with values below floor set to 0: where an estimate counts for almost nothing, it counts for nothing,
    so the input comes back exactly rather than rounded a level off."""
    return np.where(weight < np.float32(floor), np.float32(0), weight) if floor else weight


def _same_side(alpha: np.ndarray, model: np.ndarray) -> np.ndarray:
    """alpha (uint8) kept on the model's side of 0.5 (128 and up, or 127 and down): where the model is sure,
    the refinement makes its edge soft but never turns what it calls subject into background or back."""
    fore = model >= 128
    return np.where(fore, np.maximum(alpha, 128), np.minimum(alpha, 127)).astype(np.uint8)


def _crossing(alpha: np.ndarray, model: np.ndarray, weight: np.ndarray, params: RefineParams) -> np.ndarray:
    """alpha (uint8) on the model's side of 0.5 where the model is sure (its mask at most low or at least high)
    or the refinement's weight (plain background, cover, the band's feather) is at most params.cross; above it, the kept side
    gives way to the estimate, in full at weight 1. So the estimate may bring back a strand the model cut off,
    or drop background it kept, only where the model doubts and the background around is plain and known
    (bench/edges.py: on a busy one, or where the unmixing's own trust was required too, crossing made an
    image worse or gained less; docs/performance.md, Edges)."""
    kept = _same_side(alpha, model)
    if params.cross >= 1:
        return kept
    unsure = (model > params.low * 255) & (model < params.high * 255)
    give = np.clip((weight - np.float32(params.cross)) / np.float32(1 - params.cross), 0, 1) * unsure
    mixed = kept + give * (alpha.astype(np.float32) - kept)
    return (mixed + 0.5).astype(np.uint8)


def refine(rgb: Image.Image, mask: Image.Image, params: RefineParams = RefineParams()) -> Image.Image:
    """The mask (L) refined into an alpha matte (L) guided by the photo (RGB) of the same size, in place (and
    returned): the mask is the pipeline's own, and a copy would add 12 MB at 12 MP to the request's peak.

    In the uncertain band the alpha is the photo's colour unmixed between the local means F and B of
    the sure foreground and background, alpha = (I - B).(F - B) / |F - B|^2 (the colour-line estimate
    of Knockout, Berman et al. 2000), where F and B differ; where they do not, a guided filter of the
    mask. Both are linear in the colour, so their blend is one set of coefficients (A, b), computed on
    reduced images and evaluated as alpha = A.I + b with the full-size photo at the band's pixels only
    (the fast guided filter's upsampling), which is also how an output larger than the model's input
    gets an edge that follows the photo rather than the resized mask's ramp. The change from the mask is
    weighed by how plain the background around is (params.busy) and how much of it is sure background
    (params.cover), and a pixel crosses 0.5 only where the model is unsure and that weight is high
    (params.cross, _crossing): where the model is sure it decides what is subject, the photo how soft its
    edge is. Outside the band (within params.band guide pixels of the 0.5 edge, or soft in the mask) the
    result is the mask itself.
    """
    width, height = mask.size
    work = _work_size((width, height), GUIDE_SIDE)
    p = _reduced(mask, work)
    band_small = _band(p, params.band)
    if not band_small.any():
        return mask
    guide = _reduced(rgb, work)
    linear, trust, plain = _unmixing(guide, p, params)
    # the guided filter at half the guide's resolution: its coefficients are smooth (the fast guided filter)
    coef = _resized(guided_coefficients(_halved(guide), _halved(p), max(1, round(params.radius / 2)), params.eps),
                    work)
    del guide, p
    coef += trust * (linear - coef)
    del linear, trust
    sample = _Sampler(np.concatenate([coef, plain[None], band_small[None].astype(np.float32)]), (width, height))
    band = _nearest(band_small, (width, height))
    for box in _row_strips(mask.size):
        ys, xs = np.nonzero(band(box[1], box[3]))
        if not ys.size:
            continue
        up = sample(ys + box[1], xs)
        alpha = up[3] + _dot(up[:3], _colours(np.asarray(rgb.crop(box)), ys, xs))
        np.clip(alpha, 0.0, 1.0, out=alpha)
        strip = np.array(mask.crop(box))
        model = strip[ys, xs]
        before = model.astype(np.float32) * np.float32(1 / 255)
        alpha -= before
        weight = up[4]  # a view: the feather below applies to the crossing too
        if params.feather:
            weight *= np.clip(up[5] * np.float32(params.feather) - np.float32(params.feather - 1), 0, 1)
        alpha *= _floored(weight, params.floor)
        alpha += before
        strip[ys, xs] = _crossing((alpha * 255 + 0.5).astype(np.uint8), model, weight, params)
        mask.paste(Image.fromarray(strip, "L"), box[:2])
    return mask


def _fusion_means(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Blur-fusion's local means (Forte and Pitie 2021, eq. 4-5): F weighted by alpha, B by 1 - alpha."""
    mean_a = box_mean(alpha, radius)
    mean_f = box_mean(fg * alpha, radius)
    mean_f /= mean_a + np.float32(1e-5)
    mean_b = box_mean(bg * (1 - alpha), radius)
    mean_b /= (1 - mean_a) + np.float32(1e-5)
    return mean_f, mean_b


def _fused(image: np.ndarray, alpha: np.ndarray, mean_f: np.ndarray, mean_b: np.ndarray) -> np.ndarray:
    """Blur-fusion's update (eq. 6), F = F_mean + alpha (I - alpha F_mean - (1 - alpha) B_mean), in [0, 1];
    any layout where alpha broadcasts against the colours."""
    f = image - alpha * mean_f - (1 - alpha) * mean_b
    f *= alpha
    f += mean_f
    return np.clip(f, 0.0, 1.0, out=f)


def _opacity(colours: np.ndarray, alpha: np.ndarray, fore: np.ndarray, back: np.ndarray, opaque: float
             ) -> np.ndarray:
    """alpha (N,) raised to the colours' own evidence, min(1, |I - B| / |F - B|) for the local means F and B,
    counted spread/(spread + opaque) by how far apart F and B are. Where the model's alpha is too low on an
    opaque pixel (its colour as far from the background as the foreground's), blur-fusion would take out
    background that is not there; a mixed pixel's distance ratio is its alpha, so an edge keeps its estimate."""
    diff = fore - back
    spread = _dot(diff, diff)
    rest = colours - back
    ratio = np.sqrt(_dot(rest, rest) / (spread + np.float32(1e-6)))
    gain = np.maximum(ratio - alpha, 0) * (spread / (spread + np.float32(opaque)))
    return np.minimum(alpha + gain, 1)


def decontaminate(rgb: Image.Image, alpha: Image.Image, params: ForegroundParams = ForegroundParams()
                  ) -> Image.Image:
    """The photo (RGB) with estimated foreground colours wherever 1 < alpha (L) < 254; other pixels unchanged.

    The photo is changed in place (and returned): it is the pipeline's own output-size decode, and a copy
    would add 48 MB at 12 MP to the request's peak.

    Level 1 (the wide blur) runs on the image reduced to half NARROW_SIDE, where a 90 px window (at 1024 px)
    is a 23 px one; level 2 (the narrow blur) on the image reduced to NARROW_SIDE, starting from level 1's
    estimate; its local means are then sampled at the soft pixels of the full-size image, where the last
    update uses the full-size colour and alpha. The change from the photo's colour is weighed by how
    plain the background around is (params.busy), whether the pixel is at an edge at all (params.reach) and
    how well the local means explain it (params.residual); an alpha the colour shows to be too low is
    raised first (params.opaque). Each guards against one way the estimate made an image worse on
    bench/edges.py's composites (docs/performance.md, Edges).
    """
    width, height = alpha.size
    narrow_size = _work_size((width, height), NARROW_SIDE)
    image, a = _reduced(rgb, narrow_size), _reduced(alpha, narrow_size)
    small, small_a = _halved(image), _halved(a)
    wide = max(1, round(params.wide * max(small_a.shape) / WORK_SIDE))
    # the wide level's means are so smooth that nearest-neighbour upsampling loses nothing
    wide_means = _fusion_means(small, small, small_a, wide)
    mean_f, mean_b = (_doubled(mean, a.shape) for mean in wide_means)
    f1 = _fused(image, a, mean_f, mean_b)
    narrow = max(1, round(params.narrow * max(narrow_size) / WORK_SIDE))
    plain = np.ones(a.shape, np.float32)
    if params.busy:
        far = _sure(small_a <= np.float32(0.02), params.far)  # background away from the edge's mixed pixels
        sums = box_mean(np.concatenate([small * far, far[None], ((small * small).sum(axis=0) * far)[None]]), wide)
        weight = sums[3] + np.float32(1e-5)
        mean = sums[:3] / weight
        variance = np.maximum(sums[4] / weight - (mean * mean).sum(axis=0), 0)
        plain = _doubled(np.float32(params.busy) / (np.float32(params.busy) + variance), a.shape)
    if params.reach:
        near = (box_mean((a <= np.float32(0.02)).astype(np.float32), params.reach) > 0).astype(np.float32)
        plain *= box_mean(near, 1)
    sample = _Sampler(np.concatenate([*_fusion_means(f1, mean_b, a, narrow), plain[None]]), (width, height))
    del image, a, small, small_a, mean_f, mean_b, f1
    for box in _row_strips(alpha.size):
        alphas = np.asarray(alpha.crop(box))
        # 1 and 254 are left as they are: there blur-fusion moves a colour by at most one level of 255.
        ys, xs = np.nonzero((alphas > 1) & (alphas < 254))
        if not ys.size:
            continue
        means = sample(ys + box[1], xs)
        a_full = alphas[ys, xs].astype(np.float32) * np.float32(1 / 255)
        strip = np.array(rgb.crop(box))
        colours = _colours(strip, ys, xs)
        fore, back = means[0:3], means[3:6]
        if params.opaque:
            a_full = _opacity(colours, a_full, fore, back, params.opaque)
        f = _fused(colours, a_full, fore, back)
        weight = _floored(means[6], params.floor)
        if params.residual:
            rest = colours - a_full * fore - (1 - a_full) * back
            weight = weight / (1 + _dot(rest, rest) / np.float32(params.residual))
        f -= colours
        f *= weight
        f += colours
        strip[ys, xs] = ((f * 255 + 0.5).astype(np.uint8)).T
        rgb.paste(Image.fromarray(strip, "RGB"), box[:2])
    return rgb
