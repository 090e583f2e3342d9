"""Input label schemes (issue 15 item 1): built-in schemes, JSON mappings, nnU-Net
dataset.json, unknown values listed with their voxel counts, the scheme recorded in
manifests, and `prepare labelmaps` sharing `prepare totalsegmentator`'s preparation.

Known answers: a phantom's labels re-coded in another scheme must read back as the
phantom's own labels; a value no scheme maps must be named with its exact voxel count.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from siblings import anatomy, cli
from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import place_in_scanner, scanner_affine
from siblings.data.twin import resolve_twin
from siblings.errors import InputError
from siblings.io import LabelMap, LabelMapError, read_json, read_label_map
from siblings.labels import BUILT_IN, LabelScheme, load_scheme, tissue_of
from siblings.metrics.cohort import evaluate
from siblings.pipelines.prepare import prepare_labelmaps

L = anatomy.LABELS
# MM-WHS codes of each project label (the pulmonary artery, 850, has none).
MMWHS = {"Ao": 820, "Myo": 205, "RV": 600, "LV": 500, "RA": 550, "LA": 420}


def recode(data: np.ndarray, codes: dict[str, int], dtype=np.int16) -> np.ndarray:
    out = np.zeros(data.shape, dtype)
    for tissue, code in codes.items():
        out[data == L[tissue]] = code
    return out


def save(path, data, affine=None):
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    img.set_qform(img.affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(0, size=32, seed=0)[0]


def test_mmwhs_codes_read_back_as_the_project_labels(tmp_path, phantom):
    coded = recode(phantom.data, MMWHS)
    coded[:2, :2, :2] = 850  # pulmonary artery: background
    path = save(tmp_path / "mmwhs.nii.gz", coded, phantom.affine)
    lm = read_label_map(path, labels="mmwhs")
    expected = phantom.data.copy()
    expected[:2, :2, :2] = 0
    np.testing.assert_array_equal(lm.data, expected)


def test_ordinal_mmwhs_and_heartchambers_orders_agree(phantom):
    order = ("Myo", "LA", "LV", "RA", "RV", "Ao")  # MM-WHS code order = TotalSegmentator's
    coded = recode(phantom.data, {t: i + 1 for i, t in enumerate(order)})
    coded[0, 0, 0] = 7  # pulmonary artery
    expected = phantom.data.copy()
    expected[0, 0, 0] = 0
    for name in ("mmwhs-ordinal", "totalsegmentator-heartchambers"):
        np.testing.assert_array_equal(BUILT_IN[name].remap(coded), expected)


def test_unknown_values_are_listed_with_their_voxel_counts(tmp_path, phantom):
    coded = recode(phantom.data, MMWHS)
    coded[0, 0, :5] = 421  # 5 voxels of a code MM-WHS does not define
    coded[1, 1, 1] = 9
    path = save(tmp_path / "odd.nii.gz", coded)
    with pytest.raises(LabelMapError) as info:
        read_label_map(path, labels="mmwhs")
    text = str(info.value)
    assert text.startswith(f"{path}: has values the 'mmwhs' label scheme does not map: ")
    assert "9 (1 voxel), 421 (5 voxels)" in text
    # The project's own scheme says the same of values outside 0–6, and how to go on.
    with pytest.raises(LabelMapError) as info:
        read_label_map(path)
    worded = info.value.worded(cli.flag)
    assert "outside 0–6: 9 (1 voxel), 205 (" in worded and "--labels SCHEME|FILE" in worded


def test_json_mapping_with_a_default_for_other_values(tmp_path, phantom):
    coded = recode(phantom.data, MMWHS)
    coded[0, 0, :5] = 421
    scheme = tmp_path / "scheme.json"
    mapping = {str(v): t for t, v in MMWHS.items()}
    scheme.write_text(json.dumps(mapping))
    path = save(tmp_path / "m.nii.gz", coded)
    with pytest.raises(LabelMapError, match=r"421 \(5 voxels\)"):
        read_label_map(path, labels=scheme)
    scheme.write_text(json.dumps({**mapping, "*": "background"}))
    np.testing.assert_array_equal(read_label_map(path, labels=scheme).data, phantom.data)
    # Names are matched without regard to case, '_' or spaces.
    scheme.write_text(json.dumps({"205": "myocardium", "500": "Left_Ventricle", "*": "bg"}))
    got = read_label_map(path, labels=scheme).data
    assert set(np.unique(got)) == {0, L["Myo"], L["LV"]}


@pytest.mark.parametrize(
    "content, reason",
    [
        ('{"205": "spleen"}', r"205: 'spleen' is not a tissue"),
        ('{"x": "LV"}', r"'x' is not an integer source value"),
        ('{"*": "LV"}', r'"\*" can only map to "background"'),
        ("[1, 2]", "is not a JSON object"),
        ("{", "is not valid JSON"),
        ('{"labels": {"background": 0, "LV": [1, 2]}}', "region-based"),
        ('{"labels": {"background": 0, "scar": 1}}', r"'scar' \(1\)"),
    ],
)
def test_bad_scheme_files_are_refused_with_the_reason(tmp_path, content, reason):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(InputError, match=reason) as info:
        load_scheme(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "--labels" in info.value.worded(cli.flag)


def test_unknown_scheme_name_lists_the_built_in_ones():
    with pytest.raises(InputError, match=r"unknown label scheme 'mmwsh'.*mmwhs"):
        load_scheme("mmwsh")


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_nnunet_dataset_json_labels_are_matched_by_name(tmp_path, version, phantom):
    names = {
        0: "background",
        1: "LV_blood_pool",
        2: "myocardium",
        3: "right ventricle",
        4: "left atrium",
        5: "RA",
        6: "aorta",
        7: "pulmonary artery",
    }
    labels = (
        {n: v for v, n in names.items()}
        if version == "v2"
        else {str(v): n for v, n in names.items()}
    )
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))
    scheme = load_scheme(path)
    assert scheme.label_of() == {
        0: 0,
        1: L["LV"],
        2: L["Myo"],
        3: L["RV"],
        4: L["LA"],
        5: L["RA"],
        6: L["Ao"],
        7: 0,
    }
    coded = recode(phantom.data, {"LV": 1, "Myo": 2, "RV": 3, "LA": 4, "RA": 5, "Ao": 6})
    np.testing.assert_array_equal(scheme.remap(coded), phantom.data)


def test_common_names_cover_totalsegmentator_and_mmwhs_wording():
    assert tissue_of("heart_ventricle_left") == "LV"
    assert tissue_of("Myocardium of the left ventricle") == "Myo"
    assert tissue_of("ascending-aorta") == "Ao"
    assert tissue_of("pulmonary_artery") == "background"
    assert tissue_of("liver") is None


def test_a_record_rebuilds_the_same_scheme(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"205": "Myo", "500": "LV", "*": "background"}')
    scheme = load_scheme(path)
    again = LabelScheme.from_record(json.loads(json.dumps(scheme.record())))
    values = np.array([0, 205, 500, 17, 205])
    np.testing.assert_array_equal(again.remap(values), scheme.remap(values))
    assert scheme.record()["sha256"] and scheme.record()["other"] == "background"


def test_labels_list_prints_every_built_in_scheme(capsys):
    assert cli.main(["labels", "--list"]) == 0
    out = capsys.readouterr().out
    for name in BUILT_IN:
        assert f"{name}: " in out
    assert "  205 -> Myo" in out and "  850 -> background" in out
    assert cli.main(["labels", "nonsense"]) == 2
    assert "unknown label scheme" in capsys.readouterr().err


def test_a_twin_in_another_scheme_resolves_to_the_same_model_map(tmp_path, phantom):
    # The phantom moved into a scan grid (LPS, anisotropic), stored with MM-WHS codes.
    shape, spacing = (40, 40, 24), (5.0, 5.0, 8.0)
    scan = place_in_scanner(phantom, np.eye(4), shape, scanner_affine(shape, spacing, "LPS"))
    plain = save(tmp_path / "plain.nii.gz", scan.data, scan.affine)
    coded = save(tmp_path / "coded.nii.gz", recode(scan.data, MMWHS), scan.affine)
    a = resolve_twin(plain, 32, register_to="none")
    b = resolve_twin(coded, 32, register_to="none", labels="mmwhs")
    np.testing.assert_array_equal(a.label_map.data, b.label_map.data)
    assert b.describe()["labels"]["name"] == "mmwhs"
    assert b.describe()["labels"]["mapping"]["205"] == "Myo"
    assert a.describe()["labels"]["name"] == "siblings"


def test_evaluate_records_both_schemes_and_measures_the_same(tmp_path):
    ref, coh, coh_coded = (tmp_path / n for n in ("ref", "coh", "coded"))
    for folder in (ref, coh, coh_coded):
        folder.mkdir()
    for i in range(3):
        lm = make_phantom(i, size=32, seed=0)[0]
        save(ref / f"r{i}.nii.gz", lm.data, lm.affine)
        lm = make_phantom(10 + i, size=32, seed=0)[0]
        save(coh / f"c{i}.nii.gz", lm.data, lm.affine)
        save(coh_coded / f"c{i}.nii.gz", recode(lm.data, MMWHS), lm.affine)
    plain = evaluate(coh, ref, k=1, n_boot=0, workers=1)
    coded = evaluate(coh_coded, ref, k=1, n_boot=0, workers=1, labels="mmwhs")
    np.testing.assert_array_equal(plain.cohort.features, coded.cohort.features)
    assert coded.metrics["fd"] == plain.metrics["fd"]
    assert coded.metrics["labels"]["cohort"]["name"] == "mmwhs"
    assert coded.metrics["labels"]["reference"]["name"] == "siblings"


def test_prepare_labelmaps_is_the_totalsegmentator_preparation(tmp_path):
    """A folder of MM-WHS-coded scans prepares to the maps of the same scans in the
    project's labels; a file with unmapped values is excluded with their counts."""
    shape, spacing = (44, 44, 30), (5.0, 5.0, 7.0)
    affine = scanner_affine(shape, spacing, "LPS")
    plain, coded = tmp_path / "plain", tmp_path / "coded"
    plain.mkdir()
    coded.mkdir()
    for i in range(1):
        scan = place_in_scanner(make_phantom(i, size=32, seed=0)[0], np.eye(4), shape, affine)
        save(plain / f"p{i}.nii.gz", scan.data, affine)
        save(coded / f"p{i}.nii.gz", recode(scan.data, MMWHS), affine)
    odd = recode(scan.data, MMWHS)
    odd[0, 0, :3] = 421
    save(coded / "odd.nii.gz", odd, affine)
    a = prepare_labelmaps(plain, tmp_path / "a", size=32, workers=1, progress=False)
    b = prepare_labelmaps(coded, tmp_path / "b", "mmwhs", size=32, workers=1, progress=False)
    assert a["kept"] == b["kept"] == ["p0"]
    for name in a["kept"]:
        np.testing.assert_array_equal(
            read_label_map(tmp_path / "a" / f"{name}.nii.gz").data,
            read_label_map(tmp_path / "b" / f"{name}.nii.gz").data,
        )
        manifest = read_json(tmp_path / "b" / f"{name}.json")
        assert manifest["settings"]["labels"]["name"] == "mmwhs"
        assert manifest["steps"]["load"]["labels"]["mapping"]["420"] == "LA"
        assert manifest["steps"]["load"]["header"]["orientation"] == "LPS"
    reason = read_json(tmp_path / "b" / "odd.json")["reason"]
    assert reason.startswith("unreadable: odd.nii.gz has values the 'mmwhs' label scheme")
    assert "own scheme with --labels" in reason
    assert "421 (3 voxels)" in reason
    assert read_json(tmp_path / "b" / "prepare.json")["settings"]["labels"]["name"] == "mmwhs"


