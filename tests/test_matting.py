"""app.matting on small synthetic images with a known F, B and alpha."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from app import matting


def refine_alpha(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """matting.refine on arrays: (H, W, 3) uint8 photo, (H, W) uint8 mask -> (H, W) uint8 alpha."""
    return np.asarray(matting.refine(Image.fromarray(rgb, "RGB"), Image.fromarray(mask, "L")))


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """matting.decontaminate on arrays (on a copy: it works in place): -> (H, W, 3) uint8 colours."""
    return np.asarray(matting.decontaminate(Image.fromarray(rgb, "RGB"), Image.fromarray(alpha, "L")))


def _scene(size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A red disc with a soft 6 px rim over green: (I, F, alpha 0..1, B, the model-like hard mask)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = np.hypot(yy - size / 2, xx - size / 2)
    alpha = np.clip((size * 0.3 - radius) / 6 + 0.5, 0, 1)
    fg = np.zeros((size, size, 3), np.float32)
    fg[..., 0] = 0.85
    fg[..., 2] = 0.2 + 0.1 * (xx / size)
    bg = np.zeros((size, size, 3), np.float32)
    bg[..., 1] = 0.8
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    mask = np.where(alpha >= 0.5, 255, 0).astype(np.uint8)
    return (image * 255 + 0.5).astype(np.uint8), fg, alpha, bg, mask


def test_box_mean_matches_a_direct_window_mean() -> None:
    x = np.random.default_rng(0).random((23, 17), dtype=np.float32)
    got = matting.box_mean(x, 4)
    want = np.array([[x[max(0, i - 4):i + 5, max(0, j - 4):j + 5].mean() for j in range(17)] for i in range(23)])
    assert np.abs(got - want).max() < 1e-5


def test_estimate_foreground_lowers_the_colour_error_and_keeps_opaque_pixels() -> None:
    image, fg, alpha, _, _ = _scene()
    alpha8 = (alpha * 255 + 0.5).astype(np.uint8)
    soft = (alpha8 > 0) & (alpha8 < 255)
    out = estimate_foreground(image, alpha8)
    before = np.abs(image[soft] / 255 - fg[soft]).mean()
    after = np.abs(out[soft] / 255 - fg[soft]).mean()
    assert after < 0.5 * before
    assert np.array_equal(out[alpha8 == 255], image[alpha8 == 255])


def test_refine_alpha_lowers_the_alpha_error_and_keeps_the_interior() -> None:
    image, _, alpha, _, mask = _scene()
    out = refine_alpha(image, mask)
    assert out.dtype == np.uint8 and out.min() >= 0 and out.max() <= 255
    rim = (alpha > 0) & (alpha < 1)
    before = np.abs(mask[rim] / 255 - alpha[rim]).mean()
    after = np.abs(out[rim] / 255 - alpha[rim]).mean()
    assert after < 0.7 * before
    size = mask.shape[0]
    centre = slice(size // 2 - 10, size // 2 + 10)
    assert np.array_equal(out[centre, centre], mask[centre, centre])
    assert np.array_equal(out[:5], mask[:5])


def test_no_band_returns_the_mask_unchanged() -> None:
    image, _, _, _, _ = _scene()
    full = np.full(image.shape[:2], 255, np.uint8)
    assert np.array_equal(refine_alpha(image, full), full)
    assert np.array_equal(estimate_foreground(image, full), image)


def _contour_iou(out: np.ndarray, alpha: np.ndarray) -> float:
    fore, truth = out >= 128, alpha >= 0.5
    return float((fore & truth).sum() / (fore | truth).sum())


def test_refine_upsamples_a_small_mask_along_the_photo_edge() -> None:
    """A mask made at a quarter of the output's size, half a pixel (there) too large, and resized (what a model's 1024 px
    output becomes in a 4096 px answer) is a blurred step off the photo's edge; refined against the full-size
    photo its softness and its 0.5 contour follow the real edge, inside the resize's ramp only."""
    image, _, alpha, _, _ = _scene(256)
    yy, xx = np.mgrid[0:64, 0:64]
    small = Image.fromarray(np.where(np.hypot(yy - 31.5, xx - 31.5) <= 64 * 0.3 + 0.5, 255, 0).astype(np.uint8))
    resized = np.asarray(small.resize((256, 256), Image.Resampling.LANCZOS))
    out = refine_alpha(image, resized)
    rim = (alpha > 0) & (alpha < 1)
    before = np.abs(resized[rim] / 255 - alpha[rim]).mean()
    after = np.abs(out[rim] / 255 - alpha[rim]).mean()
    assert after < 0.8 * before
    assert _contour_iou(out, alpha) > _contour_iou(resized, alpha) + 0.005
    sure = (resized <= 5) | (resized >= 250)
    assert np.array_equal((out >= 128)[sure], (resized >= 128)[sure])


