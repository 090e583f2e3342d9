"""The label schema as data: SPEC §1 labels, §5 rules and columns, §2 TotalSegmentator maps."""

from __future__ import annotations

import doctest

import pytest

from siblings import anatomy


def test_label_values_are_the_spec_table():
    # SPEC §1: one-hot channel index == label value.
    assert anatomy.LABELS == {
        "background": 0,
        "Ao": 1,
        "Myo": 2,
        "RV": 3,
        "LV": 4,
        "RA": 5,
        "LA": 6,
    }
    assert anatomy.NUM_LABELS == 7
    assert anatomy.TISSUES == ("Ao", "Myo", "RV", "LV", "RA", "LA")
    assert set(anatomy.LONG_NAMES) == set(anatomy.LABEL_NAMES)
    assert anatomy.LONG_NAMES["Myo"] == "left-ventricular myocardium"


def test_every_label_has_a_distinct_rgb_colour_and_background_is_black():
    assert set(anatomy.COLOURS) == set(anatomy.LABEL_NAMES)
    for rgb in anatomy.COLOURS.values():
        assert len(rgb) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in rgb)
    assert len(set(anatomy.COLOURS.values())) == anatomy.NUM_LABELS
    assert anatomy.COLOURS["background"] == (0, 0, 0)


def test_morphology_columns_follow_spec_order():
    # SPEC §5: volume, major, minor axis for LV, RV, LA, RA, in that order.
    assert anatomy.CHAMBERS == ("LV", "RV", "LA", "RA")
    assert anatomy.MORPHOLOGY_COLUMNS == (
        "LV_volume_ml", "LV_major_mm", "LV_minor_mm",
        "RV_volume_ml", "RV_major_mm", "RV_minor_mm",
        "LA_volume_ml", "LA_major_mm", "LA_minor_mm",
        "RA_volume_ml", "RA_major_mm", "RA_minor_mm",
    )  # fmt: skip


def test_twelve_topology_rules_in_spec_order_with_matching_kinds_and_tissues():
    assert anatomy.TOPOLOGY_COLUMNS == (
        "cc_Myo", "cc_LV", "cc_RV", "cc_LA", "cc_RA",
        "adj_LV_Ao", "adj_LV_Myo", "adj_LV_LA", "adj_RV_Myo", "adj_RV_RA",
        "sep_LV_RV", "sep_LA_RA",
    )  # fmt: skip
    kinds = [rule.kind for rule in anatomy.TOPOLOGY_RULES]
    assert kinds == ["components"] * 5 + ["required_contact"] * 5 + ["forbidden_contact"] * 2
    for rule in anatomy.TOPOLOGY_RULES:
        # The column name is built from the rule's tissues, so data and names cannot drift.
        prefix = {"components": "cc", "required_contact": "adj", "forbidden_contact": "sep"}
        assert rule.column == "_".join([prefix[rule.kind], *rule.tissues])
        assert all(t in anatomy.TISSUES for t in rule.tissues)


def test_rule_descriptions_read_as_sentences():
    by_column = {rule.column: rule for rule in anatomy.TOPOLOGY_RULES}
    assert by_column["cc_LV"].description == "LV is one connected component"
    assert by_column["adj_RV_RA"].description == "RV touches RA"
    assert by_column["sep_LA_RA"].description == "LA does not touch RA"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LV", {"LV"}),
        ("lv, RV", {"LV", "RV"}),
        ("myo,LA,ra", {"Myo", "LA", "RA"}),
        (["Ao", "ao"], {"Ao"}),
    ],
)
def test_tissue_set_parses_names_case_insensitively(text, expected):
    assert anatomy.tissue_set(text) == frozenset(expected)


def test_tissue_set_names_the_unknown_tissue_and_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown tissue 'PA'.*LV"):
        anatomy.tissue_set("LV,PA")
    with pytest.raises(ValueError, match="no tissue"):
        anatomy.tissue_set(" , ")


@pytest.mark.parametrize(("size", "mm"), [(128, 1.4), (64, 2.8), (32, 5.6), (16, 11.2)])
def test_every_grid_preset_spans_the_same_179_2_mm_field_of_view(size, mm):
    assert anatomy.voxel_size_mm(size) == pytest.approx(mm, abs=1e-12)
    assert size * anatomy.voxel_size_mm(size) == pytest.approx(179.2)


@pytest.mark.parametrize("size", [0, -4])
def test_voxel_size_refuses_non_positive_grids(size):
    with pytest.raises(ValueError, match="positive"):
        anatomy.voxel_size_mm(size)


def test_totalsegmentator_v1_files_map_to_our_labels():
    assert anatomy.TOTALSEG_V1_FILES == {
        "aorta": 1,
        "heart_myocardium": 2,
        "heart_ventricle_right": 3,
        "heart_ventricle_left": 4,
        "heart_atrium_right": 5,
        "heart_atrium_left": 6,
    }


def test_totalsegmentator_v2_heartchambers_values_are_totalsegmentators_class_map():
    # TotalSegmentator's map_to_binary.py, task "heartchambers_highres".
    assert anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES == {
        1: "heart_myocardium",
        2: "heart_atrium_left",
        3: "heart_ventricle_left",
        4: "heart_atrium_right",
        5: "heart_ventricle_right",
        6: "aorta",
        7: "pulmonary_artery",
    }
    # Every one of our tissues is recoverable from the v2 task; only the pulmonary artery
    # is unused.
    v2_classes = set(anatomy.TOTALSEG_V2_HEARTCHAMBERS_VALUES.values())
    assert set(anatomy.TOTALSEG_CLASSES.values()) == v2_classes - {"pulmonary_artery"}
    assert anatomy.TOTALSEG_V2_WHOLE_HEART == "heart"


def test_module_docstring_example_runs():
    result = doctest.testmod(anatomy)
    assert result.attempted > 0 and result.failed == 0
