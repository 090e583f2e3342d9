"""The inputs of the worked examples in docs/inputs.md, one folder per source.

Two phantom hearts (``make_phantom(0|1, size=64, seed=1)``) placed in an LPS scan of
110 x 110 x 80 voxels of 2 x 2 x 3 mm, rotated 20° and 30°, written as each source
writes its segmentations. Run it from any folder: it writes ``./byo``.

    python docs/examples/byo_inputs.py
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import (
    axis_angle,
    place_in_scanner,
    scanner_affine,
    write_totalseg_subject,
)

root = Path("byo")
shape, spacing = (110, 110, 80), (2.0, 2.0, 3.0)
affine = scanner_affine(shape, spacing, "LPS")
# siblings value (1 Ao, 2 Myo, 3 RV, 4 LV, 5 RA, 6 LA; 7: a pulmonary-artery blob the
# phantom lacks) -> the source's value
CODES = {
    "mmwhs": {1: 820, 2: 205, 3: 600, 4: 500, 5: 550, 6: 420, 7: 850},
    "mmwhs17": {1: 6, 2: 1, 3: 5, 4: 3, 5: 4, 6: 2, 7: 7},
    "hc_files": {1: 6, 2: 1, 3: 5, 4: 3, 5: 4, 6: 2, 7: 7},  # heartchambers_highres order
    "nnunet": {1: 6, 2: 2, 3: 3, 4: 1, 5: 5, 6: 4},
    "mine": {1: 60, 2: 20, 3: 30, 4: 10, 5: 50, 6: 40},
}


def scan(i: int):
    pose = np.eye(4)
    pose[:3, :3] = axis_angle((0.3, 1.0, 0.4), 20.0 + 10 * i)
    pose[:3, 3] = (15.0, -10.0, 8.0)
    return place_in_scanner(make_phantom(i, size=64, seed=1)[0], pose, shape, affine)


def save(path: Path, data: np.ndarray, dtype, grid: np.ndarray = affine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data.astype(dtype), grid)
    img.set_sform(grid, code=1)
    img.set_qform(grid, code=1)
    nib.save(img, path)


for i in range(2):
    lm = scan(i)
    name = f"s000{i + 1}"
    for layout in ("v1", "v2-ml", "v2-files"):  # TotalSegmentator subject folders
        write_totalseg_subject(root / f"ts_{layout.replace('-', '_')}" / name, lm, layout)
    pa = np.zeros(lm.shape, bool)  # a 4-voxel cube above the heart's top voxel
    heart = np.argwhere(lm.data > 0)
    top = heart[heart[:, 2].argmax()]
    pa[top[0] - 2 : top[0] + 2, top[1] - 2 : top[1] + 2, top[2] + 2 : top[2] + 6] = True
    for source, codes in CODES.items():
        out = np.zeros(lm.shape, np.int16)
        for ours, theirs in codes.items():
            out[(lm.data == ours) if ours < 7 else pa] = theirs
        stem = f"ct_100{i + 1}_label" if source.startswith("mmwhs") else name
        dtype = np.int16 if source.startswith("mmwhs") else np.uint8
        save(root / source / f"{stem}.nii.gz", out, dtype)

(root / "nnunet_dataset.json").write_text(
    json.dumps(
        {
            "channel_names": {"0": "CT"},
            "labels": {
                "background": 0,
                "left ventricle": 1,
                "LV myocardium": 2,
                "right ventricle": 3,
                "left atrium": 4,
                "right atrium": 5,
                "aorta": 6,
            },
            "numTraining": 20,
            "file_ending": ".nii.gz",
        },
        indent=1,
    )
)
(root / "my_scheme.json").write_text(
    json.dumps({"10": "LV", "20": "Myo", "30": "RV", "40": "LA", "50": "RA", "60": "Ao"})
)

# Three MM-WHS-coded scans for the exclusions example: complete, holding a code MM-WHS
# does not define (421 on 4 voxels), and cut by the scan at the LV's middle slice.
mixed = root / "mmwhs_mixed"
codes = np.asarray(nib.load(root / "mmwhs" / "ct_1001_label.nii.gz").dataobj)
save(mixed / "ct_1001_label.nii.gz", codes, np.int16)
odd = codes.copy()
odd[tuple(np.argwhere(codes == 420)[:4].T)] = 421
save(mixed / "ct_1002_label.nii.gz", odd, np.int16)
k = int(np.argwhere(codes == 500)[:, 2].mean())
shift = np.eye(4)
shift[2, 3] = k
save(mixed / "ct_1003_cut.nii.gz", codes[:, :, k:], np.int16, affine @ shift)
