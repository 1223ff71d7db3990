"""Ground-truth masks for the localisation metrics: a PNG whose non-zero pixels are the object.

Masks come from three places: the zoo samples (``model_zoo.load_sample``), a PNG uploaded beside
an image on the Images page, and ``<stem>_mask.png`` beside an image (or ``--mask``) on the CLI.
A mask must have the image's size; it is resized with the image to the model's input later
(nearest neighbour, :func:`workbench.metrics.base.fit_mask`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .errors import ImageRejected
from .settings import Settings, get_settings


def read_mask(data: bytes, name: str = "mask", *, size: tuple[int, int] | None = None, settings: Settings | None = None) -> np.ndarray:
    """PNG bytes -> bool H x W: any non-zero colour value is in the mask (alpha is not a colour).

    ``size``: the (H, W) the image has; a mask of another size is refused.
    Raises ImageRejected with one line saying what to fix.
    """
    from PIL import Image

    settings = settings or get_settings()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ImageRejected(f"{name}: a mask must be a PNG (any non-zero pixel is in the mask); save it as PNG.")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > settings.max_image_pixels:
                raise ImageRejected(f"{name}: {im.width}x{im.height} is over this deployment's pixel limit; use a smaller mask.")
            arr = np.asarray(im.convert("RGBA") if im.mode in ("P", "PA") else im)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a corrupt file
        raise ImageRejected(f"{name}: the PNG does not decode ({type(exc).__name__}); export the mask again.") from None
    if arr.ndim == 3:
        colour = arr[..., : 3 if arr.shape[-1] in (3, 4) else 1]  # RGB(A) -> RGB, LA -> L
        mask = (colour != 0).any(axis=-1)
    else:
        mask = arr != 0
    if size is not None and mask.shape != tuple(size):
        raise ImageRejected(
            f"{name}: the mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}; give a mask of the image's size."
        )
    return mask


def mask_beside(image_path: str | Path) -> Path | None:
    """``<stem>_mask.png`` next to an image, if there is one."""
    path = Path(image_path)
    candidate = path.with_name(f"{path.stem}_mask.png")
    return candidate if candidate.is_file() else None
