"""Safe image intake: uploaded bytes -> float32 pixels in [0, 1], and back to PNG for storage.

The format is sniffed from the leading bytes, never from the file name, and only the
decoder of that one format is allowed to open the file, so PostScript/EPS (which Pillow
hands to Ghostscript), PDF, TIFF or SVG never reach a decoder. The pixel count is checked
on the header before any pixel is decoded. Everything done to the picture on the way
(EXIF rotation, alpha compositing, bit-depth scaling, colour conversion, frame choice)
is recorded in :attr:`LoadedImage.notes` so the UI can say so.

Pillow is imported inside the functions; importing this module costs numpy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np

from .errors import ImageRejected, ParameterError
from .settings import Settings, get_settings

# Pillow's format names, as passed to ``Image.open(..., formats=[...])``.
IMAGE_FORMATS: dict[str, str] = {
    "PNG": "PNG image",
    "JPEG": "JPEG image",
    "WEBP": "WebP image",
    "BMP": "Windows bitmap",
    "GIF": "GIF image",
}

_ACCEPTED = "PNG, JPEG, WebP, BMP or GIF"

# Formats we recognise only to name them in the refusal.
_KNOWN_OTHERS: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "a PDF document"),
    (b"%!PS", 0, "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", 0, "an EPS file"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"8BPS", 0, "a Photoshop document"),
    (b"\x00\x00\x01\x00", 0, "a Windows icon"),
    (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", 0, "a JPEG 2000 codestream"),
    (b"ftypheic", 4, "a HEIC image"),
    (b"ftypheix", 4, "a HEIC image"),
    (b"ftypmif1", 4, "a HEIF image"),
    (b"ftypavif", 4, "an AVIF image"),
    (b"\xff\x0a", 0, "a JPEG XL image"),
    (b"PK\x03\x04", 0, "a zip archive"),
)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded upload. ``eq=False``: two uploads are the same when their ``sha256`` is."""

    name: str
    pixels: np.ndarray  # float32 H x W x C in [0, 1]; C = 3, or 1 when asked
    sha256: str  # of the uploaded bytes
    format: str  # PNG / JPEG / WEBP / BMP / GIF
    original_size: tuple[int, int]  # (H, W) as decoded, after EXIF rotation
    notes: tuple[str, ...]  # what was done to the picture, in order


