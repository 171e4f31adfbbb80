"""Decoding and conversions: every input mode ends as RGB (+ alpha) of the right size and orientation."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app import imaging, model_io
from app.errors import CorruptImage, TooLarge, UnsupportedMedia
from tests.conftest import image_bytes, photo

MAX_PIXELS = 40_000_000


def decode(data: bytes, max_dimension: int = 1024, model_size: int = 32) -> imaging.Decoded:
    return imaging.decode(imaging.open_checked(data, MAX_PIXELS), max_dimension, model_size)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR that claims width x height, with a tiny IDAT: a decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size, limit, expected", [
    ((2000, 1000), 1024, (1024, 512)),
    ((1000, 2000), 1024, (512, 1024)),
    ((800, 600), 1024, (800, 600)),
    ((10000, 3), 1024, (1024, 1)),
    ((3, 10000), 1024, (1, 1024)),
])
def test_scaled_size_keeps_aspect_and_never_drops_below_one_pixel(size, limit, expected):
    assert imaging.scaled_size(size, limit) == expected


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "CMYK", "I", "I;16", "F", "LA", "RGBA", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    if mode in ("I;16", "I", "F"):
        grey = Image.fromarray(np.asarray(photo((40, 30)).convert("L"), dtype=np.uint16) * 257)
        source = grey if mode == "I;16" else grey.convert(mode)
    else:
        source = photo((40, 30)).convert(mode)
    fmt = {"CMYK": "TIFF", "I": "TIFF", "I;16": "PNG", "F": "TIFF", "YCbCr": "JPEG", "1": "BMP"}.get(mode, "PNG")
    decoded = decode(image_bytes(source, fmt))
    assert decoded.rgb.mode == "RGB" and decoded.rgb.size == (40, 30)
    assert decoded.model_rgb.mode == "RGB" and decoded.model_rgb.size == (32, 32)
    assert np.asarray(decoded.rgb).max() > 128, f"{mode} lost its brightness"


def test_sixteen_bit_is_scaled_not_clipped():
    grey = np.full((10, 10), 65535 // 2, dtype=np.uint16)
    decoded = decode(image_bytes(Image.fromarray(grey), "PNG"))
    assert 120 <= np.asarray(decoded.rgb)[0, 0, 0] <= 135


def test_rgba_keeps_its_alpha_and_opaque_alpha_is_dropped():
    rgba = photo((20, 20)).convert("RGBA")
    pixels = np.asarray(rgba).copy()
    pixels[:, :10, 3] = 0
    decoded = decode(image_bytes(Image.fromarray(pixels, "RGBA"), "PNG"))
    assert decoded.alpha is not None and np.asarray(decoded.alpha)[:, :10].max() == 0
    assert decode(image_bytes(photo((20, 20)).convert("RGBA"), "PNG")).alpha is None


def test_palette_with_transparency_and_la_keep_alpha():
    palette = photo((20, 20)).convert("P")
    palette.paste(0, (0, 0, 5, 5))
    assert decode(image_bytes(palette, "PNG", transparency=0)).alpha is not None
    la = Image.merge("LA", (photo((20, 20)).convert("L"), Image.new("L", (20, 20), 7)))
    assert decode(image_bytes(la, "PNG")).alpha.getextrema() == (7, 7)


def test_exif_orientation_is_applied():
    source = photo((60, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode(image_bytes(source, "JPEG", exif=exif.tobytes()))
    assert decoded.rgb.size == (20, 60)


def test_large_images_are_resized_and_large_jpegs_decoded_in_draft():
    decoded = decode(image_bytes(photo((3000, 1500)), "JPEG"), max_dimension=1024, model_size=320)
    assert decoded.rgb.size == (1024, 512)
    assert decoded.model_rgb.size == (320, 320)


def test_animated_gif_and_multipage_tiff_give_the_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for fmt in ("GIF", "TIFF", "WEBP"):
        buffer = io.BytesIO()
        frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
        decoded = decode(buffer.getvalue())
        red, green, _ = np.asarray(decoded.rgb)[8, 8]
        assert red > 200 and green < 50, fmt


def test_tiny_and_extreme_aspect_images():
    assert decode(image_bytes(Image.new("RGB", (1, 1), "white"), "PNG")).rgb.size == (1, 1)
    assert decode(image_bytes(Image.new("RGB", (10000, 3), "white"), "PNG")).rgb.size == (1024, 1)


def test_not_an_image_is_415():
    with pytest.raises(UnsupportedMedia):
        imaging.open_checked(b"hello, I am text" * 10, MAX_PIXELS)


def test_unaccepted_image_format_is_415():
    with pytest.raises(UnsupportedMedia, match="ICO|not accepted"):
        imaging.open_checked(image_bytes(photo((16, 16)), "ICO"), MAX_PIXELS)


def test_truncated_image_is_422():
    data = image_bytes(photo((200, 200)), "PNG")
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2])
    jpeg = image_bytes(photo((200, 200)), "JPEG")
    with pytest.raises(CorruptImage):
        decode(jpeg[: len(jpeg) // 3])


@pytest.mark.parametrize("head", [b"GIF89a", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\x00\x00\x00\x00WEBPVP8 "])
def test_a_header_alone_is_corrupt_not_unsupported(head):
    with pytest.raises(CorruptImage):
        imaging.open_checked(head, MAX_PIXELS)


def test_empty_is_corrupt():
    with pytest.raises(CorruptImage):
        imaging.open_checked(b"", MAX_PIXELS)


def test_pixel_bomb_is_refused_before_decoding():
    with pytest.raises(TooLarge, match="pixels"):
        imaging.open_checked(png_header_only(60000, 60000), MAX_PIXELS)
    with pytest.raises(TooLarge):
        imaging.open_checked(png_header_only(7000, 7000), MAX_PIXELS)


@pytest.mark.parametrize("name", ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.tiff", "f.gif", "g.bmp", "noext"])
def test_accepted_extensions(name):
    imaging.check_extension(name)


@pytest.mark.parametrize("name", ["a.txt", "b.exe", "c.svg", "d.png.php"])
def test_refused_extensions(name):
    with pytest.raises(UnsupportedMedia):
        imaging.check_extension(name)


def test_model_input_matches_rembg_normalisation():
    rgb = Image.fromarray(np.array([[[0, 128, 255]]], dtype=np.uint8))
    tensor = model_io.model_input(rgb, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert tensor.shape == (1, 3, 1, 1) and tensor.dtype == np.float32
    expected = (np.array([0, 128, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(tensor.ravel(), expected, atol=1e-5)


def test_mask_from_output_normalises_and_resizes():
    prediction = np.linspace(-3, 5, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    mask = model_io.mask_from_output(prediction, (8, 8))
    assert mask.mode == "L" and mask.size == (8, 8)
    assert mask.getextrema()[0] <= 5 and mask.getextrema()[1] >= 250
    flat = model_io.mask_from_output(np.zeros((1, 1, 4, 4), np.float32), (4, 4))
    assert flat.getextrema() == (0, 0)


def test_cutout_fill_and_encode():
    rgb = photo((10, 10))
    alpha = Image.new("L", (10, 10), 0)
    alpha.paste(255, (0, 0, 5, 10))
    cut = Image.open(io.BytesIO(imaging.encode(imaging.cutout(rgb, alpha), "PNG")))
    assert cut.mode == "RGBA" and cut.getpixel((0, 0))[:3] == rgb.getpixel((0, 0)) and cut.getpixel((9, 0))[3] == 0
    green_under = imaging.over_background(rgb, alpha, imaging.solid(rgb.size, (0, 255, 0, 255)))
    filled = Image.open(io.BytesIO(imaging.encode(green_under, "JPEG")))
    assert filled.format == "JPEG" and filled.mode == "RGB"
    red, green, blue = filled.getpixel((9, 5))
    assert green > 200 and red < 60 and blue < 60
