"""The one twin type and its resolution (siblings.data.twin)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from siblings import anatomy
from siblings.data.phantom import make_phantom
from siblings.data.twin import Twin, read_rare_twins, resolve_twin
from siblings.errors import InputError
from siblings.io import LabelMap, LabelMapError, centred_affine, sha256_file, write_label_map

SIZE = 32


@dataclass(frozen=True)
class AtLeast:
    """``column >= value``, the part of a Condition that read_rare_twins uses."""

    column: str
    value: float

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def __call__(self, features) -> bool:
        return features[self.column] >= self.value

    def __str__(self) -> str:
        return f"{self.column} >= {self.value:g}"


def lv_voxels(lm: LabelMap) -> dict[str, float]:
    return {"LV_voxels": float((lm.data == anatomy.LABELS["LV"]).sum())}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    maps = [make_phantom(i, size=SIZE, seed=0)[0] for i in range(3)]
    paths = [write_label_map(folder / f"p{i}.nii.gz", m) for i, m in enumerate(maps)]
    return folder, paths, [lv_voxels(m)["LV_voxels"] for m in maps]


def test_a_twin_in_model_space_is_used_as_it_is(cohort):
    _, paths, _ = cohort
    twin = resolve_twin(paths[0], SIZE)
    assert isinstance(twin, Twin) and twin.space == "model" and twin.kind == "label map"
    assert twin.transform is None and not twin.in_other_space and twin.features == {}
    assert twin.sha256 == sha256_file(paths[0])
    assert np.array_equal(twin.label_map.data, make_phantom(0, size=SIZE, seed=0)[0].data)
    assert np.allclose(twin.label_map.affine, centred_affine(SIZE))


def test_the_rare_twins_are_the_maps_meeting_the_condition(cohort):
    folder, paths, lv = cohort
    cut = sorted(lv)[1]  # two of three maps have at least this many LV voxels
    twins = read_rare_twins(folder, SIZE, 179.2 / SIZE, AtLeast("LV_voxels", cut), lv_voxels)
    want = [p for p, v in zip(paths, lv, strict=True) if v >= cut]
    assert [t.source for t in twins] == want and len(want) == 2
    assert all(t.space == "model" and t.features["LV_voxels"] >= cut for t in twins)
    assert [t.sha256 for t in twins] == [sha256_file(p) for p in want]


def test_no_rare_twin_is_an_input_error_quoting_the_range(cohort):
    folder, _, _ = cohort
    with pytest.raises(
        InputError, match=r"no map meets LV_voxels >= 1e\+09 \(3 map\(s\); LV_voxels ranges"
    ):
        read_rare_twins(folder, SIZE, 179.2 / SIZE, AtLeast("LV_voxels", 1e9), lv_voxels)


def test_a_map_off_the_model_grid_is_named(cohort, tmp_path):
    write_label_map(tmp_path / "big.nii.gz", make_phantom(0, size=16, seed=0)[0])
    with pytest.raises(LabelMapError, match=r"big\.nii\.gz.*'tiny' model's grid"):
        read_rare_twins(
            tmp_path, SIZE, 179.2 / SIZE, AtLeast("LV_voxels", 0), lv_voxels, grid_name="tiny"
        )
