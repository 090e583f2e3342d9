"""Unconditional sampling: files, provenance (SPEC §4), reproducibility, batch independence."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from siblings import __version__
from siblings.cli import main
from siblings.io import centred_affine, read_label_map, sha256_file
from siblings.metrics.topology import topology_checks
from siblings.models.ldm import LatentDiffusionModel
from siblings.runtime import noise_for


def sample(micro, out: Path, n: int = 3, steps: int = 2, seed: int = 5, batch: int = 2) -> Path:
    args = ["sample", "--n", n, "--steps", steps, "--seed", seed, "--batch", batch]
    code = main([str(a) for a in [*args, "--checkpoint", micro.checkpoint, "--out", out]])
    assert code == 0
    return out


def maps(folder: Path) -> list[np.ndarray]:
    return [read_label_map(p).data for p in sorted(folder.glob("*.nii.gz"))]


@pytest.fixture(scope="module")
def model(micro):
    return LatentDiffusionModel.load(micro.checkpoint, device="cpu")


def test_sample_cli_writes_n_label_maps_with_provenance(micro, tmp_path):
    out = sample(micro, tmp_path / "out", n=3, steps=2, seed=5)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"sample_{i:05d}.{e}" for i in range(3) for e in ("nii.gz", "json"))
    vae_hash = sha256_file(micro.checkpoint / "vae.safetensors")
    ldm_hash = sha256_file(micro.checkpoint / "ldm.safetensors")
    model_hash = hashlib.sha256((vae_hash + ldm_hash).encode()).hexdigest()
    for i in range(3):
        lm = read_label_map(out / f"sample_{i:05d}.nii.gz", shape=(32, 32, 32), spacing=5.6)
        assert lm.data.dtype == np.uint8 and lm.data.max() <= 6
        np.testing.assert_allclose(lm.affine, centred_affine(32))
        meta = json.loads((out / f"sample_{i:05d}.json").read_text())
        # SPEC §4: method, steps, RNG seed (and index), model checkpoint hash, versions.
        assert meta["method"] == "unconditional"
        assert (meta["seed"], meta["index"], meta["steps"]) == (5, i, 2)
        assert meta["model"]["checkpoint_sha256"] == model_hash
        assert meta["model"]["preset"] == "tiny" and meta["model"]["grid"] == 32
        assert meta["model"]["voxel_mm"] == pytest.approx(5.6)
        assert (meta["model"]["sigma_min"], meta["model"]["sigma_max"]) == (2e-3, 80.0)
        assert meta["software"]["digital_siblings"] == __version__
        assert meta["software"]["torch"] == torch.__version__.split("+")[0]
        violated = [k for k, v in topology_checks(lm.data).items() if v]
        assert meta["topology_violations"] == violated


def test_same_seed_same_bytes_other_seed_other_maps(micro, tmp_path):
    a = sample(micro, tmp_path / "a", seed=5)
    b = sample(micro, tmp_path / "b", seed=5)
    c = sample(micro, tmp_path / "c", seed=6)
    for p in sorted(a.iterdir()):
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    for x, y in zip(maps(a), maps(c), strict=True):
        assert not np.array_equal(x, y)


def test_cli_and_python_api_give_the_same_maps(micro, model, tmp_path):
    out = sample(micro, tmp_path / "cli", n=3, steps=2, seed=5, batch=2)
    api = model.sample(3, steps=2, seed=5, batch=2)
    assert api.shape == (3, 32, 32, 32) and api.dtype == np.uint8
    for x, y in zip(maps(out), api, strict=True):
        assert np.array_equal(x, y)


def test_batch_size_does_not_change_the_samples(micro, model, tmp_path):
    """Sample i depends on (seed, i) only. CPU convolutions may pick another kernel for
    another batch size, so latents agree to float rounding (~1e-6 here), which could
    in principle flip a voxel whose two largest logits tie; on this machine the maps
    are identical."""
    one = model.sample_latents(range(4), steps=3, seed=9)
    four = torch.cat([model.sample_latents([i], steps=3, seed=9) for i in range(4)])
    torch.testing.assert_close(one, four, rtol=0, atol=1e-4)
    a = maps(sample(micro, tmp_path / "b1", n=4, steps=3, seed=9, batch=1))
    b = maps(sample(micro, tmp_path / "b3", n=4, steps=3, seed=9, batch=3))
    agree = np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)])
    assert agree >= 0.9999, agree


def test_starting_noise_depends_only_on_seed_and_index():
    shape = (3, 4, 4, 4)
    full = noise_for(1, range(6), shape)
    assert torch.equal(noise_for(1, [4, 2], shape), full[[4, 2]])
    assert not torch.equal(noise_for(2, [4], shape)[0], full[4])


def test_sampling_makes_2n_minus_1_denoiser_calls_per_batch(model):
    calls = []
    denoise = model.denoise

    def counting(z, sigma):
        calls.append(z.shape[0])
        return denoise(z, sigma)

    model.denoise = counting
    try:
        z = model.sample_latents(range(3), steps=5, seed=0)
    finally:
        del model.denoise
    assert z.shape == (3, 3, 8, 8, 8) and z.dtype == torch.float64
    assert calls == [3] * (2 * 5 - 1)


def test_written_files_get_ordinary_permissions(micro, tmp_path):
    """Atomic writes go through a 0600 temporary file; the result must not stay 0600."""
    import os

    mask = os.umask(0)
    os.umask(mask)
    out = sample(micro, tmp_path / "out", n=1, steps=1)
    for p in [*out.iterdir(), *micro.checkpoint.glob("*.*")]:
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


def test_exported_fp16_checkpoint_loads_and_matches_the_fp32_model(micro, model, tmp_path):
    from siblings.checkpoint import export_checkpoint, load_tensors

    half = export_checkpoint(micro.checkpoint, tmp_path / "half")
    tensors, meta = load_tensors(half / "ldm.safetensors")
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float16}
    assert meta["vae_sha256"] == sha256_file(half / "vae.safetensors")
    m16 = LatentDiffusionModel.load(half, device="cpu")
    assert m16.scale_factor == model.scale_factor
    # Same weights to fp16 precision: the decoded maps of the same latents barely differ.
    z = model.sample_latents(range(2), steps=3, seed=0)
    a, b = model.decode(z), m16.decode(z)
    assert (a == b).mean() > 0.99


def test_with_churn_a_sample_does_not_depend_on_its_batch(model, monkeypatch):
    """Churn noise comes from one generator per sample index, as the starting noise does
    (it came from the batch's first index). A batch-independent analytic denoiser makes
    the comparison exact."""
    monkeypatch.setattr(model, "denoise", lambda z, sigma: z / (1 + sigma**2))
    batch = model.sample_latents([0, 1, 2, 3], steps=4, seed=5, churn=2.0)
    for i in range(4):
        alone = model.sample_latents([i], steps=4, seed=5, churn=2.0)
        assert torch.equal(alone[0], batch[i]), i
    later = model.sample_latents([7, 2], steps=4, seed=5, churn=2.0)
    assert torch.equal(later[1], batch[2])
    # Churn does add noise, different for each sample.
    plain = model.sample_latents([0, 1, 2, 3], steps=4, seed=5)
    assert not torch.equal(plain[2], batch[2])
    assert not torch.equal(batch[0] - plain[0], batch[1] - plain[1])


def test_sampling_is_deterministic_by_default(model):
    import inspect

    assert inspect.signature(model.sample_latents).parameters["churn"].default == 0.0
