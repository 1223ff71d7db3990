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
from workbench import render
from workbench.agreement import agreement_matrix
from workbench.errors import ParameterError
from workbench.export import (
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
    for options in ({"cmap": "viridis"}, {"alpha": 0.9}, {"shared_scale": True}, {"positive_only": True}):
        other = decode(grid_png(comparison, **options))
        assert other.shape == plain.shape
        assert not np.array_equal(other[y : y + h, x : x + w], plain[y : y + h, x : x + w]), options
    shared = decode(grid_png(comparison, shared_scale=True))
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
    _, y = layout.origin(0, 0)
    caption = grid[y + layout.cell_size[0] : y + layout.cell_size[0] + 20]
    assert (caption < 160).any()


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
