"""Exports of a :class:`~workbench.result.Comparison`: a labelled grid PNG, the arrays as NPZ,
provenance JSON and a self-contained HTML report.

Everything here reads the comparison only; nothing needs the model. The HTML report loads
nothing from anywhere: images are embedded as ``data:`` URIs and its Content-Security-Policy
forbids every other source, so it can be mailed or archived and opened offline.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import render
from .agreement import agreement_matrix
from .errors import ParameterError
from .result import Attribution, Comparison

# Grid layout, in pixels. Cells are images scaled up by a whole factor to at least MIN_CELL.
MIN_CELL = 128
PAD = 6
HEADER = 24  # column titles
CAPTION = 20  # under each row: image name and target
FONT_SIZE = 13
BAR_GAP = 4
COLOUR_BAR = 10  # the colour bar's height under each map
LINE = FONT_SIZE + 3
KEY = BAR_GAP + COLOUR_BAR + 2 * LINE  # under each map: its colour bar, the values at its ends, the colormap's name
KEY_WIDTH = MIN_CELL  # columns (and colour bars) are at least this wide, so the values at a bar's ends fit
TOP_K_PERCENT = 10.0
# The PNG text chunk holding each map's colour scale as JSON, for programs that read the grid back.
PNG_SCALES_KEY = "workbench colour scales"


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Where each cell of :func:`grid_png` lies: rows = images, column 0 = the image, then one per method,
    each map with its colour bar underneath, and the row's caption under the bars."""

    rows: int
    columns: int
    image_size: tuple[int, int]  # H, W of the largest image
    scale: int  # whole-number upscaling of every image
    cell_size: tuple[int, int]  # H, W on the canvas

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the PNG."""
        cell_h, _ = self.cell_size
        return PAD + self.columns * (self.column_width + PAD), HEADER + self.rows * (cell_h + KEY + CAPTION + PAD) + PAD

    @property
    def column_width(self) -> int:
        """A column's width: its cells, or the colour bar under them where the cells are narrower."""
        return max(self.cell_size[1], KEY_WIDTH)

    def origin(self, row: int, column: int) -> tuple[int, int]:
        """(x, y) of a cell's top-left corner."""
        cell_h, _ = self.cell_size
        return PAD + column * (self.column_width + PAD), HEADER + row * (cell_h + KEY + CAPTION + PAD)

    def bar_origin(self, row: int, column: int) -> tuple[int, int]:
        """(x, y) of the top-left corner of a map's colour bar (``column_width`` wide, COLOUR_BAR high)."""
        x, y = self.origin(row, column)
        return x, y + self.cell_size[0] + BAR_GAP

    def caption_y(self, row: int) -> int:
        """The top of a row's caption (the image name and target)."""
        return self.origin(row, 0)[1] + self.cell_size[0] + KEY


def grid_layout(comparison: Comparison) -> GridLayout:
    if not comparison.images:
        raise ParameterError("The comparison has no images to export.")
    shown = [im.original if im.original is not None else im.pixels for im in comparison.images]
    h = max(int(pixels.shape[0]) for pixels in shown)
    w = max(int(pixels.shape[1]) for pixels in shown)
    scale = max(1, math.ceil(MIN_CELL / max(h, w)))
    return GridLayout(len(comparison.images), 1 + len(comparison.methods), (h, w), scale, (h * scale, w * scale))


def _upscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1) if scale > 1 else rgb


