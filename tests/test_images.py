"""Image intake: only sniffed formats reach one decoder, limits hold before decoding, and
every conversion (EXIF, alpha, 16-bit, CMYK, frames, grayscale) gives the known pixels."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile

from workbench.errors import ImageRejected
from workbench.images import LoadedImage, image_to_png_bytes, load_image, resize_for_model
from workbench.settings import Settings


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def raw_png(width: int, height: int, idat: bytes = b"", depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG written by hand, so the header can claim any size."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(idat))
        + png_chunk(b"IEND", b"")
    )


def rgb(width: int = 32, height: int = 24, colour=(200, 30, 60)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if any pixel data is decoded."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


# ---------------------------------------------------------------- size limits
def test_bomb_header_beyond_pillow_limit_is_refused_before_decoding(no_decoding):
    data = raw_png(20000, 20000)
    with pytest.raises(ImageRejected, match="decompression-bomb|megapixels"):
        load_image(data, "bomb.png")


def test_header_over_configured_limit_is_refused_before_decoding(no_decoding):
    data = raw_png(8000, 8000)  # 64 MP: under Pillow's own limit, over the default 40 MP
    with pytest.raises(ImageRejected, match=r"8000x8000 \(64.0 megapixels\).*40 megapixels"):
        load_image(data, "big.png")


def test_pixel_limit_comes_from_settings():
    data = encode(rgb(200, 100), "PNG")
    with pytest.raises(ImageRejected, match="megapixels"):
        load_image(data, settings=Settings(max_image_pixels=200 * 100 - 1))
    assert load_image(data, settings=Settings(max_image_pixels=200 * 100)).pixels.shape == (100, 200, 3)


def test_pillow_global_limit_is_left_alone():
    before = Image.MAX_IMAGE_PIXELS
    load_image(encode(rgb(), "PNG"))
    with pytest.raises(ImageRejected):
        load_image(raw_png(20000, 20000))
    assert Image.MAX_IMAGE_PIXELS == before


def test_one_pixel_image_is_refused():
    with pytest.raises(ImageRejected, match="1x1 pixels, smaller than 16 px"):
        load_image(encode(rgb(1, 1), "PNG"), "dot.png")


def test_thin_image_is_refused():
    with pytest.raises(ImageRejected, match="smaller than 16 px"):
        load_image(encode(rgb(300, 8), "PNG"))


# ---------------------------------------------------------------- format sniffing
def test_text_file_named_png_is_refused():
    with pytest.raises(ImageRejected, match="cat.png: this is a text file"):
        load_image(b"hello, I am not an image\n" * 10, "cat.png")


def test_text_starting_with_bm_is_refused_as_text():
    with pytest.raises(ImageRejected, match="text file"):
        load_image(b"BMW and BMX are not bitmaps, even if they start with BM.\n", "notes.bmp")


def test_empty_file_is_refused():
    with pytest.raises(ImageRejected, match="empty"):
        load_image(b"", "empty.png")


@pytest.mark.parametrize(
    "data, what",
    [
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\n", "EPS"),
        (b"\xc5\xd0\xd3\xc6" + struct.pack("<IIIIII", 30, 10, 0, 0, 0, 0) + b"\xff\xff" + b"%!PS-Adobe-3.0 EPSF-3.0\n", "EPS"),
        (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 64, "TIFF"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "SVG"),
    ],
)
def test_other_formats_never_reach_a_decoder(monkeypatch, no_decoding, data, what):
    ghostscript_calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ghostscript_calls.append(a))
    monkeypatch.setattr(EpsImagePlugin, "gs_windows_binary", None, raising=False)
    import subprocess

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    monkeypatch.setattr(subprocess, "check_call", no_subprocess)
    with pytest.raises(ImageRejected, match=what):
        load_image(data, "picture.png")
    assert ghostscript_calls == []


def test_format_comes_from_bytes_not_name():
    image = load_image(encode(rgb(), "PNG"), "really-a-png.jpg")
    assert image.format == "PNG"


@pytest.mark.parametrize("fmt, params", [("WEBP", {"lossless": True}), ("BMP", {}), ("PNG", {}), ("GIF", {})])
def test_lossless_formats_are_accepted_with_exact_pixels(fmt, params):
    source = rgb(40, 30, (255, 0, 0))
    image = load_image(encode(source, fmt, **params), f"x.{fmt.lower()}")
    assert isinstance(image, LoadedImage)
    assert image.format == fmt
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (30, 40, 3)
    np.testing.assert_allclose(image.pixels[0, 0], [1.0, 0.0, 0.0], atol=1e-6)


def test_jpeg_is_accepted_and_sha256_is_of_the_upload():
    data = encode(rgb(40, 30, (0, 128, 255)), "JPEG", quality=95)
    image = load_image(data, "photo.jpg")
    assert image.format == "JPEG" and image.original_size == (30, 40)
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_allclose(image.pixels[15, 20], [0.0, 128 / 255, 1.0], atol=4 / 255)
    assert image.notes == ()


# ---------------------------------------------------------------- corrupt files
def test_truncated_png_is_refused():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], "cut.png")


def test_truncated_jpeg_is_refused():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], "cut.jpg")


def test_png_signature_with_garbage_is_refused():
    with pytest.raises(ImageRejected, match="PNG"):
        load_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "fake.png")


# ---------------------------------------------------------------- conversions
def test_exif_orientation_is_applied():
    source = Image.new("RGB", (40, 20), (0, 0, 0))
    source.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = load_image(encode(source, "JPEG", exif=exif, quality=95), "phone.jpg")
    assert image.pixels.shape == (40, 20, 3)
    assert image.original_size == (40, 20)
    assert "EXIF orientation applied" in image.notes
    # after a clockwise turn the left strip is at the top
    assert image.pixels[:8].mean() > 0.9 and image.pixels[-20:].mean() < 0.1


def test_palette_with_transparency_is_composited_on_the_background():
    source = Image.new("P", (20, 20), 1)
    source.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    source.paste(0, (0, 0, 10, 20))  # left half: palette index 0, transparent
    data = encode(source, "PNG", transparency=0)
    on_white = load_image(data, "sprite.png")
    assert "transparency composited on white" in on_white.notes
    np.testing.assert_allclose(on_white.pixels[5, 2], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(on_white.pixels[5, 15], [1.0, 0.0, 0.0])
    on_blue = load_image(data, "sprite.png", background=(0, 0, 255))
    np.testing.assert_allclose(on_blue.pixels[5, 2], [0.0, 0.0, 1.0])


def test_rgba_half_alpha_is_blended():
    data = encode(Image.new("RGBA", (20, 20), (255, 0, 0, 128)), "PNG")
    image = load_image(data, background=(0, 0, 0))
    a = 128 / 255
    np.testing.assert_allclose(image.pixels[0, 0], [a, 0.0, 0.0], atol=1e-6)
    assert "transparency composited on black" in image.notes


def test_opaque_alpha_is_dropped_without_a_note():
    image = load_image(encode(Image.new("RGBA", (20, 20), (1, 2, 3, 255)), "PNG"))
    assert image.notes == ()


def test_16_bit_png_keeps_precision_beyond_8_bits():
    values = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 61 + 1000).astype(np.uint16)
    # neighbouring values differ by 61/65535, far below one 8-bit step (257/65535)
    data = encode(Image.fromarray(values), "PNG")
    image = load_image(data, "depth.png", channels=1)
    assert "16-bit scaled" in image.notes
    np.testing.assert_allclose(image.pixels[..., 0], values / 65535.0, atol=1e-6)
    assert len(np.unique(image.pixels)) == values.size


def test_16_bit_big_endian_png_written_by_hand():
    values = np.linspace(0, 65535, 16 * 16).astype(">u2").reshape(16, 16)
    idat = b"".join(b"\x00" + values[y].tobytes() for y in range(16))
    image = load_image(raw_png(16, 16, idat, depth=16, colour_type=0))
    np.testing.assert_allclose(image.pixels[..., 0], values.astype(np.float64) / 65535.0, atol=1e-6)
    assert image.pixels.shape == (16, 16, 3)


def test_16_bit_colour_png_says_it_was_reduced():
    rows = np.full((16, 16, 3), 40000, dtype=">u2")
    idat = b"".join(b"\x00" + rows[y].tobytes() for y in range(16))
    image = load_image(raw_png(16, 16, idat, depth=16, colour_type=2))
    assert "16-bit colour reduced to 8 bits by the decoder" in image.notes
    np.testing.assert_allclose(image.pixels[0, 0], [40000 / 65535] * 3, atol=1 / 255)


def test_cmyk_jpeg_is_converted_to_rgb():
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    image = load_image(data, "print.jpg")
    assert "CMYK converted to RGB" in image.notes
    np.testing.assert_allclose(image.pixels[16, 16], [1.0, 0.0, 0.0], atol=0.03)


def test_adobe_inverted_cmyk_jpeg_is_converted_to_rgb():
    # Photoshop writes CMYK JPEGs with inverted samples and an Adobe APP14 marker;
    # Pillow's own CMYK writer does the same, so a round trip exercises that path.
    data = encode(Image.new("CMYK", (32, 32), (255, 0, 255, 0)), "JPEG", quality=95)
    assert b"Adobe" in data
    image = load_image(data)
    np.testing.assert_allclose(image.pixels[16, 16], [0.0, 1.0, 0.0], atol=0.03)


def test_gif_first_frame_is_used_and_noted():
    frames = [Image.new("RGB", (24, 24), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    image = load_image(buffer.getvalue(), "anim.gif")
    assert "GIF: first of 3 frames used" in image.notes
    np.testing.assert_allclose(image.pixels[12, 12], [1.0, 0.0, 0.0], atol=1 / 255)


def test_grayscale_is_replicated_to_three_channels():
    image = load_image(encode(Image.new("L", (20, 20), 100), "PNG"))
    assert image.pixels.shape == (20, 20, 3)
    np.testing.assert_allclose(image.pixels[3, 3], [100 / 255] * 3, atol=1e-6)
    assert "grayscale replicated to 3 channels" in image.notes


def test_one_channel_gives_luminance():
    image = load_image(encode(rgb(20, 20, (255, 0, 0)), "PNG"), channels=1)
    assert image.pixels.shape == (20, 20, 1)
    np.testing.assert_allclose(image.pixels[0, 0, 0], 0.299, atol=1e-6)


def test_pixels_are_in_unit_range():
    noise = np.random.default_rng(1).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    image = load_image(encode(Image.fromarray(noise, "RGBA"), "PNG"))
    assert image.pixels.min() >= 0.0 and image.pixels.max() <= 1.0


# ---------------------------------------------------------------- resize and storage
def test_resize_keeps_constants_and_shape():
    pixels = np.full((30, 50, 3), 0.25, np.float32)
    out = resize_for_model(pixels, (64, 64))
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_resize_is_antialiased_when_shrinking():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    out = resize_for_model(checker[..., None], (8, 8))
    np.testing.assert_allclose(out, 0.5, atol=0.02)  # a point sampler would give 0s and 1s


def test_resize_keeps_float_precision_and_2d_maps():
    ramp = np.linspace(0, 1e-3, 40 * 40, dtype=np.float32).reshape(40, 40)
    out = resize_for_model(ramp, (20, 20))
    assert out.shape == (20, 20)
    assert len(np.unique(out)) > 300  # an 8-bit path would collapse these to one or two values


def test_png_round_trip_strips_metadata():
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    upload = encode(rgb(32, 32, (10, 20, 30)), "JPEG", exif=exif, quality=100)
    image = load_image(upload)
    stored = image_to_png_bytes(image.pixels)
    assert stored.startswith(b"\x89PNG") and b"SecretCam" not in stored
    with Image.open(io.BytesIO(stored)) as reopened:
        assert reopened.mode == "RGB" and not reopened.getexif()
        assert set(reopened.info) <= {"dpi", "gamma"}
    again = load_image(stored)
    np.testing.assert_allclose(again.pixels, image.pixels, atol=0.5 / 255 + 1e-6)
    assert image_to_png_bytes(np.zeros((16, 16, 1))).startswith(b"\x89PNG")