def test_prepare_labelmaps_cli_refuses_a_bad_scheme_before_writing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    save(src / "x.nii.gz", np.zeros((4, 4, 4), np.uint8))
    out = tmp_path / "out"
    code = cli.main(["prepare", "labelmaps", str(src), "--labels", "mmwsh", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--labels" in err[0]
    assert not out.exists()


def test_label_map_values_beyond_the_table_use_the_sparse_path():
    scheme = LabelScheme("wide", {0: "background", -(2**30): "LV", 2**30: "RV"})
    np.testing.assert_array_equal(
        scheme.remap(np.array([0, 2**30, -(2**30)], np.int64)), [0, L["RV"], L["LV"]]
    )
    with pytest.raises(InputError, match=r"5 \(2 voxels\)"):
        scheme.remap(np.array([0, 2**30, 5, 5], np.int64))


def test_a_label_map_object_keeps_its_header_record(tmp_path, phantom):
    path = save(tmp_path / "p.nii.gz", phantom.data.astype(np.uint16), phantom.affine)
    lm = read_label_map(path)
    assert isinstance(lm, LabelMap)
    assert lm.header["datatype"] == "uint16" and lm.header["affine_from"] == "sform"


def test_repair_reads_another_scheme_and_writes_the_project_labels(tmp_path, phantom):
    from siblings.pipelines.repair import repair_maps

    plain, coded = tmp_path / "plain", tmp_path / "coded"
    plain.mkdir()
    coded.mkdir()
    save(plain / "t.nii.gz", phantom.data, phantom.affine)
    save(coded / "t.nii.gz", recode(phantom.data, MMWHS), phantom.affine)
    a = repair_maps(plain, tmp_path / "a", progress=False)
    b = repair_maps(coded, tmp_path / "b", progress=False, labels="mmwhs")
    np.testing.assert_array_equal(read_label_map(a.maps[0]).data, read_label_map(b.maps[0]).data)
    assert read_json(tmp_path / "b" / "t.json")["labels"]["name"] == "mmwhs"
    assert b.summary["labels"]["name"] == "mmwhs"
