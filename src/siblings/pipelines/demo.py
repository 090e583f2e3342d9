"""`siblings demo`: a short tour of the package with the shipped weights.

1. a small phantom cohort (the embedded default data) and its summary;
2. a few unconditional samples from the shipped latent diffusion model;
3. one held-out phantom twin, placed in a scanner-like space (LPS, 1.5 x 1.5 x 2.5 mm,
   rotated), edited both ways: perturbational (ψ = 0.5) and localized (LV regenerated),
   each run with its manifests, its siblings back on the twin's scan grid and its report
   (side-by-side figure of the twin and its siblings).

Counts are small so the tour takes a few minutes on two CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data.phantom import make_phantom, summarise_cohort
from ..data.phantom_scans import axis_angle, place_in_scanner, scanner_affine
from ..io import LabelMap, write_label_map
from .phantom import generate_cohort

TWIN_SEED = 1  # the held-out cohort of the README (`siblings phantom --seed 1`)


def scan_space_twin(size: int, seed: int = TWIN_SEED) -> tuple[LabelMap, LabelMap]:
    """A defect-free phantom (model space) and the same heart in a scanner-like space.

    The scan grid is LPS with 1.5 x 1.5 x 2.5 mm voxels and a 230 x 230 x 200 mm field of
    view; the heart is rotated 20° and shifted by a few centimetres, as in a CT.
    """
    twin = make_phantom(0, size=size, seed=seed)[0]
    pose = np.eye(4)
    pose[:3, :3] = axis_angle((0.3, 1.0, 0.4), 20.0)
    pose[:3, 3] = (15.0, -10.0, 8.0)
    spacing = (1.5, 1.5, 2.5)
    shape = tuple(round(f / s) for f, s in zip((230.0, 230.0, 200.0), spacing, strict=True))
    scan = place_in_scanner(twin, pose, shape, scanner_affine(shape, spacing, "LPS"))
    return twin, scan


def run_demo(
    out: str | Path,
    seed: int = 0,
    *,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
    device: str | None = None,
    amp: bool = False,
    n_phantoms: int = 16,
    n_samples: int = 4,
    n_siblings: int = 4,
    steps: int = 20,
    progress: bool = True,
) -> dict[str, Path]:
    """Run the tour into ``out`` and print where everything is; returns the main paths.

    ``checkpoint`` defaults to the shipped weights; ``preset``, ``device`` and ``amp``
    (bf16 autocast) are passed to :meth:`LatentDiffusionModel.load`. The counts are kept
    small so that the whole tour runs in minutes on a CPU.
    """
    from ..editing import check_settings, format_run
    from ..models.ldm import LatentDiffusionModel
    from .edit import run_edit
    from .sample import sample_cohort

    t0 = time.perf_counter()
    out = Path(out)
    # The model first: a wrong checkpoint or preset fails before anything is written.
    model = LatentDiffusionModel.load(checkpoint, device=device, preset=preset, amp=amp)
    rows = generate_cohort(
        out / "phantom", n=n_phantoms, size=64, seed=seed, defect_rate=0.25, progress=progress
    )
    print(summarise_cohort(rows))
    print(f"demo cohort written to {out / 'phantom'}")

    where = "shipped weights" if checkpoint is None else str(checkpoint)
    print(f"\n{n_samples} unconditional samples ({where}, {steps} steps)")
    sample_cohort(model, out / "samples", n_samples, steps=steps, seed=seed, progress=progress)
    print(f"    written to {out / 'samples'}")

    twin, scan = scan_space_twin(model.preset.size)
    twin_path = out / "twin" / "twin_scan.nii.gz"
    write_label_map(twin_path, scan)
    write_label_map(out / "twin" / "twin_model_space.nii.gz", twin)
    print(f"\nperturbational editing of {twin_path} (a phantom in scanner space), psi = 0.5")
    counts = dict(n=n_siblings, steps=steps, seed=seed)
    perturb = check_settings("perturb", psi=0.5, **counts)
    perturbed = run_edit(
        model, twin_path, out / "perturb_psi0.5", perturb, progress=progress, overwrite=True
    )
    print(format_run(perturbed))
    print(f"\nlocalized editing of {twin_path}: regenerate LV")
    # The same twin: prepared and encoded once, by the first run.
    encoding = perturbed.result.encoding
    local = run_edit(
        model, perturbed.twin, out / "local_LV", check_settings("local", regenerate="LV", **counts),
        encoding=encoding, progress=progress, overwrite=True,
    )  # fmt: skip
    print(format_run(local))
    paths = {
        "phantom": out / "phantom",
        "samples": out / "samples",
        "twin": twin_path,
        "perturb": perturbed.out,
        "local": local.out,
        "perturb_report": perturbed.out / "report" / "report.html",
        "local_report": local.out / "report" / "report.html",
        "perturb_figure": perturbed.out / "report" / "siblings.png",
        "local_figure": local.out / "report" / "siblings.png",
    }
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; open:")
    for key in ("perturb_report", "local_report", "perturb_figure", "local_figure"):
        print(f"  {paths[key]}")
    return paths
