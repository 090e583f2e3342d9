"""Scanner-space output of `siblings edit` on a CT-sized twin: speed and exactness.

    python benchmarks/bench_scanner_output.py --out /tmp/ct [--twins 3] [--repeats 3]

Writes, into ``--out``,
  * ``twin_ct.nii.gz``: a 128³ phantom (index 0) placed with a rigid pose on a CT grid,
    512 × 512 × 248 voxels of 0.49 × 0.49 × 0.63 mm, LAS voxel axes tilted 7° (oblique),
    qform and sform codes 2/2;
  * ``twin_scan_<i>.nii.gz`` (``--twins``): phantoms 1, 2, 3 on a 0.8 × 0.8 × 1.5 mm,
    260 × 260 × 140 LPS grid with qform code 1 and no sform (as many CT exports), for
    `siblings edit local` runs that measure kept-tissue Dice in both spaces;
and prints, for the CT twin prepared for the shipped preset's grid (64³, 2.8 mm),
best-of-``--repeats`` wall times of
  * :func:`siblings.data.geometry.unprepare` of a sibling-like map (the prepared twin
    with its LV grown by 2 voxels) onto the CT grid, against resampling every channel
    over the whole grid (the plain definition), and whether the two agree voxel for voxel;
  * :func:`siblings.diffusion.keep.compose_exact` of that map with the twin's original
    scanner-space voxels (the exact-keep composition on the scanner grid);
  * writing the composed map (gzip NIfTI).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from timing import best_of, describe_machine, setup_threads

from siblings import anatomy
from siblings.data import geometry
from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import axis_angle, place_in_scanner, scanner_affine
from siblings.data.twin import resolve_twin
from siblings.diffusion.keep import compose_exact
from siblings.io import LabelMap, write_label_map

L = anatomy.LABELS


def save(path: Path, lm: LabelMap, qform: int, sform: int) -> Path:
    img = nib.Nifti1Image(np.asarray(lm.data, np.uint8), lm.affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(lm.affine, code=qform)
    img.set_sform(lm.affine, code=sform)
    nib.save(img, path)
    return path


def ct_twin() -> LabelMap:
    """Phantom 0 (128³) on a 512 × 512 × 248 LAS grid of 0.49 × 0.49 × 0.63 mm, oblique."""
    lm, _ = make_phantom(0, size=128, seed=0)
    shape = (512, 512, 248)
    affine = np.eye(4)
    affine[:3, :3] = axis_angle((1.0, 0.5, 0.2), 7.0) @ np.diag([-0.49, 0.49, 0.63])
    affine[:3, 3] = np.array([5.0, -8.0, 12.0]) - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    pose = geometry.rigid(axis_angle((0.3, 1.0, -0.4), 25.0), (6.0, -4.0, 10.0))
    return place_in_scanner(lm, pose, shape, affine)


def scan_twin(index: int) -> LabelMap:
    lm, _ = make_phantom(index, size=128, seed=0)
    shape = (260, 260, 140)
    pose = geometry.rigid(axis_angle((0.5, 1.0, 0.2), 20.0 + 5 * index), (8.0, -6.0, 4.0))
    return place_in_scanner(lm, pose, shape, scanner_affine(shape, (0.8, 0.8, 1.5), "LPS"))


def full_grid(lm: LabelMap, matrix: np.ndarray, shape, affine) -> np.ndarray:
    """One-hot linear resampling over the whole output grid, argmax (ties: lower label)."""
    m = np.linalg.inv(lm.affine) @ np.linalg.inv(matrix) @ affine
    kw = dict(matrix=m[:3, :3], offset=m[:3, 3], output_shape=shape, mode="constant")
    best = np.full(shape, -1.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    for k in range(anatomy.NUM_LABELS):
        value = ndimage.affine_transform(
            (lm.data == k).astype(np.float32), order=1, cval=float(k == 0), prefilter=False, **kw
        )
        better = value > best
        best[better], labels[better] = value[better], k
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--twins", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    setup_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(describe_machine())
    ct = ct_twin()
    path = save(args.out / "twin_ct.nii.gz", ct, 2, 2)
    print(f"wrote {path}: {ct.shape}, {np.count_nonzero(ct.data) / 1e6:.2f} M heart voxels")
    for i in range(1, args.twins + 1):
        print("wrote", save(args.out / f"twin_scan_{i}.nii.gz", scan_twin(i), 1, 0))

    t0 = time.perf_counter()
    twin = resolve_twin(path, 64)
    print(f"twin prepared for 64³ in {time.perf_counter() - t0:.1f} s (with its round trip)")
    assert twin.transform is not None and twin.original is not None
    sib = twin.label_map.data.copy()
    sib[ndimage.binary_dilation(sib == L["LV"], iterations=2) & (sib != L["RV"])] = L["LV"]
    sibling = LabelMap(sib, twin.label_map.affine)
    back = geometry.unprepare(sibling, twin.transform)
    t = twin.transform
    start = time.perf_counter()
    reference = full_grid(sibling, np.linalg.inv(t.matrix), t.source_shape, t.source_affine)
    full_s = time.perf_counter() - start
    print(
        f"unprepare onto {'x'.join(map(str, t.source_shape))}: "
        f"{best_of(lambda: geometry.unprepare(sibling, t), args.repeats):.2f} s; whole-grid "
        f"resampling {full_s:.2f} s; identical: {np.array_equal(back.data, reference)}"
    )
    kept = [L[x] for x in ("Ao", "RV", "RA", "LA")]
    composed = compose_exact(twin.original.data, back.data, kept)
    print(
        f"compose_exact on the scan grid: "
        f"{best_of(lambda: compose_exact(twin.original.data, back.data, kept), args.repeats):.2f}"
        f" s; seam {composed.record()}"
    )
    out_map = LabelMap(composed.labels, back.affine, xform_codes=back.xform_codes)
    target = args.out / "bench_sibling.nii.gz"
    print(f"write: {best_of(lambda: write_label_map(target, out_map), args.repeats):.2f} s")


if __name__ == "__main__":
    main()