def test_where_the_model_is_sure_no_pixel_changes_sides() -> None:
    """A soft mask 4 px too large over noise-free colours (the estimate wants to move the contour everywhere):
    pixels the model is sure of (mask <= 0.02 or >= 0.98) keep their side of 0.5 exactly; only its own soft
    ramp may cross, and some of it does, towards the photo's edge."""
    image, _, alpha, _, _ = _scene()
    yy, xx = np.mgrid[0:256, 0:256]
    mask = (np.clip((256 * 0.3 + 4 - np.hypot(yy - 128, xx - 128)) / 3 + 0.5, 0, 1) * 255 + 0.5).astype(np.uint8)
    out = refine_alpha(image, mask)
    sure = (mask <= 5) | (mask >= 250)
    assert np.array_equal((out >= 128)[sure], (mask >= 128)[sure])
    crossed = (out >= 128) != (mask >= 128)
    assert crossed.sum() > 100
    assert np.all(alpha[crossed] < 0.5)  # every crossing is right: subject the model claimed that is background
    rim = (alpha > 0) & (alpha < 1)
    assert np.abs(out[rim] / 255 - alpha[rim]).mean() < 0.95 * np.abs(mask[rim] / 255 - alpha[rim]).mean()


def test_on_an_ambiguous_background_a_soft_mask_comes_back_exactly() -> None:
    """The same soft ramp over a busy background: the unmixing cannot tell the colours apart, so nothing
    crosses and nothing moves."""
    image, _ = _busy()
    yy, xx = np.mgrid[0:256, 0:256]
    mask = (np.clip((256 * 0.3 + 4 - np.hypot(yy - 128, xx - 128)) / 3 + 0.5, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(refine_alpha(image, mask), mask)


def test_pillow_and_array_forms_agree_and_soft_pixels_only_change() -> None:
    image, _, alpha, _, mask = _scene()
    refined = matting.refine(Image.fromarray(image), Image.fromarray(mask))
    assert refined.mode == "L" and np.array_equal(np.asarray(refined), refine_alpha(image, mask))
    alpha8 = (alpha * 255 + 0.5).astype(np.uint8)
    cleaned = np.asarray(matting.decontaminate(Image.fromarray(image), Image.fromarray(alpha8)))
    untouched = (alpha8 <= 1) | (alpha8 >= 254)
    assert np.array_equal(cleaned[untouched], image[untouched])
    assert not np.array_equal(cleaned[~untouched], image[~untouched])


def test_a_sure_mask_never_moves_a_pixel_across_one_half() -> None:
    """A hard mask 3 px too large (the model sure of an edge off the photo's): the alpha moves towards the
    photo's edge but every pixel stays on the model's side of 0.5, since the model is sure everywhere."""
    image, _, alpha, _, _ = _scene()
    yy, xx = np.mgrid[0:256, 0:256]
    mask = np.where(np.hypot(yy - 128, xx - 128) <= 256 * 0.3 + 3, 255, 0).astype(np.uint8)
    out = refine_alpha(image, mask)
    assert np.array_equal(out >= 128, mask >= 128)
    wrong = (mask == 255) & (alpha < 0.1)  # background the model calls subject
    assert wrong.sum() > 200 and out[wrong].mean() < 0.6 * 255  # mostly down to the 0.5 the side allows


def _busy(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The red disc over a background of random colours (foliage-like), and the hard mask."""
    image, _, alpha, _, mask = _scene(size)
    noise = np.random.default_rng(1).random((size, size, 3), dtype=np.float32)
    fg = image.astype(np.float32) / 255
    mixed = alpha[..., None] * np.array([0.85, 0, 0.25], np.float32) + (1 - alpha[..., None]) * noise
    return np.where(alpha[..., None] >= 1, fg, mixed).__mul__(255).__add__(0.5).astype(np.uint8), mask


def test_on_a_busy_background_both_leave_the_model_and_the_photo_exactly() -> None:
    """Where the photo's colours cannot tell foreground from background, the estimates would be guesses:
    the mask and the colours come back unchanged, not a sliver off."""
    image, mask = _busy()
    assert np.array_equal(refine_alpha(image, mask), mask)
    soft = np.asarray(Image.fromarray(mask).filter(ImageFilter.BoxBlur(2)))
    assert ((soft > 1) & (soft < 254)).sum() > 1000
    assert np.array_equal(estimate_foreground(image, soft), image)


def test_decontaminate_leaves_an_opaque_region_the_model_doubts() -> None:
    """A blue block over green that the model calls 70 % opaque throughout (as IS-Net does to a dark suit):
    away from the edge, "removing" green would tint the block; the colours there stay the photo's."""
    image = np.zeros((192, 192, 3), np.uint8)
    image[..., 1] = 200
    image[32:160, 32:160] = (40, 50, 160)
    alpha = np.zeros((192, 192), np.uint8)
    alpha[32:160, 32:160] = 178
    out = estimate_foreground(image, alpha).astype(int)
    assert np.array_equal(out[48:144, 48:144], image[48:144, 48:144])
    assert not np.array_equal(out[32:36, 32:160], image[32:36, 32:160])  # the edge itself is estimated
