"""Exports: the grid PNG has the documented layout, the NPZ gives back every array, provenance is
strict JSON, and the HTML report is one self-contained file."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from test_store import make_comparison
from workbench import export, render
from workbench.agreement import agreement_matrix
from workbench.errors import ParameterError
from workbench.export import (
    COLOUR_BAR,
    PNG_SCALES_KEY,
    attributions_npz,
    grid_layout,
    grid_png,
    html_report,
    provenance_json,
    write_all,
)


def decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("size, scale", [((12, 10), 11), ((224, 224), 1), ((40, 100), 2)])
def test_grid_has_the_layout_size_and_the_images_in_place(size, scale):
    comparison = make_comparison(1, n_images=3, size=size)
    layout = grid_layout(comparison)
    assert layout.scale == scale and (layout.rows, layout.columns) == (3, 4)
    grid = decode(grid_png(comparison))
    width, height = layout.size
    assert grid.shape == (height, width, 3)
    h, w = layout.cell_size
    assert (h, w) == (size[0] * scale, size[1] * scale)
    for row, image in enumerate(comparison.images):
        x, y = layout.origin(row, 0)
        expected = np.repeat(np.repeat(render.to_uint8(image.pixels), scale, 0), scale, 1)
        assert np.array_equal(grid[y : y + h, x : x + w], expected)
        for column, attribution in enumerate(comparison.results[row], start=1):
            x, y = layout.origin(row, column)
            small = grid[y : y + h : scale, x : x + w : scale]
            assert np.array_equal(small, render.overlay(image.pixels, attribution.map, signed=attribution.signed))


def test_grid_options_change_the_overlays():
    comparison = make_comparison(2, n_images=2)
    layout = grid_layout(comparison)
    plain = decode(grid_png(comparison))
    x, y = layout.origin(0, 1)
    h, w = layout.cell_size
    gradcam_x, _ = layout.origin(0, 3)  # unsigned: drawn with ``cmap``; columns 1 and 2 are signed
    for options, column_x in (
        ({"diverging": "coolwarm"}, x), ({"cmap": "inferno"}, gradcam_x), ({"alpha": 0.9}, x), ({"normalise": "image"}, x),
        ({"normalise": "method"}, x), ({"positive_only": True}, x),
    ):
        other = decode(grid_png(comparison, **options))
        assert other.shape == plain.shape
        cells = [(layout.origin(row, 0)[1], column_x) for row in range(layout.rows)]  # a shared scale leaves its largest map as it was
        assert any(not np.array_equal(other[cy : cy + h, cx : cx + w], plain[cy : cy + h, cx : cx + w]) for cy, cx in cells), options
    assert np.array_equal(decode(grid_png(comparison, cmap="inferno"))[y : y + h, x : x + w], plain[y : y + h, x : x + w]), \
        "cmap colours unsigned maps only"
    with pytest.raises(ParameterError):
        grid_png(comparison, normalise="everything")
    shared = decode(grid_png(comparison, normalise="image"))
    scale = render.shared_scale(comparison.results[0])
    image, attribution = comparison.images[0], comparison.results[0][0]
    s = layout.scale
    assert np.array_equal(shared[y : y + h : s, x : x + w : s], render.overlay(image.pixels, attribution.map, signed=attribution.signed, scale=scale))


def test_grid_labels_are_drawn():
    comparison = make_comparison(3, n_images=1)
    grid = decode(grid_png(comparison))
    layout = grid_layout(comparison)
    x, _ = layout.origin(0, 1)
    header = grid[: layout.origin(0, 0)[1], x : x + layout.cell_size[1]]
    assert (header < 128).any()  # dark text on white: the method name
    y = layout.caption_y(0)
    caption = grid[y : y + 20]
    assert (caption < 160).any()


# --------------------------------------------------------------------------- colour bars, as on the page
def own_scale(attribution_map: np.ndarray, signed: bool) -> float:
    """The value drawn at full colour, worked out here: the 98th percentile of |value| (of the positive part
    for unsigned maps), as captum's visualize_image_attr saturates the top 2 %."""
    values = np.abs(attribution_map if signed else np.maximum(attribution_map, 0)).astype(np.float64).ravel()
    return float(np.percentile(values[values > 0], 98))


def png_scales(png: bytes) -> list[list[dict]]:
    with Image.open(io.BytesIO(png)) as im:
        return json.loads(im.text[PNG_SCALES_KEY])["rows"]