def _fit(draw, text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…" if text else ""


def _png(rgb: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    from PIL import Image, PngImagePlugin

    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, format="PNG", optimize=False, pnginfo=info)
    return buffer.getvalue()


def colour_scales(
    comparison: Comparison,
    *,
    normalise: str = "map",
    positive_only: bool = False,
    cmap: str | None = None,
    diverging: str | None = None,
) -> list[list[render.ColourScale]]:
    """Each map's colour bar, rows = images, columns = methods: as the app draws them with the same options
    (``normalise``: see :func:`workbench.render.grid_scales`; ``cmap`` for unsigned maps, ``diverging``
    for signed ones, None for the defaults)."""
    if normalise not in render.NORMALISATIONS:
        raise ParameterError(f"Unknown normalisation {normalise!r}: use one of {', '.join(render.NORMALISATIONS)}.")
    per_cell = render.grid_scales(comparison.results, normalise, positive_only)
    return [
        [render.colour_scale(r.map, r.signed, scale=s, positive_only=positive_only, cmap=cmap, diverging=diverging) for r, s in zip(row, scales)]
        for row, scales in zip(comparison.results, per_cell)
    ]


def _bar_ends(scale: render.ColourScale) -> tuple[str, str]:
    # an ASCII minus: Pillow's built-in font has no glyph for U+2212
    return (f"-{scale.scale:.3g}", f"+{scale.scale:.3g}") if scale.signed else ("0", f"{scale.scale:.3g}")


def _bar_labels(draw, font, scale: render.ColourScale, x: int, y: int, width: int) -> None:
    """Under a colour bar: the values at its ends (and 0 in a signed bar's middle), then the colormap's name.
    Where both values do not fit on one line, the highest goes to the second, right-aligned."""
    ink, grey = (40, 40, 40), (90, 90, 90)
    low, high = _bar_ends(scale)
    low_w, high_w, zero_w = (draw.textlength(t, font=font) for t in (low, high, "0"))
    draw.text((x, y), low, fill=ink, font=font)
    if low_w + high_w + 6 <= width:
        draw.text((x + width - high_w, y), high, fill=ink, font=font)
        if scale.signed and max(low_w, high_w) + 4 < (width - zero_w) / 2:
            draw.text((x + (width - zero_w) / 2, y), "0", fill=ink, font=font)
        draw.text((x, y + LINE), _fit(draw, scale.cmap, font, width), fill=grey, font=font)
        return
    draw.text((x + width - high_w, y + LINE), high, fill=ink, font=font)
    room = width - high_w - 6
    if draw.textlength(scale.cmap, font=font) <= room:
        draw.text((x, y + LINE), scale.cmap, fill=grey, font=font)


def grid_png(
    comparison: Comparison,
    *,
    cmap: str | None = None,
    diverging: str | None = None,
    alpha: float = render.DEFAULT_OPACITY,
    normalise: str = "map",
    positive_only: bool = False,
) -> bytes:
    """The comparison as one PNG: a row per image (the image, then each method's overlay).

    Columns are titled with the method names; under each overlay is its colour bar, as on the app's page:
    the colormap from the lowest value shown (left) to the highest (right), those values and the colormap's
    name (a signed map's bar is diverging around 0, in its middle). Under each row are the image name and
    its target. ``normalise`` ``map`` scales each map to its own scale, ``image`` gives the maps of a row one
    scale, ``method`` a column (see :func:`workbench.render.grid_scales`). ``cmap`` colours unsigned maps
    and ``diverging`` signed ones (None: the app's defaults). The scales are also in the PNG's
    ``workbench colour scales`` text chunk, as JSON.
    """
    from PIL import Image, ImageDraw, ImageFont

    layout = grid_layout(comparison)
    scales = colour_scales(comparison, normalise=normalise, positive_only=positive_only, cmap=cmap, diverging=diverging)
    canvas = Image.new("RGB", layout.size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    cell_h, _ = layout.cell_size
    key_w = layout.column_width
    titles = ["image", *comparison.methods]
    for column, title in enumerate(titles):
        x, _ = layout.origin(0, column)
        draw.text((x, (HEADER - FONT_SIZE) // 2 - 1), _fit(draw, title, font, key_w), fill=(20, 20, 20), font=font)
    for row, (image, results) in enumerate(zip(comparison.images, comparison.results)):
        cells = [render.to_uint8(image.original if image.original is not None else image.pixels)]
        for attribution, scale in zip(results, scales[row]):
            pixels, shown = image.display(attribution.map)  # on the original image where it is known
            cells.append(
                render.overlay(
                    pixels,
                    shown,
                    signed=attribution.signed,
                    cmap=scale.cmap,
                    alpha=alpha,
                    scale=scale.scale,
                    positive_only=positive_only,
                )
            )
        for column, cell in enumerate(cells):
            canvas.paste(Image.fromarray(_upscale(cell, layout.scale)), layout.origin(row, column))
        for column, scale in enumerate(scales[row], start=1):
            x, y = layout.bar_origin(row, column)
            canvas.paste(Image.fromarray(render.colorbar(key_w, scale.cmap, scale.signed, COLOUR_BAR)), (x, y))
            _bar_labels(draw, font, scale, x, y + COLOUR_BAR + 1, key_w)
        caption = f"{image.name} · target: {image.target_label} ({image.target})"
        width = layout.size[0] - 2 * PAD
        x = layout.origin(row, 0)[0]
        draw.text((x, layout.caption_y(row) + (CAPTION - FONT_SIZE) // 2 - 1), _fit(draw, caption, font, width), fill=(60, 60, 60), font=font)
    key = [[{"method": r.method, **scale.to_dict()} for r, scale in zip(results, row)] for results, row in zip(comparison.results, scales)]
    return _png(np.asarray(canvas), {PNG_SCALES_KEY: json.dumps(_plain({"rows": key}), allow_nan=False)})


def attributions_npz(comparison: Comparison) -> bytes:
    """All arrays in one ``.npz``, loadable with ``np.load(..., allow_pickle=False)``.

    Keys: ``<i>__<method>__map`` (H x W), ``<i>__<method>__channels`` (H x W x C, where the method
    has per-channel values), ``<i>__pixels`` (the model-input pixels), ``<i>__original`` and
    ``<i>__<method>__map_original`` (the image at its own size, the map mapped back onto it), plus ``methods`` (names in
    column order) and ``targets`` (one class index per image). ``<i>`` is the image's index.
    """
    arrays: dict[str, np.ndarray] = {
        "methods": np.asarray(comparison.methods, dtype=str),
        "targets": np.asarray([im.target for im in comparison.images], dtype=np.int64),
    }
    for i, (image, results) in enumerate(zip(comparison.images, comparison.results)):
        arrays[f"{i}__pixels"] = np.asarray(image.pixels)
        if image.original is not None and image.placement:
            arrays[f"{i}__original"] = np.asarray(image.original)
        for attribution in results:
            arrays[f"{i}__{attribution.method}__map"] = attribution.map
            if image.original is not None and image.placement:
                arrays[f"{i}__{attribution.method}__map_original"] = image.display(attribution.map)[1]
            if attribution.channels is not None:
                arrays[f"{i}__{attribution.method}__channels"] = attribution.channels
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def _plain(value: Any) -> Any:
    """JSON-ready: numpy values as Python ones, NaN and infinities as null (strict JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def provenance_json(comparison: Comparison, evaluation: Any = None) -> str:
    """What produced the maps: model, images (by fingerprint), methods, parameters, seeds, timings, versions;
    with ``evaluation`` (a :class:`workbench.metrics.Evaluation`) the metrics of the maps too."""
    document = {
        "format": "workbench-provenance",
        "format_version": 1,
        "run_id": comparison.run_id,
        "created_utc": _utc(comparison.created),
        "versions": dict(comparison.versions),
        "summary": comparison.summary(),
    }
    if evaluation is not None:
        document["evaluation"] = evaluation.to_dict()
    return json.dumps(_plain(document), indent=2, allow_nan=False, ensure_ascii=False)


def _utc(timestamp: float) -> str | None:
    try:
        return datetime.datetime.fromtimestamp(float(timestamp), tz=datetime.timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return None


# -- HTML ----------------------------------------------------------------------------------------

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; } h3 { font-size: 1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d0d0d5; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.grid { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #d0d0d5; }
img.bar { display: block; width: 128px; height: 10px; image-rendering: pixelated; border: 1px solid #d0d0d5; }
code { font-size: .9em; word-break: break-all; }
.muted { color: #666; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    value = float(value)
    if not math.isfinite(value):
        return _e(value)
    return f"{value:.{digits}g}"


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    """``rows`` hold HTML already escaped; no ``header`` makes a two-column key/value table."""
    if header is None:
        body = "".join(f"<tr><th>{key}</th><td>{value}</td></tr>" for key, value in rows)
        return f"<table><tbody>{body}</tbody></table>"
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if numeric[k] else f"<td>{c}</td>" for k, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _matrix(methods: Sequence[str], values: np.ndarray) -> str:
    """A methods x methods table, each cell tinted by its value (blue for agreement, red for disagreement)."""
    rows = []
    for i, name in enumerate(methods):
        cells = []
        for j in range(len(methods)):
            v = float(values[i, j])
            colour = "70,110,200" if v >= 0 else "200,80,70"
            strength = min(abs(v), 1.0) * 0.45 if math.isfinite(v) else 0.0
            cells.append(f'<td class="num" style="background: rgba({colour},{strength:.2f})">{_num(v, 3)}</td>')
        rows.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    head = "<th></th>" + "".join(f"<th>{_e(m)}</th>" for m in methods)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _params(params: Mapping[str, Any]) -> str:
    return "<br>".join(f"<code>{_e(k)}={_e(json.dumps(_plain(v), ensure_ascii=False))}</code>" for k, v in params.items()) or "—"


def _share_href(share_url: str | None) -> str | None:
    if share_url is None:
        return None
    if not share_url.lower().startswith(("https://", "http://")):
        raise ParameterError("The share link must be an http(s) URL.")
    return share_url


def html_report(
    comparison: Comparison,
    *,
    share_url: str | None = None,
    cmap: str | None = None,
    diverging: str | None = None,
    alpha: float = render.DEFAULT_OPACITY,
    normalise: str = "map",
    positive_only: bool = False,
    evaluation: Any = None,
) -> str:
    """A single self-contained HTML page: the grid (each map with its colour bar), the colour scales as
    a table, per-image results with completeness gaps, the agreement between methods (Spearman rank
    correlation and top-10 % IoU), time per method, and the versions. The drawing options are
    :func:`grid_png`'s. ``share_url`` (from :func:`workbench.store.share_link`) is the only link it contains."""
    share = _share_href(share_url)
    model = dict(comparison.model)
    methods = list(comparison.methods)
    look = {"cmap": cmap, "diverging": diverging, "normalise": normalise, "positive_only": positive_only}
    grid = base64.b64encode(grid_png(comparison, alpha=alpha, **look)).decode("ascii")
    title = f"Attribution report — {model.get('name', 'model')}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    if share:
        parts.append(f'<p>Reopen in the workbench: <a href="{_e(share)}" rel="noreferrer">{_e(share)}</a></p>')
    if comparison.stopped is not None:  # cancelled part-way: only the methods that finished are here
        from .engine import stopped_line

        parts.append(f"<p><strong>Partial run.</strong> {_e(stopped_line(comparison.stopped))}</p>")

    run_rows = [
        [_e("Run id"), f"<code>{_e(comparison.run_id)}</code>" if comparison.run_id else "not saved"],
        [_e("Created (UTC)"), _e(_utc(comparison.created) or "—")],
        [_e("Seed"), _e(comparison.seed)],
    ]
    model_rows = [
        [_e(label), _e(model[key]) if key in model else "—"]
        for key, label in (
            ("name", "Model"),
            ("framework", "Framework"),
            ("source_format", "Format"),
            ("input_size", "Input size (H, W, C)"),
            ("num_classes", "Classes"),
            ("output_kind", "Output"),
            ("preset", "Preprocessing"),
            ("device", "Device"),
        )
    ]
    model_rows.append([_e("Model fingerprint"), f"<code>{_e(model.get('fingerprint', '—'))}</code>"])
    parts += ["<h2>Run</h2>", _table(None, run_rows + model_rows)]

    scope = {
        "map": ", each map on its own colour scale",
        "image": ", the maps of a row on one colour scale",
        "method": ", the maps of a method (column) on one colour scale",
    }[normalise]
    parts += [
        "<h2>Maps</h2>",
        '<p class="muted">Rows are images; the first column is the image as the model saw it, then one overlay per method'
        + scope
        + (", positive evidence only" if positive_only else "")
        + f" (opacity {alpha:g}). Under each map, its colour bar: the colormap from the lowest value shown to the highest"
        " (a signed map's is diverging around 0, in its middle); values beyond the ends are drawn at the ends.</p>",
        f'<img class="grid" alt="Attribution maps of {len(methods)} methods on {len(comparison.images)} images" src="data:image/png;base64,{grid}">',
        "<h3>Colour scales</h3>",
        _scales_table(comparison, colour_scales(comparison, **look)),
    ]

    parts.append("<h2>Time per method</h2>")
    timing_rows = []
    n_images = max(1, len(comparison.images))
    for j, name in enumerate(methods):
        column = [row[j] for row in comparison.results]
        seconds = sum(r.seconds for r in column)
        evaluations = sum(r.evaluations for r in column)
        devices = sorted({r.device for r in column})
        timing_rows.append([_e(name), _num(seconds, 4), _num(seconds / n_images, 4), _e(evaluations), _e(", ".join(devices))])
    parts.append(
        _table(["Method", "Seconds, all images", "Seconds per image", "Model evaluations", "Device"], timing_rows, [False, True, True, True, False])
    )

    mean = {"spearman": np.zeros((len(methods), len(methods))), "iou": np.zeros((len(methods), len(methods)))}
    parts.append("<h2>Images</h2>")
    for i, (image, results) in enumerate(zip(comparison.images, comparison.results)):
        parts.append(f"<h3>{i + 1}. {_e(image.name)} — target: {_e(image.target_label)} ({_e(image.target)})</h3>")
        parts.append(f'<p class="muted">sha256 <code>{_e(image.sha256)}</code></p>')
        if image.notes:
            parts.append("<p>" + "; ".join(_e(n) for n in image.notes) + "</p>")
        rows = [
            [
                _e(r.method),
                _num(r.target_score),
                _num(r.reference_score),
                _num(r.completeness_gap),
                _num(r.completeness_ratio),
                _num(r.seconds, 3),
                _e(r.evaluations),
                _e(r.seed if r.seed is not None else "—"),
                _e(r.layer or "—"),
                _params(r.params),
                "; ".join(_e(n) for n in r.notes) or "—",
            ]
            for r in results
        ]
        parts.append(
            _table(
                ["Method", "Target score", "Reference score", "Completeness gap", "Gap / |f(x) − ref|", "Seconds", "Evaluations", "Seed", "Layer", "Parameters", "Notes"],
                rows,
                [False, True, True, True, True, True, True, True, False, False, False],
            )
        )
        if len(methods) > 1:
            agreement = agreement_matrix(results, TOP_K_PERCENT)
            for key in mean:
                mean[key] += agreement[key] / len(comparison.images)
            parts += [
                "<p>Spearman rank correlation between maps</p>",
                _matrix(methods, agreement["spearman"]),
                f"<p>Overlap (IoU) of the top {TOP_K_PERCENT:g} % pixels</p>",
                _matrix(methods, agreement["iou"]),
            ]
    if len(methods) > 1 and len(comparison.images) > 1:
        parts += [
            "<h2>Agreement, mean over images</h2>",
            "<p>Spearman rank correlation</p>",
            _matrix(methods, mean["spearman"]),
            f"<p>Top {TOP_K_PERCENT:g} % IoU</p>",
            _matrix(methods, mean["iou"]),
        ]

    if evaluation is not None:
        parts += _evaluation_html(evaluation)

    parts += [
        "<h2>Versions</h2>",
        _table(["Library", "Version"], [[_e(k), _e(v)] for k, v in sorted(dict(comparison.versions).items())]),
        "</body></html>",
    ]
    return "\n".join(parts)


def _scales_table(comparison: Comparison, scales: Sequence[Sequence[render.ColourScale]]) -> str:
    """Images x methods: each map's colour bar, its colormap and the values at its ends."""
    bars: dict[tuple[str, bool], str] = {}
    rows = []
    for image, row in zip(comparison.images, scales):
        cells = [_e(image.name)]
        for scale in row:
            if (scale.cmap, scale.signed) not in bars:
                png = _png(render.colorbar(128, scale.cmap, scale.signed, COLOUR_BAR))
                bars[scale.cmap, scale.signed] = base64.b64encode(png).decode("ascii")
            bar = bars[scale.cmap, scale.signed]
            cells.append(
                f'<img class="bar" alt="{_e(scale.cmap)} colour bar" src="data:image/png;base64,{bar}">'
                f'<code class="cmap">{_e(scale.cmap)}</code> <span class="range">{_e(scale.label())}</span>'
            )
        rows.append(cells)
    return _table(["Image", *comparison.methods], rows)


def _curve_svg(series: Sequence[tuple[str, Sequence[Sequence[float]], bool]], x_label: str, y_label: str) -> str:
    """A small line chart as inline SVG: (name, [(x, y), ...], dashed) per line, x and y axes from the data."""
    width, height, pad = 420, 220, 36
    points = [p for _, line, _ in series for p in line]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(1.0, max(ys))
    sx = lambda x: pad + (x - x0) / ((x1 - x0) or 1.0) * (width - 2 * pad)  # noqa: E731
    sy = lambda y: height - pad - (y - y0) / ((y1 - y0) or 1.0) * (height - 2 * pad)  # noqa: E731
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    lines, legend = [], []
    for k, (name, line, dashed) in enumerate(series):
        colour = "#777" if dashed else colours[k % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{path}"/>')
        legend.append(f'<span style="color:{colour}">&#9632; {_e(name)}</span>')
    axes = (
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="10" y="{pad - 10}" font-size="11">{_e(y_label)} ({_num(y0, 2)}–{_num(y1, 2)})</text>'
    )
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{axes}{"".join(lines)}</svg>'
    return f"<figure>{svg}<figcaption>{' '.join(legend)}</figcaption></figure>"


def _evaluation_html(evaluation: Any) -> list[str]:
    """The Evaluate section: methods x metrics (mean over images) with the random-map row, the curves, the flags."""
    from .metrics import REGISTRY, RANDOM

    metrics = list(evaluation.metrics)
    titles = [REGISTRY[m].title if m in REGISTRY else m for m in metrics]
    better = ["higher" if REGISTRY.get(m) is None or REGISTRY[m].higher_is_better else "lower" for m in metrics]
    rows = [[_e(row["method"])] + [_num(row[m]) for m in metrics] for row in evaluation.table()]
    parts = [
        "<h2>Evaluation</h2>",
        f'<p class="muted">Mean over {len(evaluation.images)} image(s); the <em>{RANDOM}</em> row is each metric on a seeded '
        f"random map (seed {_e(evaluation.seed)}). Better: " + ", ".join(f"{_e(t)} {b}" for t, b in zip(titles, better)) + ".</p>",
        _table(["Method", *titles], rows, [False] + [True] * len(metrics)),
    ]
    flagged = evaluation.flagged()
    if flagged:
        parts.append("<ul>" + "".join(f"<li>{_e(r.image)} · {_e(r.method)}: {_e('; '.join(r.notes))}</li>" for r in flagged) + "</ul>")
    for metric in metrics:
        with_curves = [r for r in evaluation.results if r.metric == metric and r.curve]
        if not with_curves:
            continue
        series = []
        for method in evaluation.methods:
            curves = [r.curve for r in with_curves if r.method == method]
            if curves and all(len(c) == len(curves[0]) for c in curves):
                series.append((method, [(x, float(np.mean([c[k][1] for c in curves]))) for k, (x, _) in enumerate(curves[0])], False))
        randoms = [r.random_curve for r in with_curves if r.method == evaluation.methods[0] and r.random_curve]
        if randoms and all(len(c) == len(randoms[0]) for c in randoms):
            series.append((RANDOM, [(x, float(np.mean([c[k][1] for c in randoms]))) for k, (x, _) in enumerate(randoms[0])], True))
        x_label = "layers randomised from the top" if metric == "randomisation" else "fraction of pixels"
        y_label = "Spearman ρ" if metric == "randomisation" else "probability of the target"
        parts += [f"<h3>{_e(REGISTRY[metric].title if metric in REGISTRY else metric)}, mean curve over images</h3>", _curve_svg(series, x_label, y_label)]
    rows = [
        [_e(r.image), _e(r.method), _e(r.metric), _num(r.value), _num(r.random_baseline), _e(r.evaluations), _num(r.seconds, 3),
         "; ".join(_e(n) for n in r.notes) or "—"]
        for r in evaluation.results
    ]
    parts += ["<h3>Per image</h3>", _table(["Image", "Method", "Metric", "Value", "Random map", "Evaluations", "Seconds", "Notes"], rows,
                                           [False, False, False, True, True, True, True, False])]
    return parts


def write_all(comparison: Comparison, out_dir: str | Path, *, share_url: str | None = None, evaluation: Any = None) -> dict[str, Path]:
    """Write every export into ``out_dir`` (created if missing).

    -> ``{"grid": grid.png, "npz": attributions.npz, "provenance": provenance.json, "html": report.html}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "grid": out / "grid.png",
        "npz": out / "attributions.npz",
        "provenance": out / "provenance.json",
        "html": out / "report.html",
    }
    paths["grid"].write_bytes(grid_png(comparison))  # drawn as the app draws by default: the same colour bars
    paths["npz"].write_bytes(attributions_npz(comparison))
    paths["provenance"].write_text(provenance_json(comparison, evaluation), encoding="utf-8")
    paths["html"].write_text(html_report(comparison, share_url=share_url, evaluation=evaluation), encoding="utf-8")
    return paths
