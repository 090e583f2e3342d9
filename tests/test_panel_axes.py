"""What slice panels say about direction (issue 15, item 6): patient letters only where
the data say where the patient is; "model axes" on the model grid otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import axis_angle, place_in_scanner, scanner_affine
from siblings.data.twin import resolve_twin
from siblings.editing import twin_panel_axes
from siblings.io import LabelMap, centred_affine, is_model_grid, write_label_map
from siblings.report.axes import MODEL_AXES, PanelAxes, grid_axes, panel_axes
from siblings.report.editing import siblings_figure
from siblings.report.plots import occupancy_figure

LETTERS = set("RLAPSI")


def rigid(rotation: np.ndarray, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rotation, translation
    return m


def figure_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_model_axes_views_name_the_model_axes_and_draw_no_letters():
    views = PanelAxes.of(MODEL_AXES).views()
    assert [v.name for v in views] == ["model axes 1, 2", "model axes 0, 2", "model axes 0, 1"]
    assert [v.edges for v in views] == [
        ("", "axis 1 →", "", "axis 2 ↑"),
        ("", "axis 0 →", "", "axis 2 ↑"),
        ("", "axis 0 →", "", "axis 1 ↑"),
    ]
    assert "not the patient's axes" in PanelAxes().note()
    assert PanelAxes.of(None).model and PanelAxes.of({"axes": MODEL_AXES}).model


def test_ras_and_lps_codes_put_each_letter_at_the_high_index_of_its_axis():
    # (left, right, bottom, top) per view; the view is named by its fixed axis' letter.
    ras = PanelAxes.of("RAS").views()
    assert [v.edges for v in ras] == [
        ("P", "A", "I", "S"),
        ("L", "R", "I", "S"),
        ("L", "R", "P", "A"),
    ]
    assert [v.name for v in ras] == ["sagittal", "coronal", "axial"]
    lps = PanelAxes.of("LPS").views()
    assert [v.edges for v in lps] == [
        ("A", "P", "I", "S"),
        ("R", "L", "I", "S"),
        ("R", "L", "A", "P"),
    ]
    assert [v.name for v in lps] == ["sagittal", "coronal", "axial"]
    with pytest.raises(ValueError, match="twice"):
        PanelAxes.of("RLS")


def test_a_scanner_map_with_an_lps_affine_gets_l_p_s_from_its_affine():
    affine = scanner_affine((80, 80, 60), (1.5, 1.5, 2.5), "LPS", centre_mm=(10.0, -20.0, 30.0))
    axes = panel_axes((80, 80, 60), affine)
    assert (axes.codes, axes.basis) == ("LPS", "affine")
    assert axes.max_angle_deg == pytest.approx(0.0, abs=1e-6)
    # Axis 0 grows towards the patient's left: its high index (the right edge of the
    # coronal view) is L, so the patient's right is drawn on the left.
    assert axes.views()[1].edges == ("R", "L", "I", "S")
    # An oblique scan: 20° about the S axis still names the nearest axes, 20° off.
    oblique = scanner_affine((80, 80, 60), (1.5, 1.5, 2.5), "LPS", tilt=axis_angle((0, 0, 1), 20))
    tilted = panel_axes((80, 80, 60), oblique)
    assert tilted.codes == "LPS"
    assert tilted.max_angle_deg == pytest.approx(20.0, abs=1e-6)
    assert "20°" in tilted.note()


def test_a_map_on_the_model_grid_says_model_axes_though_its_affine_says_ras():
    affine = centred_affine(64)
    assert is_model_grid((64, 64, 64), affine)
    assert panel_axes((64, 64, 64), affine) == PanelAxes()
    assert panel_axes((64, 64, 64), affine).record() == {"axes": MODEL_AXES, "basis": "model grid"}
    # The same RAS affine on another shape, or shifted, is a scanner grid.
    assert not is_model_grid((64, 64, 60), affine)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    assert panel_axes((64, 64, 64), shifted).codes == "RAS"


def test_letters_through_a_transform_are_the_patient_direction_of_each_model_axis():
    # Model world → patient world: +90° about x. Model axis 0 → R, 1 → S, 2 → P.
    to_patient = rigid(axis_angle((1, 0, 0), 90.0), (4.0, -3.0, 2.0))
    axes = panel_axes((32, 32, 32), centred_affine(32), to_patient=to_patient)
    assert (axes.codes, axes.basis) == ("RSP", "transform")
    assert axes.max_angle_deg == pytest.approx(0.0, abs=1e-6)
    views = axes.views()
    assert [v.name for v in views] == ["sagittal", "axial", "coronal"]
    assert views[0].edges == ("I", "S", "A", "P")  # axis 1 → S, axis 2 → P
    assert views[2].edges == ("L", "R", "I", "S")  # axis 0 → R, axis 1 → S
    assert "derived through the twin's stored transform" in axes.note()


def test_a_twin_prepared_from_a_scan_gets_letters_through_its_transform(tmp_path):
    # A phantom turned 180° about the patient's S axis in an LPS scan. Its LV→LA axis
    # stays on +z, so reorientation alone leaves the turn (the patient's axes are the
    # model's, RAS); registration to the phantom reference fixes the roll about that axis
    # and turns the heart back, so model axis 0 then points to the patient's left and
    # axis 1 posterior. The model grid's own RAS affine would put the patient's right on
    # the wrong side.
    heart = make_phantom(0, size=64, seed=0)[0]
    shape = (90, 90, 70)
    scan = place_in_scanner(
        heart,
        rigid(axis_angle((0, 0, 1), 180.0), (6.0, -4.0, 3.0)),
        shape,
        scanner_affine(shape, (2.5, 2.5, 3.0), "LPS"),
    )
    path = tmp_path / "scan.nii.gz"
    write_label_map(path, scan)
    unregistered = twin_panel_axes(resolve_twin(path, size=32, register_to="none"))
    assert (unregistered.codes, unregistered.basis) == ("RAS", "transform")
    twin = resolve_twin(path, size=32, register_to="phantom")
    assert twin.space == "prepared"
    axes = twin_panel_axes(twin)
    assert (axes.codes, axes.basis) == ("LPS", "transform")
    assert axes.max_angle_deg < 5.0
    assert axes.views()[1].edges == ("R", "L", "I", "S")


def test_a_prepared_twin_read_on_the_model_grid_says_model_axes(tmp_path):
    # prepare's output (or an edit's twin/twin.nii.gz) is a map on the model grid: the
    # figures cannot tell its patient's axes from the file, so they say model axes.
    path = tmp_path / "s0001.nii.gz"
    write_label_map(path, LabelMap(make_phantom(3, size=32, seed=0)[0].data, centred_affine(32)))
    twin = resolve_twin(path, size=32)
    assert twin.space == "model" and twin.to_patient() is None
    assert twin_panel_axes(twin).model
    # Resampled from another preset's grid: still model axes (its source is a model grid).
    big = tmp_path / "s0001_64.nii.gz"
    write_label_map(big, make_phantom(3, size=64, seed=0)[0])
    resampled = resolve_twin(big, size=32)
    assert resampled.transform is not None and resampled.to_patient() is None
    assert twin_panel_axes(resampled).model


def test_figures_draw_letters_only_when_given_codes():
    lab = make_phantom(0, size=32, seed=0)[0].data
    model = siblings_figure(lab, [lab])
    texts = figure_texts(model)
    assert "axis 1 →" in texts and not LETTERS & set(texts)
    assert [ax.get_ylabel() for ax in model.axes[::2][:3]] == [
        "model axes 1, 2",
        "model axes 0, 2",
        "model axes 0, 1",
    ]
    assert "Model axes" in model.legends[0].get_title().get_text()
    ras = figure_texts(siblings_figure(lab, [lab], orientation="RAS"))
    assert {"R", "L", "A", "P", "S", "I"} <= set(ras)
    p = np.zeros((7, 16, 16, 16), np.float32)
    p[0] = 1.0
    occ = occupancy_figure(p, p, channels=("heart",))
    assert not LETTERS & set(figure_texts(occ))
    assert any("Model axes" in t.get_text() for t in occ.texts)
    occ_lps = occupancy_figure(p, p, channels=("heart",), orientation="LPS")
    assert {"R", "L", "A", "P", "S", "I"} <= set(figure_texts(occ_lps))


def test_metrics_grids_say_where_their_axes_come_from():
    assert grid_axes(None).model  # maps summarised in memory: no affine, model axes
    assert grid_axes({"shape": [64] * 3, "affine": centred_affine(64).tolist()}).model
    lps = scanner_affine((80, 80, 60), (1.5, 1.5, 2.5), "LPS")
    assert grid_axes({"shape": [80, 80, 60], "affine": lps.tolist()}).codes == "LPS"
    derived = {"axes": {"axes": "LPS", "basis": "transform", "max_angle_deg": 3.0}}
    assert grid_axes(derived) == PanelAxes("LPS", "transform", 3.0)
