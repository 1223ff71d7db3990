"""Seeded synthetic "shapes" data set with exact object masks.

Each image holds one filled shape from :data:`CLASSES` at a random position, size,
rotation and colour, on a cluttered background: a colour gradient, low-frequency
texture, pixel noise, and a few distractor lines and blobs that are not one of the
classes. The mask is exactly the pixels painted with the object's colour, which is
what makes the set useful as ground truth for attribution maps.

Only numpy and Pillow are used; the same ``seed`` always gives the same arrays.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")

# Geometry is written for 64 x 64 images and scaled by size / 64.
_BASE = 64
_RADIUS = (11.0, 22.0)  # outer radius of the object, in 64-px units
_MIN_CONTRAST = 110.0  # RGB distance between the object and the background under it
_OBJECT_NOISE = 5.0
_PIXEL_NOISE = 7.0


def generate(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` images with balanced classes.

    Args:
        n: number of images.
        seed: seed of the whole set; the same seed gives identical arrays.
        size: height and width in pixels.

    Returns:
        ``(images, labels, masks)``: uint8 ``[n, size, size, 3]`` RGB, int64 ``[n]``
        indices into :data:`CLASSES`, bool ``[n, size, size]`` object masks.
    """
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i, label in enumerate(labels):
        images[i], masks[i] = _render(rng, int(label), size)
    return images, labels, masks


def _render(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    scale = size / _BASE
    image = _background(rng, size)
    _draw_distractors(rng, image, size, scale)

    radius = rng.uniform(*_RADIUS) * scale
    margin = radius + 1.5 * scale
    cx, cy = rng.uniform(margin, size - 1 - margin, size=2)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    mask = _shape_mask(rng, CLASSES[label], size, (cx, cy), radius, angle)

    # Pick a colour that stands out from what lies under the object.
    under = image[mask].astype(np.float64).mean(axis=0)
    colour = rng.uniform(0, 255, size=3)
    for _ in range(50):
        if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0, 255, size=3)
    else:
        colour = np.where(under > 127, 0.0, 255.0)

    painted = colour + rng.normal(0.0, _OBJECT_NOISE, size=(int(mask.sum()), 3))
    image[mask] = painted
    image += rng.normal(0.0, _PIXEL_NOISE, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float image: two-colour linear gradient plus smooth random texture."""
    a, b = rng.uniform(0, 255, size=(2, 3))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (xs * math.cos(theta) + ys * math.sin(theta))
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    image = a + (b - a) * t[..., None]

    cells = int(rng.integers(3, 9))
    coarse = rng.normal(0.0, 1.0, size=(cells, cells, 3)).astype(np.float32)
    texture = np.stack(
        [np.asarray(Image.fromarray(coarse[..., c]).resize((size, size), Image.BICUBIC)) for c in range(3)],
        axis=-1,
    )
    image += rng.uniform(10.0, 35.0) * texture
    return image


def _draw_distractors(rng: np.random.Generator, image: np.ndarray, size: int, scale: float) -> None:
    """Paint 2-5 lines, elongated ellipses or irregular blobs into ``image`` in place."""
    for _ in range(int(rng.integers(2, 6))):
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        kind = rng.integers(3)
        if kind == 0:  # a straight line, possibly crossing the object's place
            x0, y0, x1, y1 = rng.uniform(0, size, size=4)
            draw.line([(x0, y0), (x1, y1)], fill=1, width=max(1, int(round(rng.uniform(1, 3) * scale))))
        elif kind == 1:  # a thin ellipse (never round, so never a circle)
            rx = rng.uniform(3.0, 8.0) * scale
            ry = rx * rng.uniform(0.2, 0.5)
            cx, cy = rng.uniform(0, size, size=2)
            draw.polygon(_rotated_ellipse(cx, cy, rx, ry, rng.uniform(0, math.pi)), fill=1)
        else:  # a small lumpy blob
            r = rng.uniform(2.5, 6.0) * scale
            cx, cy = rng.uniform(0, size, size=2)
            k = int(rng.integers(6, 10))
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=k))
            radii = r * rng.uniform(0.5, 1.0, size=k)
            draw.polygon([(cx + q * math.cos(t), cy + q * math.sin(t)) for q, t in zip(radii, angles)], fill=1)
        region = np.asarray(canvas, bool)
        image[region] = rng.uniform(0, 255, size=3)


def _rotated_ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, points: int = 32) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + c * u - s * v, cy + s * u + c * v) for u, v in zip(x, y)]


def _polygon(cx: float, cy: float, radii: np.ndarray, angle: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps, starting at ``angle``, with the given radii."""
    k = len(radii)
    return [
        (cx + r * math.cos(angle + 2 * math.pi * j / k), cy + r * math.sin(angle + 2 * math.pi * j / k))
        for j, r in enumerate(radii)
    ]


def _shape_mask(
    rng: np.random.Generator, name: str, size: int, centre: tuple[float, float], radius: float, angle: float
) -> np.ndarray:
    cx, cy = centre
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    elif name == "square":
        draw.polygon(_polygon(cx, cy, np.full(4, radius), angle), fill=1)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, np.full(3, radius), angle), fill=1)
    elif name == "star":
        inner = radius * rng.uniform(0.38, 0.5)
        draw.polygon(_polygon(cx, cy, np.tile([radius, inner], 5), angle), fill=1)
    elif name == "cross":
        half = radius * rng.uniform(0.28, 0.38)  # half the arm width
        arm = [(radius, -half), (radius, half), (half, half), (half, radius), (-half, radius), (-half, half),
               (-radius, half), (-radius, -half), (-half, -half), (-half, -radius), (half, -radius), (half, -half)]
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + c * u - s * v, cy + s * u + c * v) for u, v in arm], fill=1)
    elif name == "ring":
        inner = radius * rng.uniform(0.45, 0.62)
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(CLASSES)}")
    return np.asarray(canvas, bool)
