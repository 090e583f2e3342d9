"""Digital siblings (SPEC §4): ψ → start step, the limits of perturbational editing,
the kept latent of localized editing, reproducibility, and ``siblings edit`` end to end
(files in model and scanner space, manifests, report, bad input refused with nothing
written). All with the session's micro model: its siblings are meaningless, so tests
check what holds by construction, never how good a sibling looks."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from siblings import anatomy
from siblings.cli import main
from siblings.data import geometry
from siblings.data.phantom import make_phantom
from siblings.data.phantom_scans import place_in_scanner, scanner_affine, write_totalseg_subject
from siblings.diffusion.edit import start_step
from siblings.diffusion.edm import karras_sigmas
from siblings.editing import check_settings
from siblings.io import LabelMap, centred_affine, read_label_map, sha256_file, write_label_map
from siblings.metrics import morphology, topology_checks
from siblings.metrics.cohort import HEADLINE_KEYS
from siblings.metrics.twin import dice_table, twin_metrics
from siblings.models.edits import encode_twin, inpaint, perturb
from siblings.models.ldm import LatentDiffusionModel
from siblings.pipelines.edit import run_edit
from siblings.report.editing import siblings_figure

L = anatomy.LABELS


@pytest.fixture(scope="module")
def model(micro):
    return LatentDiffusionModel.load(micro.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def twin() -> np.ndarray:
    """A defect-free phantom on the micro grid (32³, 5.6 mm), every tissue present."""
    return make_phantom(1, size=32, seed=3)[0].data


@pytest.fixture(scope="module")
def twin_file(tmp_path_factory, twin) -> Path:
    path = tmp_path_factory.mktemp("twin") / "twin.nii.gz"
    write_label_map(path, LabelMap(twin, centred_affine(32)))
    return path


@pytest.fixture(scope="module")
def scan_twin(tmp_path_factory) -> LabelMap:
    """A phantom in scanner space: LPS voxel axes, 3 x 3 x 4 mm, rotated 25° and shifted."""
    from siblings.data.phantom_scans import axis_angle

    heart = make_phantom(2, size=64, seed=3)[0]
    pose = np.eye(4)
    pose[:3, :3] = axis_angle((1.0, 0.5, 0.2), 25.0)
    pose[:3, 3] = (12.0, -8.0, 5.0)
    shape = (80, 80, 60)
    return place_in_scanner(heart, pose, shape, scanner_affine(shape, (3.0, 3.0, 4.0), "LPS"))


def latents_of(model, fn):
    """Run ``fn()`` and return the latents ``model.decode`` was given (float64)."""
    seen = []
    decode = model.decode

    def spy(z, batch=4):
        seen.append(z.detach().clone())
        return decode(z, batch)

    model.decode = spy
    try:
        out = fn()
    finally:
        del model.decode
    return out, torch.cat(seen)


def edit_cli(*args) -> int:
    return main(["edit", *[str(a) for a in args]])


def common(micro, out, n=2, steps=2, seed=0) -> list:
    return [
        "--n", n, "--steps", steps, "--seed", seed, "--batch", 2, "--n-boot", 50,
        "--checkpoint", micro.checkpoint, "--device", "cpu", "--quiet", "--out", out,
        "--invert-steps", 0,  # the posterior mean: test_inversion.py tests the inversion
    ]  # fmt: skip


# ---------------------------------------------------------------------------------
# ψ → start step (SPEC §4).
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("psi", "steps", "start"),
    [
        (1.0, 20, 0),  # everything recomputed: starts at σmax
        (0.8, 20, 4),
        (0.65, 20, 7),
        (0.5, 20, 10),
        (0.35, 20, 13),
        (0.01, 20, 19),  # round(0.2) = 0 → at least one step
        (0.5, 5, 3),  # round(2.5) = 2: Python rounds half to even
    ],
)
def test_psi_maps_to_the_start_of_the_last_round_psi_n_steps(psi, steps, start):
    assert start_step(psi, steps) == start


def test_perturb_starts_at_sigma_of_the_start_step(model, twin):
    res = perturb(model, twin, psi=0.5, n=1, steps=4, seed=0, invert_steps=0)
    sig = karras_sigmas(4, 2e-3, 80.0, 3.0)
    assert res.params["start_step"] == 2 and res.params["recomputed_steps"] == 2
    assert res.params["sigma_start"] == pytest.approx(float(sig[2]))


@pytest.mark.parametrize("psi", [0.0, -0.2, 1.01, float("nan")])
def test_psi_outside_zero_one_is_refused(psi):
    with pytest.raises(ValueError, match="psi"):
        start_step(psi, 20)


# ---------------------------------------------------------------------------------
# The limits of perturbational editing.
# ---------------------------------------------------------------------------------
def test_psi_one_is_unconditional_sampling_from_the_same_noise(model, twin):
    """ψ = 1 starts at σmax from z + σmax·ε with the ε of unconditional sample i: the
    first denoiser input differs from the unconditional one by exactly the twin's latent
    z, which is small beside σmax = 80, so the sibling is the unconditional sample."""
    first = {}
    denoise = model.denoise

    def record(tag):
        def spy(z, sigma):
            first.setdefault(tag, z.clone())
            return denoise(z, sigma)

        return spy

    enc = encode_twin(model, twin, invert_steps=0)  # outside the spies: the twin's latent z
    model.denoise = record("perturb")
    try:
        sib, z_sib = latents_of(
            model, lambda: perturb(model, twin, 1.0, n=2, steps=3, seed=4, encoding=enc)
        )
    finally:
        del model.denoise
    model.denoise = record("uncond")
    try:
        z_unc = model.sample_latents([0, 1], steps=3, seed=4)
    finally:
        del model.denoise
    z = enc.latent.to(torch.float64)
    torch.testing.assert_close(first["perturb"] - first["uncond"], z.expand(2, -1, -1, -1, -1))
    scale = z_unc.abs().max().item()
    assert (z_sib - z_unc).abs().max().item() < 0.02 * scale
    unc = model.decode(z_unc)
    assert np.mean(sib.labels == unc) > 0.98  # ψ = 0.5 agrees on ~94% only


def test_a_tiny_psi_gives_back_the_vae_reconstruction(model, twin):
    """ψ → 0: one step from σmin = 0.002 to 0, so the sibling is decode(z) of the twin's
    latent z (its posterior mean refined by inversion: the edit's encoding)."""
    enc = encode_twin(model, twin, invert_steps=0)
    res, z_sib = latents_of(
        model, lambda: perturb(model, twin, 0.01, n=2, steps=20, seed=1, encoding=enc)
    )
    assert res.params["recomputed_steps"] == 1
    z = enc.latent.to(torch.float64)
    assert (z_sib - z).abs().max().item() < 0.01
    recon = enc.reconstruction
    for lab in res.labels:
        assert np.mean(lab == recon) > 0.995  # ψ = 0.5 agrees on ~30% only


# ---------------------------------------------------------------------------------
# Localized editing.
# ---------------------------------------------------------------------------------
def test_localized_editing_ends_with_the_twins_latent_in_the_kept_region(model, twin):
    enc = encode_twin(model, twin, invert_steps=5)  # the posterior mean, refined by inversion
    res, z_end = latents_of(
        model,
        lambda: inpaint(model, twin, regenerate="LV", n=2, steps=3, seed=2, dilate=0, encoding=enc),
    )
    keep = torch.from_numpy(res.keep_mask)
    assert 0 < keep.float().mean() < 1
    z = enc.latent.to(torch.float64)[0]
    for zi in z_end:
        assert torch.equal(zi[:, keep], z[:, keep])  # exactly: pasted at σ = 0
        assert not torch.equal(zi[:, ~keep], z[:, ~keep])
    # The keep mask holds the tissues kept (not LV, not Myo, no background) on the latent grid.
    assert res.kept == ("Ao", "RV", "RA", "LA")
    f = 32 // res.keep_mask.shape[0]
    coarse = np.isin(twin, [L[t] for t in res.kept]).reshape(8, f, 8, f, 8, f).any(axis=(1, 3, 5))
    assert np.array_equal(res.keep_mask, coarse)


def test_regenerating_every_tissue_is_refused_as_unconditional_sampling(model, twin):
    with pytest.raises(ValueError, match="unconditional sampling"):
        inpaint(model, twin, regenerate="Ao,RV,LV,RA,LA", n=1, steps=2, invert_steps=0)


# ---------------------------------------------------------------------------------
# Reproducibility.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["perturb", "local"])
def test_same_seed_same_siblings_other_seed_other_siblings(model, twin, method):
    def make(seed):
        if method == "perturb":
            return perturb(model, twin, 0.8, n=2, steps=3, seed=seed, invert_steps=0).labels
        return inpaint(model, twin, regenerate="LV", n=2, steps=3, seed=seed, invert_steps=0).labels

    a, b, c = make(7), make(7), make(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # sibling i has its own noise
    assert all(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_cli_same_seed_gives_byte_identical_siblings_and_manifests(micro, twin_file, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code = edit_cli(
            "perturb", twin_file, "--psi", 0.7, *common(micro, tmp_path / name, seed=seed)
        )
        assert code == 0
    for i in range(2):
        for ext in ("nii.gz", "json"):
            f = f"sibling_{i:05d}.{ext}"
            assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
        f = f"sibling_{i:05d}.nii.gz"
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes()


# ---------------------------------------------------------------------------------
# `siblings edit`: outputs.
# ---------------------------------------------------------------------------------
def test_edit_perturb_writes_siblings_manifests_twin_and_report(micro, model, twin_file, tmp_path):
    out = tmp_path / "sibs"
    assert (
        edit_cli("perturb", twin_file, "--psi", 0.5, *common(micro, out, n=3, steps=4, seed=5)) == 0
    )
    names = [f"sibling_{i:05d}" for i in range(3)]
    assert sorted(p.name for p in out.glob("sibling_*")) == sorted(
        f"{n}.{e}" for n in names for e in ("nii.gz", "json")
    )
    assert not (out / "scanner").exists()  # the twin was already in model space
    twin = read_label_map(out / "twin" / "twin.nii.gz").data
    assert np.array_equal(twin, read_label_map(twin_file).data)
    for i, name in enumerate(names):
        lm = read_label_map(out / f"{name}.nii.gz", shape=(32, 32, 32), spacing=5.6)
        np.testing.assert_allclose(lm.affine, centred_affine(32))
        m = json.loads((out / f"{name}.json").read_text())
        # SPEC §4 provenance: seed file and hash, checkpoint hash, method, ψ, steps, seed, version.
        assert m["method"] == "perturbational"
        assert m["twin"]["file"] == str(twin_file)
        assert m["twin"]["sha256"] == sha256_file(twin_file)
        assert m["model"]["checkpoint_sha256"] == model.checkpoint_sha256
        assert (m["psi"], m["steps"], m["seed"], m["index"]) == (0.5, 4, 5, i)
        assert (m["start_step"], m["recomputed_steps"]) == (2, 2)
        assert m["software"]["digital_siblings"]
        # Measurements of the written map.
        assert m["morphology"] == pytest.approx(morphology(lm))
        assert m["topology"] == topology_checks(lm.data)
        assert set(m["topology"]) == set(anatomy.TOPOLOGY_COLUMNS)
        assert m["dice_vs_twin"] == pytest.approx(dice_table(twin, [lm.data])[0])
        assert "kept_dice" not in m
    report = out / "report"
    html = (report / "report.html").read_text()
    for png in ("siblings.png", "volumes.png", "violations.png", "occupancy_heart.png"):
        data = (report / png).read_bytes()
        assert data[:4] == b"\x89PNG"
        assert base64.b64encode(data).decode() in html, png  # embedded, self-contained
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["n_reference"] == 1
    assert metrics["fd"] is None and metrics["precision"] is None and metrics["recall"] is None
    assert "single twin" in metrics["undefined"]["fd, precision, recall"]
    assert "undefined against one map" in html
    # A twin on the model grid: its axes are not known to be the patient's (issue 15).
    assert metrics["grid"]["axes"] == {"axes": "model axes", "basis": "model grid"}
    assert "Model axes: slices along the model grid" in html
    assert "double click: first view" in html and "double click: anterior view" not in html
    run = json.loads((out / "run.json").read_text())
    assert run["twin"]["space"] == "model"
    # The micro model reconstructs no twin: the only warning is that it is out of its
    # distribution (tests/test_inversion.py checks when it appears).
    assert [w for w in run["warnings"] if "out of the model's distribution" not in w] == []


def test_edit_local_manifests_hold_the_kept_tissue_dice(micro, twin_file, tmp_path):
    out = tmp_path / "lv_rv"
    args = common(micro, out, n=2, steps=3, seed=1)
    assert edit_cli("local", twin_file, "--regenerate", "LV", "--regenerate", "rv", *args) == 0
    twin = read_label_map(twin_file).data
    for i in range(2):
        m = json.loads((out / f"sibling_{i:05d}.json").read_text())
        sib = read_label_map(out / f"sibling_{i:05d}.nii.gz").data
        assert m["method"] == "localized"
        assert m["regenerate"] == ["LV", "Myo", "RV"]  # a ventricle takes the myocardium along
        assert m["kept"] == ["Ao", "RA", "LA"]
        assert m["dilate"] == 1 and m["keep_background"] is False  # the preset's default
        assert set(m["kept_dice"]) == {"Ao", "RA", "LA"}
        for t, d in m["kept_dice"].items():
            x, y = twin == L[t], sib == L[t]
            assert d == pytest.approx(2 * (x & y).sum() / (x.sum() + y.sum()))
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics["kept_dice"]) == {"Ao", "RA", "LA"}
    assert set(metrics["vae_reconstruction_dice"]) == set(anatomy.TISSUES)
    assert set(metrics["dice_vs_vae_reconstruction"]) == set(anatomy.TISSUES)
    # LV,RV in one flag is the same edit.
    out2 = tmp_path / "lv_rv_comma"
    assert (
        edit_cli(
            "local", twin_file, "--regenerate", "LV,RV", *common(micro, out2, n=2, steps=3, seed=1)
        )
        == 0
    )
    for i in range(2):
        f = f"sibling_{i:05d}.nii.gz"
        assert (out / f).read_bytes() == (out2 / f).read_bytes()


def test_twin_in_scanner_space_is_prepared_and_siblings_come_back_on_its_grid(
    micro, scan_twin, tmp_path
):
    src = tmp_path / "scan_twin.nii.gz"
    write_label_map(src, scan_twin)
    out = tmp_path / "sibs"
    assert edit_cli("perturb", src, "--psi", 0.6, *common(micro, out, n=2, steps=2)) == 0
    xfm = geometry.PreparedTransform.load(out / "twin" / "twin.xfm.json")
    twin = read_label_map(out / "twin" / "twin.nii.gz", shape=(32, 32, 32), spacing=5.6)
    # The stored transform takes the model-space twin back onto the scan: it overlays the
    # original chambers (coarse: 5.6 mm model voxels against 3-4 mm scan voxels).
    back = geometry.unprepare(twin, xfm).data
    for t in ("LV", "RV", "LA", "RA"):
        assert dice_table(scan_twin.data, [back])[0][t] > 0.7, t
    for i in range(2):
        name = f"sibling_{i:05d}"
        on_scan = read_label_map(out / "scanner" / f"{name}.nii.gz")
        assert on_scan.shape == scan_twin.shape
        np.testing.assert_allclose(on_scan.affine, scan_twin.affine, atol=1e-6)
        sib = read_label_map(out / f"{name}.nii.gz")
        assert np.array_equal(on_scan.data, geometry.unprepare(sib, xfm).data)
        m = json.loads((out / "scanner" / f"{name}.json").read_text())
        assert m["sibling"] == f"../{name}.nii.gz" and m["transform"] == "../twin/twin.xfm.json"
        assert json.loads((out / f"{name}.json").read_text())["files"]["scanner"] == (
            f"scanner/{name}.nii.gz"
        )
    run = json.loads((out / "run.json").read_text())
    assert run["twin"]["space"] == "prepared"
    assert run["outputs"]["scanner"] == [f"scanner/sibling_{i:05d}.nii.gz" for i in range(2)]
    # Prepared here: the report's letters are the patient direction nearest each model
    # axis through the stored transform, and the 3D view starts from the patient's front.
    import nibabel as nib

    codes = "".join(nib.aff2axcodes(np.linalg.inv(xfm.matrix) @ centred_affine(32)))
    axes = json.loads((out / "report" / "metrics.json").read_text())["grid"]["axes"]
    assert (axes["axes"], axes["basis"]) == (codes, "transform")
    html = (out / "report" / "report.html").read_text()
    assert f"Letters ({codes}): the patient direction nearest each model axis" in html
    assert "double click: anterior view" in html
    # The same twin read back on the model grid (as prepare writes it): model axes.
    again = tmp_path / "again"
    src2 = out / "twin" / "twin.nii.gz"
    assert edit_cli("perturb", src2, "--psi", 0.6, *common(micro, again, n=1, steps=2)) == 0
    axes = json.loads((again / "report" / "metrics.json").read_text())["grid"]["axes"]
    assert axes["axes"] == "model axes"
    assert "Model axes: slices" in (again / "report" / "report.html").read_text()


def write_with_codes(path: Path, lm: LabelMap, qform: int, sform: int) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(lm.data, np.uint8), lm.affine)
    img.set_qform(lm.affine, code=qform)
    img.set_sform(lm.affine, code=sform)
    nib.save(img, path)
    return path


def test_exact_keep_keeps_the_twins_voxels_on_both_grids(micro, scan_twin, tmp_path):
    import nibabel as nib

    from siblings.metrics.topology import contact_matrix

    # A scanner-space twin whose header has a qform only (codes 1/0), as a CT export.
    src = write_with_codes(tmp_path / "scan_twin.nii.gz", scan_twin, 1, 0)
    out = tmp_path / "exact"
    assert edit_cli("local", src, "--regenerate", "LV", *common(micro, out, n=2, steps=2)) == 0
    model_twin = read_label_map(out / "twin" / "twin.nii.gz").data
    kept = ("Ao", "RV", "RA", "LA")
    for i in range(2):
        name = f"sibling_{i:05d}"
        sib = read_label_map(out / f"{name}.nii.gz").data
        on_scan = read_label_map(out / "scanner" / f"{name}.nii.gz")
        for t in kept:  # the twin's own voxels, in model space and on the scan's grid
            assert np.array_equal(sib == L[t], model_twin == L[t]), t
            assert np.array_equal(on_scan.data == L[t], scan_twin.data == L[t]), t
        for grid, twin_map in ((sib, model_twin), (on_scan.data, scan_twin.data)):
            assert (
                contact_matrix(grid)[L["LV"], L["RV"]] <= contact_matrix(twin_map)[L["LV"], L["RV"]]
            )
        m = json.loads((out / f"{name}.json").read_text())
        assert m["keep"] == "exact"
        assert m["kept_dice"] == {t: 1.0 for t in kept}
        assert set(m["kept_dice_decoded"]) == set(kept)  # what eq. 5 alone kept
        assert set(m["seam"]) == {"claims", "separators", "detached", "rounds"}
        ms = json.loads((out / "scanner" / f"{name}.json").read_text())
        assert ms["keep"] == "exact" and ms["kept_dice"] == {t: 1.0 for t in kept}
        assert ms["grid"]["xform_codes"] == [1, 0]
        hdr = nib.load(out / "scanner" / f"{name}.nii.gz").header
        assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 0)
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["keep"] == "exact"
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["keep"] == "exact"
    assert all(v["min"] == 1.0 for v in metrics["kept_dice_scanner"].values())

    # --keep latent: the paper's method; the scanner map is the sibling resampled back.
    out = tmp_path / "latent"
    args = common(micro, out, n=2, steps=2)
    assert edit_cli("local", src, "--regenerate", "LV", "--keep", "latent", *args) == 0
    xfm = geometry.PreparedTransform.load(out / "twin" / "twin.xfm.json")
    for i in range(2):
        name = f"sibling_{i:05d}"
        sib = read_label_map(out / f"{name}.nii.gz")
        on_scan = read_label_map(out / "scanner" / f"{name}.nii.gz").data
        assert np.array_equal(on_scan, geometry.unprepare(sib, xfm).data)
        m = json.loads((out / f"{name}.json").read_text())
        assert m["keep"] == "latent" and "seam" not in m
        ms = json.loads((out / "scanner" / f"{name}.json").read_text())
        assert ms["keep"] == "latent" and set(ms["kept_dice"]) == set(kept)
    assert json.loads((out / "run.json").read_text())["parameters"]["keep"] == "latent"


def test_an_unknown_keep_mode_is_refused(micro, twin_file, tmp_path, capsys):
    out = tmp_path / "x"
    with pytest.raises(SystemExit):
        edit_cli("local", twin_file, "--regenerate", "LV", "--keep", "voxels", *common(micro, out))
    assert "invalid choice: 'voxels'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="keep must be 'exact' or 'latent'"):
        check_settings("local", n=1, regenerate="LV", keep="voxels")


def test_totalsegmentator_subject_folder_is_a_twin(micro, scan_twin, tmp_path):
    subject = tmp_path / "s0007"
    write_totalseg_subject(subject, scan_twin, layout="v1")
    out = tmp_path / "sibs"
    assert edit_cli("local", subject, "--regenerate", "RV", *common(micro, out, n=1, steps=2)) == 0
    m = json.loads((out / "sibling_00000.json").read_text())
    assert m["twin"]["kind"].startswith("TotalSegmentator subject")
    assert m["twin"]["space"] == "prepared"
    assert read_label_map(out / "scanner" / "sibling_00000.nii.gz").shape == scan_twin.shape


def test_twin_on_another_presets_grid_is_resampled_not_reoriented(micro, tmp_path):
    """A twin prepared at 64³ (centred, RAS) is in model space already: only resampled
    to the micro 32³ grid (identity transform), siblings written back at 64³."""
    twin64 = make_phantom(1, size=64, seed=3)[0]
    src = tmp_path / "twin64.nii.gz"
    write_label_map(src, twin64)
    out = tmp_path / "sibs"
    assert edit_cli("perturb", src, "--psi", 0.3, *common(micro, out, n=1, steps=2)) == 0
    xfm = geometry.PreparedTransform.load(out / "twin" / "twin.xfm.json")
    np.testing.assert_array_equal(xfm.matrix, np.eye(4))
    assert read_label_map(out / "scanner" / "sibling_00000.nii.gz").shape == (64, 64, 64)


# ---------------------------------------------------------------------------------
# Bad input: a clear message, exit 2, nothing written.
# ---------------------------------------------------------------------------------
def nothing_written(out: Path) -> bool:
    return not out.exists() and not any(
        p.name.startswith(f".{out.name}.") for p in out.parent.iterdir()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["local", "{twin}", "--regenerate", "LVX"], "unknown tissue 'LVX'"),
        (["local", "{twin}", "--regenerate", "Ao,Myo,RV,LV,RA,LA"], "unconditional sampling"),
        (["local", "{twin}", "--regenerate", "LV,RV,RA,LA,Ao"], "unconditional sampling"),
        (["perturb", "{twin}", "--psi", "0"], "psi must be in (0, 1]"),
        (["perturb", "{twin}", "--psi", "1.5"], "psi must be in (0, 1]"),
        (["perturb", "{twin}", "--psi", "-0.3"], "psi must be in (0, 1]"),
        (["perturb", "{twin}", "--psi", "0.5", "--preset", "paper"], "preset 'tiny', not 'paper'"),
        (["perturb", "{missing}", "--psi", "0.5"], "no such file"),
        (["perturb", "{folder}", "--psi", "0.5"], "not a TotalSegmentator subject folder"),
        (["local", "{twin}", "--regenerate", "LV", "--dilate", "-1"], "--dilate must be 0 or more"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    micro, twin_file, tmp_path, capsys, args, message
):
    (tmp_path / "empty_folder").mkdir()
    fill = {
        "twin": twin_file,
        "missing": tmp_path / "nope.nii.gz",
        "folder": tmp_path / "empty_folder",
    }
    out = tmp_path / "out"
    code = edit_cli(*[a.format(**fill) for a in args], *common(micro, out))
    assert code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("siblings edit: error:") and err.count("\n") == 1
    assert nothing_written(out)


def test_scanner_twin_without_lv_cannot_be_prepared(micro, scan_twin, tmp_path, capsys):
    data = scan_twin.data.copy()
    data[data == L["LV"]] = 0
    src = tmp_path / "no_lv.nii.gz"
    write_label_map(src, LabelMap(data, scan_twin.affine))
    out = tmp_path / "out"
    assert edit_cli("perturb", src, "--psi", 0.5, *common(micro, out)) == 2
    assert "has no LV" in capsys.readouterr().err
    assert nothing_written(out)


def test_a_non_empty_output_folder_is_left_alone(micro, twin_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert edit_cli("perturb", twin_file, "--psi", 0.5, *common(micro, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_dataset_root_is_not_a_twin(micro, scan_twin, tmp_path, capsys):
    for s in ("s0001", "s0002"):
        write_totalseg_subject(tmp_path / "ds" / s, scan_twin, layout="v1")
    out = tmp_path / "out"
    assert edit_cli("perturb", tmp_path / "ds", "--psi", 0.5, *common(micro, out)) == 2
    assert "holds 2 TotalSegmentator subjects" in capsys.readouterr().err
    assert nothing_written(out)


def test_twin_with_missing_chambers_warns_naming_them(micro, twin, tmp_path, capsys):
    data = twin.copy()
    data[np.isin(data, [L["RA"], L["LA"]])] = 0
    src = tmp_path / "no_atria.nii.gz"
    write_label_map(src, LabelMap(data, centred_affine(32)))
    out = tmp_path / "out"
    assert edit_cli("perturb", src, "--psi", 0.5, *common(micro, out, n=1)) == 0
    err = capsys.readouterr().err
    assert "siblings edit: warning:" in err and "has no RA, LA" in err
    assert "has no RA, LA" in json.loads((out / "run.json").read_text())["warnings"][0]
    assert err.count("has no RA, LA") == 1  # once, though encoding and editing both see it


def test_a_missing_tissue_warns_with_its_own_category(model, twin):
    from siblings.errors import MissingTissueWarning

    data = twin.copy()
    data[data == L["LA"]] = 0
    with pytest.warns(MissingTissueWarning, match="twin has no LA"):
        encode_twin(model, data, invert_steps=0)


def test_a_failure_while_writing_leaves_nothing_behind(model, twin_file, tmp_path, monkeypatch):
    import siblings.report.editing as report

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "edit_report_html", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        run_edit(
            model,
            twin_file,
            out,
            check_settings("perturb", psi=0.5, n=1, steps=2, invert_steps=0),
            n_boot=0,
            progress=False,
        )
    assert nothing_written(out)


# ---------------------------------------------------------------------------------
# Report pieces.
# ---------------------------------------------------------------------------------
def test_metrics_against_the_twin_have_known_answers(twin):
    from siblings.metrics.cohort import summarise_maps

    no_lv = twin.copy()
    no_lv[no_lv == L["LV"]] = 0
    sibs = summarise_maps([twin, no_lv], spacing_mm=5.6)
    ref = summarise_maps([twin], spacing_mm=5.6)
    dice = dice_table(twin, [twin, no_lv])
    assert dice[0] == {t: 1.0 for t in anatomy.TISSUES}
    assert dice[1]["LV"] == 0.0 and dice[1]["RV"] == 1.0
    m = twin_metrics(sibs, ref, dice=dice, n_boot=20)
    # No LV: cc_LV and the three LV contacts required fail (4 of 12); LV-RV cannot touch.
    assert m["tv_percent"] == pytest.approx(100 * 4 / 24)
    assert m["violation_rate"]["cc_LV"] == 0.5 and m["reference"]["tv_percent"] == 0.0
    lv = m["features"]["LV_volume_ml"]
    assert lv["twin"] == pytest.approx(np.count_nonzero(twin == L["LV"]) * 5.6**3 / 1000)
    assert lv["mean_change"] == pytest.approx(-lv["twin"] / 2)
    assert m["features"]["RV_volume_ml"]["mean_change"] == 0.0
    assert m["dice_vs_twin"]["LV"] == {"mean": 0.5, "sd": 0.5, "min": 0.0, "max": 1.0}
    assert m["fd"] is None and "fd, precision, recall" in m["undefined"]


def test_edit_report_tv_interval_is_evaluates_plain_percentile_interval():
    """TV% and the per-check rates of the edit report get the interval `evaluate` gives
    them (plain percentile of the same replicates, same seed), not FD's re-centred one
    (docs/evaluation.md)."""
    from siblings.metrics.bootstrap import (
        bootstrap_indices,
        bootstrap_interval,
        percentile_interval,
    )
    from siblings.metrics.cohort import CohortSummary, compare
    from siblings.metrics.heatmaps import Occupancy

    violated = np.zeros((6, 12), bool)
    for i, n_bad in enumerate([0, 0, 1, 1, 3, 6]):
        violated[i, :n_bad] = True  # per-map TV: 0, 0, 8.3, 8.3, 25, 50 %
    rng = np.random.default_rng(0)

    def summary(v: np.ndarray) -> CohortSummary:
        n = len(v)
        features = 50.0 + rng.normal(size=(n, 12))
        return CohortSummary([f"m{i}" for i in range(n)], features, v, Occupancy((4, 4, 4)))

    sibs, twin = summary(violated), summary(np.zeros((1, 12), bool))
    m = twin_metrics(sibs, twin, n_boot=200, seed=4)
    ev = compare(sibs, summary(np.zeros((8, 12), bool)), n_boot=200, seed=4)
    assert m["tv_percent"] == ev["tv_percent"] == pytest.approx(100 * 11 / 72)
    assert m["tv_percent_ci"] == ev["tv_percent_ci"]
    assert m["violation_rate_ci"] == ev["violation_rate_ci"]
    # By hand: percentiles of the mean per-map TV over the seeded resamples.
    reps = (100 * violated.mean(axis=1))[bootstrap_indices(6, 200, 4)].mean(axis=1)
    assert m["tv_percent_ci"] == pytest.approx(percentile_interval(reps))
    shifted = bootstrap_interval(reps, m["tv_percent"], bounds=(0.0, 100.0))
    assert m["tv_percent_ci"] != pytest.approx(shifted)  # not FD's re-centred interval
    assert m["bootstrap"]["interval"] == "percentile"


def test_side_by_side_figure_outlines_the_twin_on_siblings_only(twin):
    sibs = [twin, np.roll(twin, 2, axis=0)]
    fig = siblings_figure(twin, sibs, ["a", "b"])
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[0]] == ["twin", "a", "b"]
    for row in axes:
        assert len(row[0].collections) == 0  # no outline on the twin itself
        assert all(len(ax.collections) >= 1 for ax in row[1:])  # the twin's outline
    with pytest.raises(ValueError, match="grid"):
        siblings_figure(twin, [twin[:16]])


def test_reference_cohort_adds_fd_precision_recall_against_it(micro, twin_file, tmp_path):
    out = tmp_path / "sibs"
    args = common(micro, out, n=4, steps=2)
    assert edit_cli("perturb", twin_file, "--psi", 0.5, "--reference", micro.data, *args) == 0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    against = metrics["against_reference"]
    assert against["n_reference"] == 8 and against["k"] == 3
    assert against["fd"] >= 0 and 0 <= against["precision"] <= 1 and 0 <= against["recall"] <= 1
    full = json.loads((out / "report" / "reference" / "metrics.json").read_text())
    assert full["fd"] == against["fd"] and full["n"] == 4
    # The headline keys, the same list as augment.json's evaluation.
    assert set(against) == {*HEADLINE_KEYS, "reference_dir"}
    assert {k: against[k] for k in HEADLINE_KEYS} == {k: full[k] for k in HEADLINE_KEYS}
    assert (out / "report" / "reference" / "report.html").is_file()
    assert metrics["fd"] is None  # still undefined against the twin itself


def test_overwrite_replaces_the_whole_output_folder(micro, twin_file, tmp_path):
    out = tmp_path / "out"
    assert edit_cli("perturb", twin_file, "--psi", 0.5, *common(micro, out, n=3)) == 0
    (out / "stale.txt").write_text("old run")
    assert (
        edit_cli("perturb", twin_file, "--psi", 0.5, "--overwrite", *common(micro, out, n=1)) == 0
    )
    assert sorted(p.name for p in out.glob("sibling_*")) == [
        "sibling_00000.json",
        "sibling_00000.nii.gz",
    ]
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_an_encoding_from_another_inversion_budget_is_refused(model, twin_file, tmp_path):
    import siblings.errors as siblings_errors

    enc = encode_twin(model, read_label_map(twin_file).data, invert_steps=0)
    with pytest.raises(
        siblings_errors.InputError, match="made with 0 inversion steps, not invert_steps = 3"
    ):
        run_edit(
            model, twin_file, tmp_path / "x",
            check_settings("perturb", psi=0.5, n=1, steps=2, invert_steps=3),
            n_boot=0, progress=False, encoding=enc,
        )  # fmt: skip
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_settings_are_checked_once_and_hold_only_what_the_method_uses(tmp_path):
    # The CLI passes every option it has; the checked settings keep the method's own, and
    # run_edit refuses its other bad arguments before it loads the model.
    plain = check_settings("perturb", n=2, psi=0.5)
    noisy = check_settings(
        "perturb", n=2, psi=0.5, regenerate="LV", dilate=3, keep_background=True,
        with_myocardium=False, fresh_noise=True, keep="latent",
    )  # fmt: skip
    assert noisy == plain and plain.regenerate == () and plain.dilate is None
    assert plain.keep is None and plain.with_myocardium and not plain.fresh_noise
    local = check_settings("local", n=2, regenerate="LV", psi=0.5)
    assert local.psi is None and local.keep == "exact" and local.regenerate == ("LV", "Myo")

    def loader():
        raise AssertionError("the model was loaded before the arguments were checked")

    with pytest.raises(ValueError, match="n_boot must be 0 or more"):
        run_edit(loader, "twin.nii.gz", tmp_path / "x", plain, n_boot=-1)
    with pytest.raises(ValueError, match="figure_siblings must be at least 1"):
        run_edit(loader, "twin.nii.gz", tmp_path / "x", plain, figure_siblings=0)
    assert not (tmp_path / "x").exists()