@pytest.mark.parametrize("size", [(12, 10), (60, 8)])  # the second: cells narrower than a colour bar
def test_every_map_in_the_grid_has_the_pages_colour_bar_and_its_values(size):
    comparison = make_comparison(11, n_images=2, size=size)
    png = grid_png(comparison)
    grid, layout = decode(png), grid_layout(comparison)
    h, w = layout.cell_size
    bar_w = layout.column_width
    assert bar_w == max(w, 128)
    rows = png_scales(png)
    assert len(rows) == 2 and all(len(row) == 3 for row in rows)
    for i, results in enumerate(comparison.results):
        for j, attribution in enumerate(results, start=1):
            wanted_cmap = "RdBu_r" if attribution.signed else "viridis"  # the page's defaults
            x, y = layout.bar_origin(i, j)
            bar = grid[y : y + COLOUR_BAR, x : x + bar_w]
            assert np.array_equal(bar, render.colorbar(bar_w, wanted_cmap, attribution.signed, COLOUR_BAR)), (i, j)
            s = own_scale(attribution.map, attribution.signed)
            key = rows[i][j - 1]
            assert key["method"] == attribution.method and key["cmap"] == wanted_cmap and key["signed"] == attribution.signed
            assert key["high"] == pytest.approx(s, rel=1e-5)
            assert key["low"] == (pytest.approx(-s, rel=1e-5) if attribution.signed else 0.0)
            if attribution.signed:  # diverging around 0: the bar's middle is RdBu_r's near-white centre
                assert (bar[0, bar_w // 2].astype(int) > 235).all() and bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]
            else:  # viridis: dark purple at 0, yellow at the top
                assert bar[0, 0].tolist() == [68, 1, 84] and bar[0, -1, 0] > 240 and bar[0, -1, 1] > 220
            labels = grid[y + COLOUR_BAR + 1 : y + COLOUR_BAR + 1 + 2 * export.LINE, x : x + bar_w]
            assert (labels < 128).any(), "the values and the colormap's name are written under the bar"
            # the overlay is drawn on the scale the bar gives, at the page's default opacity
            cx, cy = layout.origin(i, j)
            expected = render.overlay(comparison.images[i].pixels, attribution.map, signed=attribution.signed, cmap=wanted_cmap,
                                      alpha=0.7, scale=key["high"])
            assert np.array_equal(grid[cy : cy + h : layout.scale, cx : cx + w : layout.scale], expected)
    assert render.DEFAULT_OPACITY == 0.7


@pytest.mark.parametrize("normalise", ["image", "method"])
def test_shared_colour_scales_are_what_the_bars_say(normalise):
    comparison = make_comparison(12, n_images=3)
    rows = png_scales(grid_png(comparison, normalise=normalise))
    for i, results in enumerate(comparison.results):
        for j, attribution in enumerate(results):
            if normalise == "image":
                s = max(own_scale(r.map, r.signed) for r in results)
            else:
                s = max(own_scale(row[j].map, row[j].signed) for row in comparison.results)
            assert rows[i][j]["high"] == pytest.approx(s, rel=1e-5), (i, j)
    positive = png_scales(grid_png(comparison, positive_only=True, cmap="inferno"))
    assert {(c["cmap"], c["signed"], c["low"]) for row in positive for c in row} == {("inferno", False, 0.0)}


def test_html_report_shows_each_maps_colour_bar_with_its_colormap_and_values():
    comparison = make_comparison(13, n_images=2)
    page = html_report(comparison)
    assert "opacity 0.7" in page and "each map on its own colour scale" in page
    table = page.split("<h3>Colour scales</h3>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r'<img class="bar" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">'
                       r'<code class="cmap">([^<]+)</code> <span class="range">([^<]+)</span>', table)
    assert len(cells) == 2 * 3
    import base64

    for (bar, cmap, shown), attribution in zip(cells, [a for row in comparison.results for a in row]):
        s = own_scale(attribution.map, attribution.signed)
        if attribution.signed:
            assert cmap == "RdBu_r" and shown == f"−{s:.3g} … 0 … +{s:.3g}"
        else:
            assert cmap == "viridis" and shown == f"0 … {s:.3g}"
        assert np.array_equal(decode(base64.b64decode(bar)), render.colorbar(128, cmap, attribution.signed, COLOUR_BAR))
    # the options reach the table and the grid alike
    other = html_report(comparison, normalise="image", diverging="coolwarm", alpha=0.4)
    assert "coolwarm</code>" in other and "RdBu_r</code>" not in other and "the maps of a row on one colour scale" in other
    assert "opacity 0.4" in other


def test_the_cli_export_of_a_stored_run_carries_the_colour_bars(tmp_path, monkeypatch, capsys):
    from workbench.cli import main
    from workbench.store import RunStore

    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("WORKBENCH_DATABASE_URL", raising=False)
    comparison = make_comparison(14, n_images=1)
    with RunStore() as store:
        run_id = store.save(comparison, model_bytes=None, image_bytes=None, model_name="net")
    assert main(["export", run_id, "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    png = (tmp_path / "out" / "grid.png").read_bytes()
    [row] = png_scales(png)
    assert [(c["method"], c["cmap"]) for c in row] == [("saliency", "RdBu_r"), ("integrated_gradients", "RdBu_r"), ("gradcam", "viridis")]
    for cell, attribution in zip(row, comparison.results[0]):
        assert cell["high"] == pytest.approx(own_scale(attribution.map, attribution.signed), rel=1e-5)
    layout = grid_layout(comparison)
    x, y = layout.bar_origin(0, 3)
    assert np.array_equal(decode(png)[y : y + COLOUR_BAR, x : x + layout.column_width],
                          render.colorbar(layout.column_width, "viridis", False, COLOUR_BAR))
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    s = own_scale(comparison.results[0][0].map, True)
    assert f'RdBu_r</code> <span class="range">−{s:.3g} … 0 … +{s:.3g}</span>' in report


def test_npz_round_trips_every_array():
    comparison = make_comparison(4)
    with np.load(io.BytesIO(attributions_npz(comparison)), allow_pickle=False) as npz:
        keys = set(npz.files)
        assert list(npz["methods"]) == list(comparison.methods)
        assert list(npz["targets"]) == [im.target for im in comparison.images]
        for i, (image, row) in enumerate(zip(comparison.images, comparison.results)):
            assert npz[f"{i}__pixels"].tobytes() == image.pixels.tobytes()
            for attribution in row:
                got = npz[f"{i}__{attribution.method}__map"]
                assert got.dtype == np.float32 and got.tobytes() == attribution.map.tobytes()
                key = f"{i}__{attribution.method}__channels"
                if attribution.channels is None:
                    assert key not in keys
                else:
                    assert npz[key].tobytes() == attribution.channels.tobytes()
    assert "0__integrated_gradients__channels" in keys


def test_provenance_is_strict_json_with_summary_and_versions():
    comparison = make_comparison(5)
    old = comparison.results[0][0]
    weird = dataclasses.replace(old, target_score=float("nan"), params={"sigma": np.float32(0.5), "sizes": (1, 2)})
    comparison = dataclasses.replace(comparison, results=((weird, *comparison.results[0][1:]), comparison.results[1]), run_id="abcdefghijklmnopqrstuvwx")
    text = provenance_json(comparison)
    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert document["run_id"] == "abcdefghijklmnopqrstuvwx"
    assert document["versions"] == dict(comparison.versions)
    summary = document["summary"]
    assert summary["methods"] == list(comparison.methods) and summary["seed"] == 5
    first = summary["images"][0]["results"][0]
    assert first["target_score"] is None and first["params"] == {"sigma": 0.5, "sizes": [1, 2]}
    assert summary["images"][1]["results"][1]["completeness_gap"] == comparison.results[1][1].completeness_gap


RESOURCE = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*([^"'\s>]+)|url\(\s*["']?([^"')]+)|@import""", re.I)


def test_html_report_is_self_contained():
    comparison = make_comparison(6, n_images=2)
    link = "https://workbench.internal/wb/?run=abcdefghijklmnopqrstuvwxyz012345"
    page = html_report(comparison, share_url=link)
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # every URL in the page is the share link; everything else is inline data
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {link}
    for match in RESOURCE.finditer(page):
        target = match.group(1) or match.group(2)
        assert target is not None, "@import in the report"
        assert target.startswith("data:image/png;base64,") or target == link, target
    assert "default-src 'none'" in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    # the embedded grid is the grid
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    import base64

    assert base64.b64decode(embedded) == grid_png(comparison)


def test_html_report_has_agreement_timings_and_gaps():
    comparison = make_comparison(7, n_images=2)
    page = html_report(comparison)
    assert "http://" not in page and "https://" not in page
    agreement = agreement_matrix(comparison.results[0])
    # the Spearman value of methods 0 and 1 for image 0 is printed as in the matrix
    assert f"{agreement['spearman'][0, 1]:.3g}" in page
    assert f"{agreement['iou'][0, 2]:.3g}" in page
    assert "Agreement, mean over images" in page
    for j, method in enumerate(comparison.methods):
        total = sum(row[j].seconds for row in comparison.results)
        assert f"{total:.4g}" in page and method in page
    gap = comparison.results[1][1].completeness_gap
    assert f"{gap:.4g}" in page


def test_html_escapes_what_users_named():
    comparison = make_comparison(8, n_images=1)
    image = dataclasses.replace(comparison.images[0], name='<script>alert(1)</script>"><img src=x>')
    model = dict(comparison.model, name="<b>net</b>")
    page = html_report(dataclasses.replace(comparison, images=(image,), model=model))
    assert "<script>alert" not in page and "<img src=x>" not in page and "<b>net</b>" not in page
    assert "&lt;script&gt;" in page


def test_share_link_must_be_http():
    with pytest.raises(ParameterError):
        html_report(make_comparison(9, n_images=1), share_url="javascript:alert(1)")


def test_write_all_writes_four_readable_files(tmp_path):
    comparison = make_comparison(10)
    paths = write_all(comparison, tmp_path / "out" / "nested")
    assert set(paths) == {"grid", "npz", "provenance", "html"}
    assert all(p.is_file() and p.parent == tmp_path / "out" / "nested" for p in paths.values())
    assert decode(paths["grid"].read_bytes()).shape[:2] == grid_layout(comparison).size[::-1]
    json.loads(paths["provenance"].read_text(encoding="utf-8"))
    with np.load(paths["npz"], allow_pickle=False) as npz:
        assert npz["0__saliency__map"].tobytes() == comparison.results[0][0].map.tobytes()
    assert paths["html"].read_text(encoding="utf-8").startswith("<!doctype html>")
