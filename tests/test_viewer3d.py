"""The 3D view of the edit report (siblings.report.viewer3d): self-contained, and it draws.

The drawing test loads the page in headless Chromium (skipped where it is not installed,
as on CI) and reads what the page's script recorded: its status (no error, WebGL present)
and the share of the first canvas it painted. It also saves a screenshot beside the page.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.mesh.surfaces import surface_nets
from siblings.report import html as H
from siblings.report.viewer3d import surface_payload, viewer_html


@pytest.fixture(scope="module")
def maps():
    out = []
    for i in range(3):
        lm, _ = make_phantom(i, size=32, seed=0)
        out.append(("twin" if i == 0 else f"sibling_{i:05d}", lm.data))
    return out, lm.affine


def test_payload_decodes_to_the_surface_in_world_mm(maps):
    (_, lab), affine = maps[0][0], maps[1]
    payload = surface_payload(lab, affine, iterations=10)
    surface = surface_nets(lab, affine, iterations=10)
    points = np.frombuffer(base64.b64decode(payload["points"]), "<i2").reshape(-1, 3)
    points = points * payload["unit"] + payload["centre"]
    assert np.abs(points - surface.points).max() <= payload["unit"] / 2 + 1e-3
    triangles = np.frombuffer(base64.b64decode(payload["triangles"]), "<u2").reshape(-1, 3)
    assert (triangles == surface.triangles).all()
    labels = np.frombuffer(base64.b64decode(payload["labels"]), "u1").reshape(-1, 2)
    assert (labels == surface.labels).all()


def test_view_is_self_contained_and_carries_every_map_and_the_label_colours(maps):
    items, affine = maps
    view = viewer_html(items, affine)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", view)  # nothing fetched
    assert "http" not in view
    data = json.loads(re.search(r'id="view3d-data">(.*?)</script>', view, re.S).group(1))
    assert [m["title"] for m in data["maps"]] == [t for t, _ in items]
    assert {t["name"]: tuple(t["colour"]) for t in data["tissues"]} == {
        t: anatomy.COLOURS[t] for t in anatomy.TISSUES
    }


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (apt-get install chromium)")


_HEADLESS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",
    "--use-angle=swiftshader",
    "--virtual-time-budget=10000",
    "--window-size=1300,800",
]


def test_headless_chromium_loads_the_page_without_errors_and_it_draws(tmp_path, maps):
    chromium = _chromium()
    items, affine = maps
    page = tmp_path / "report.html"
    page.write_text(H.page("3D view", [("Twin and siblings", viewer_html(items, affine))]))
    dom = subprocess.run(
        [chromium, *_HEADLESS, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    tag = re.search(r'<figure class="view3d"[^>]*>', dom).group(0)
    status = re.search(r'data-status="([^"]*)"', tag).group(1)
    assert status == "ok", status
    drawn = float(re.search(r'data-drawn="([^"]*)"', tag).group(1))
    assert drawn > 0.05  # the heart covers a good part of the first canvas
    assert dom.count("<canvas") == len(items)
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *_HEADLESS, f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_script_error_is_reported_by_the_page_not_hidden(tmp_path, maps):
    chromium = _chromium()
    items, affine = maps
    view = viewer_html(items[:1], affine).replace("JSON.parse(", "JSON.parse('{' + ")
    page = tmp_path / "broken.html"
    page.write_text(H.page("3D view", [("x", view)]))
    dom = subprocess.run(
        [chromium, *_HEADLESS, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert re.search(r'data-status="error: [^"]+"', dom)