def sniff_image_format(data: bytes) -> str | None:
    """The Pillow format name for the leading bytes, or None when it is none of :data:`IMAGE_FORMATS`."""
    head = bytes(data[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    return None


def _describe_other(data: bytes) -> str:
    head = bytes(data[:64])
    for magic, offset, what in _KNOWN_OTHERS:
        if head[offset : offset + len(magic)] == magic:
            return what
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml")) or b"<svg" in bytes(data[:1024]).lower():
        return "an SVG/XML document"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "a text file"
        except UnicodeDecodeError:
            pass
    return "not an image format the workbench reads"


def _reject(name: str, why: str, fix: str) -> ImageRejected:
    return ImageRejected(f"{name}: {why}; {fix}")


def _png_bit_depth(data: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from the PNG IHDR chunk."""
    if len(data) >= 26 and data[12:16] == b"IHDR":
        return data[24], data[25]
    return 8, 0


def load_image(
    data: bytes,
    name: str = "image",
    *,
    channels: int = 3,
    background: tuple[int, int, int] = (255, 255, 255),
    settings: Settings | None = None,
) -> LoadedImage:
    """Decode an uploaded image safely.

    Args:
        data: the uploaded bytes.
        name: shown in messages and kept on the result.
        channels: 3 for RGB (grayscale is replicated) or 1 for luminance.
        background: RGB 0-255 colour that transparent pixels are composited on.
        settings: operator settings; :func:`workbench.settings.get_settings` when None.

    Returns:
        A :class:`LoadedImage` with float32 pixels in [0, 1].

    Raises:
        ImageRejected: not one of the accepted formats, too many pixels, too small, or corrupt.
    """
    if channels not in (1, 3):
        raise ParameterError(f"channels must be 1 or 3, got {channels!r}.")
    if len(background) != 3 or not all(0 <= int(v) <= 255 for v in background):
        raise ParameterError(f"background must be an RGB triple of 0-255 values, got {background!r}.")
    settings = settings or get_settings()
    data = bytes(data)
    if not data:
        raise _reject(name, "the file is empty", f"upload a {_ACCEPTED} image")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise _reject(name, f"this is {_describe_other(data)}, not a {_ACCEPTED} image", "convert it to PNG and upload again")

    from PIL import Image, ImageOps

    notes: list[str] = []
    try:
        # formats=[fmt]: only the sniffed decoder may look at the bytes, whatever they claim to be.
        im = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _reject(name, f"the header claims a decompression-bomb size ({exc})", "upload a smaller image") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        if fmt == "BMP" and _describe_other(data) == "a text file":  # "BM..." can start plain text
            raise _reject(name, f"this is a text file, not a {_ACCEPTED} image", "convert it to PNG and upload again") from None
        raise _reject(name, f"the {fmt} header is corrupt ({type(exc).__name__})", "re-save the image and upload again") from None

    with im:
        width, height = im.size
        if width * height > settings.max_image_pixels:
            raise _reject(
                name,
                f"the image is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit of "
                f"{settings.max_image_pixels / 1e6:g} megapixels",
                "downscale it and upload again",
            )
        if min(width, height) < settings.min_image_side:
            raise _reject(
                name,
                f"the image is {width}x{height} pixels, smaller than {settings.min_image_side} px on a side",
                "upload a larger image",
            )
        try:
            frames = int(getattr(im, "n_frames", 1))
            if frames > 1:
                im.seek(0)
                notes.append(f"{fmt}: first of {frames} frames used")
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _reject(name, "a frame is larger than the decoder allows", "upload a smaller image") from None
        except Exception as exc:
            raise _reject(
                name, f"the {fmt} data is truncated or corrupt ({type(exc).__name__})", "re-save the image and upload again"
            ) from None

        if fmt == "PNG":
            depth, colour_type = _png_bit_depth(data)
            if depth == 16 and colour_type in (2, 4, 6):
                notes.append("16-bit colour reduced to 8 bits by the decoder")

        decoded = im
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:
            orientation = 1
        if orientation in range(2, 9):
            try:
                decoded = ImageOps.exif_transpose(im)
                notes.append("EXIF orientation applied")
            except Exception:
                notes.append("EXIF orientation unreadable, ignored")

        pixels = _to_unit_float(decoded, channels, tuple(int(v) for v in background), notes)

    return LoadedImage(
        name=name,
        pixels=pixels,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        original_size=(int(pixels.shape[0]), int(pixels.shape[1])),
        notes=tuple(notes),
    )


_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's "L"


def _background_name(background: tuple[int, int, int]) -> str:
    return {(255, 255, 255): "white", (0, 0, 0): "black"}.get(background, f"RGB{background}")


def _to_unit_float(im, channels: int, background: tuple[int, int, int], notes: list[str]) -> np.ndarray:
    """Decoded Pillow image -> float32 H x W x channels in [0, 1]."""
    mode = im.mode
    alpha = None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples: scale by 65535 so no precision is lost to an 8-bit conversion.
        values = np.asarray(im).astype(np.float32)
        base = np.clip(values / 65535.0, 0.0, 1.0)
        notes.append("16-bit scaled")
    elif mode == "F":
        base = np.clip(np.asarray(im, np.float32), 0.0, 1.0)
    elif mode in ("1", "L"):
        base = np.asarray(im.convert("L"), np.float32) / 255.0
    elif mode in ("LA", "La"):
        la = np.asarray(im.convert("LA"), np.float32) / 255.0
        base, alpha = la[..., 0], la[..., 1]
    elif mode in ("RGBA", "RGBa", "P", "PA"):
        if mode == "P" and "transparency" not in im.info:
            base = np.asarray(im.convert("RGB"), np.float32) / 255.0
        else:
            rgba = np.asarray(im.convert("RGBA"), np.float32) / 255.0
            base, alpha = rgba[..., :3], rgba[..., 3]
    elif mode == "CMYK":
        base = np.asarray(im.convert("RGB"), np.float32) / 255.0
        notes.append("CMYK converted to RGB")
    elif mode == "RGB":
        base = np.asarray(im, np.float32) / 255.0
    else:  # YCbCr, LAB, HSV, ...
        base = np.asarray(im.convert("RGB"), np.float32) / 255.0
        notes.append(f"{mode} converted to RGB")

    gray = base.ndim == 2
    if gray and channels == 3:
        base = np.repeat(base[..., None], 3, axis=-1)
        notes.append("grayscale replicated to 3 channels")
    elif gray:
        base = base[..., None]
    elif channels == 1:
        base = (base @ _LUMA)[..., None]
        notes.append("converted to luminance (1 channel)")

    if alpha is not None and float(alpha.min()) < 1.0:
        bg = np.asarray(background, np.float32) / 255.0
        if channels == 1:
            bg = np.asarray([float(bg @ _LUMA)], np.float32)
        a = alpha[..., None]
        base = base * a + bg * (1.0 - a)
        notes.append(f"transparency composited on {_background_name(background)}")

    return np.ascontiguousarray(np.clip(base, 0.0, 1.0), dtype=np.float32)


def resize_for_model(pixels: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Bilinear (or ``resample``: nearest, bicubic, lanczos, box, hamming) resize of float pixels to ``size`` = (H, W).

    Each channel is resized in Pillow's 32-bit float mode, so values keep full precision;
    Pillow widens the bilinear kernel when shrinking, which antialiases. H x W x C input
    gives H x W x C float32; a 2-D map gives a 2-D map.
    """
    from PIL import Image

    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ParameterError(f"Resize target must be positive, got {size!r}.")
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ParameterError(f"Expected H x W or H x W x C pixels, got shape {arr.shape}.")
    planar = arr.ndim == 2
    if planar:
        arr = arr[..., None]
    if arr.shape[:2] == (height, width):
        out = arr.copy()
    else:
        out = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(arr[..., c])).resize(
                        (width, height), Image.Resampling[resample.upper()]
                    ),
                    dtype=np.float32,
                )
                for c in range(arr.shape[-1])
            ],
            axis=-1,
        )
    return out[..., 0] if planar else out


def image_to_png_bytes(pixels: np.ndarray) -> bytes:
    """Float pixels in [0, 1] (H x W, H x W x 1, 3 or 4) -> 8-bit PNG bytes with no metadata."""
    from PIL import Image

    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ParameterError(f"Expected H x W x 1, 3 or 4 pixels, got shape {arr.shape}.")
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    # A fresh image carries no EXIF/text chunks; nothing from the upload is copied over.
    Image.fromarray(np.ascontiguousarray(arr)).save(buffer, format="PNG")
    return buffer.getvalue()
