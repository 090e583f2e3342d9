"""Training: outputs, exact resumption (also after SIGKILL), latent scaling, bad input."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import micro_cli_set, micro_preset, subprocess_env
from siblings.checkpoint import CheckpointError, load_tensors, save_tensors
from siblings.cli import main
from siblings.io import read_label_map, sha256_file
from siblings.models.ldm import LatentDiffusionModel
from siblings.train import train_ldm, train_vae


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def log_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# ---------------------------------------------------------------------------------
# What a run writes.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["vae", "ldm"])
def test_training_writes_weights_config_log_and_loss_curve(micro, kind):
    import matplotlib.image

    out = micro.checkpoint
    steps = micro.vae_steps if kind == "vae" else micro.ldm_steps
    meta = json.loads((out / f"{kind}.json").read_text())
    assert meta["kind"] == kind
    assert meta["steps"] == steps and meta["seed"] == 0 and meta["amp_bf16"] is True
    assert meta["preset"] == json.loads(json.dumps(micro.preset.to_dict()))
    tensors = load_file(str(out / f"{kind}.safetensors"))
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
    rows = log_rows(out / f"{kind}_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    png = out / f"{kind}_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(png).ndim == 3
    assert not list(out.glob("*.part")) and not list(out.glob("*.tmp.png"))


def test_ldm_checkpoint_holds_the_ema_weights_and_names_its_vae(micro):
    out = micro.checkpoint
    meta = json.loads((out / "ldm.json").read_text())
    assert meta["vae_sha256"] == sha256_file(out / "vae.safetensors")
    assert (meta["p_mean"], meta["p_std"]) == (1.0, 1.2)
    final = load_file(str(out / "ldm.safetensors"))
    state = load_file(str(out / "state" / "ldm_state.safetensors"))
    for k, v in final.items():
        assert torch.equal(v, state[f"ema.{k}"])
    assert any(not torch.equal(v, state[f"model.{k}"]) for k, v in final.items())


def test_latent_scale_factor_gives_training_latents_std_sigma_data(micro):
    meta = json.loads((micro.checkpoint / "ldm.json").read_text())
    assert meta["scale_factor"] * meta["latent_std_before_scaling"] == pytest.approx(0.5)
    model = LatentDiffusionModel.load(micro.checkpoint, device="cpu")
    assert model.scale_factor == meta["scale_factor"]
    labels = np.stack([read_label_map(p).data for p in sorted(micro.data.glob("*.nii.gz"))])
    z = model.encode(labels)
    assert z.shape == (8, 3, 8, 8, 8)
    assert float(z.std()) == pytest.approx(0.5, rel=1e-4)


# ---------------------------------------------------------------------------------
# Resumption.
# ---------------------------------------------------------------------------------
def test_vae_stopped_and_resumed_equals_uninterrupted(micro, tmp_path):
    kw = dict(steps=4, batch=2, seed=3, device="cpu", log_every=1, progress=False)
    train_vae(micro.data, tmp_path / "a", micro.preset, **kw)
    stopped = train_vae(micro.data, tmp_path / "b", micro.preset, stop_after=2, **kw)
    assert stopped.name == "vae_state.safetensors"
    assert not (tmp_path / "b" / "vae.safetensors").exists()
    assert json.loads(stopped.with_suffix(".json").read_text())["step"] == 2
    train_vae(micro.data, tmp_path / "b", micro.preset, **kw)
    assert_same_tensors(tmp_path / "a" / "vae.safetensors", tmp_path / "b" / "vae.safetensors")
    assert_same_tensors(
        tmp_path / "a" / "state" / "vae_state.safetensors",
        tmp_path / "b" / "state" / "vae_state.safetensors",
    )
    losses = [[r["loss"] for r in log_rows(tmp_path / d / "vae_log.jsonl")] for d in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_ldm_stopped_and_resumed_equals_uninterrupted(micro, tmp_path):
    vae = micro.checkpoint / "vae.safetensors"
    kw = dict(steps=5, batch=4, seed=1, device="cpu", log_every=1, progress=False)
    train_ldm(micro.data, tmp_path / "a", vae, preset=micro.preset, **kw)
    train_ldm(micro.data, tmp_path / "b", vae, preset=micro.preset, stop_after=2, **kw)
    assert not (tmp_path / "b" / "ldm.safetensors").exists()
    train_ldm(micro.data, tmp_path / "b", vae, preset=micro.preset, stop_after=2, **kw)
    assert not (tmp_path / "b" / "ldm.safetensors").exists()
    train_ldm(micro.data, tmp_path / "b", vae, preset=micro.preset, **kw)
    # Weights (EMA), optimiser moments, EMA and model state: bit for bit.
    assert_same_tensors(tmp_path / "a" / "ldm.safetensors", tmp_path / "b" / "ldm.safetensors")
    assert_same_tensors(
        tmp_path / "a" / "state" / "ldm_state.safetensors",
        tmp_path / "b" / "state" / "ldm_state.safetensors",
    )
    meta = [json.loads((tmp_path / d / "ldm.json").read_text()) for d in "ab"]
    assert meta[0]["scale_factor"] == meta[1]["scale_factor"]
    losses = [[r["loss"] for r in log_rows(tmp_path / d / "ldm_log.jsonl")] for d in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 5


def test_resume_with_other_settings_is_refused(micro, tmp_path):
    kw = dict(steps=3, seed=0, device="cpu", progress=False)
    train_vae(micro.data, tmp_path, micro.preset, batch=2, stop_after=1, **kw)
    with pytest.raises(CheckpointError, match="batch=2"):
        train_vae(micro.data, tmp_path, micro.preset, batch=4, **kw)
    # --no-resume starts again instead.
    train_vae(micro.data, tmp_path, micro.preset, batch=4, resume=False, **kw)
    assert (tmp_path / "vae.safetensors").exists()


KILLED_RUN = """
import json, sys
import torch
torch.set_num_threads(1)
from siblings.models.presets import preset_from_dict
from siblings.train import train_vae
preset = preset_from_dict(json.loads(sys.argv[3]))
train_vae(sys.argv[1], sys.argv[2], preset, steps=8, batch=2, seed=0, device="cpu",
          amp=False, ckpt_every=2, log_every=1, progress=False)
"""


def cli_train_vae(data: Path, out: Path) -> list[str]:
    return [
        "train",
        "vae",
        "--preset",
        "tiny",
        *micro_cli_set(),
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "8",
        "--batch",
        "2",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--fp32",  # as the killed run: the default would depend on the CPU
    ]


def test_sigkill_mid_run_then_resume_from_the_cli_equals_uninterrupted(micro, tmp_path):
    env = subprocess_env()
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    preset_json = json.dumps(micro_preset().to_dict())
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(micro.data), str(killed), preset_json],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state_meta = killed / "state" / "vae_state.json"
    deadline = time.time() + 120
    while not state_meta.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not (killed / "vae.safetensors").exists(), "the run ended before it was killed"
    step = json.loads(state_meta.read_text())["step"]
    assert 2 <= step < 8

    # Resume with the ordinary command line, and compare with an uninterrupted run (both
    # in this process: the process boundary that matters is the killed one's).
    for out in (killed, whole):
        assert main(cli_train_vae(micro.data, out)) == 0
    assert_same_tensors(killed / "vae.safetensors", whole / "vae.safetensors")
    # The killed run logged every step up to its checkpoint, the CLI every 10th step.
    steps_logged = [r["step"] for r in log_rows(killed / "vae_log.jsonl")]
    assert steps_logged == list(range(1, step + 1))


# ---------------------------------------------------------------------------------
# Bad input: exit code 2, one clear line, nothing written.
# ---------------------------------------------------------------------------------
def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_clean_failure(code: int, err: str, command: str, out: Path, *needles: str) -> None:
    assert code == 2
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"siblings {command}: error: "), err
    for needle in needles:
        assert needle in err, err
    assert not out.exists(), f"{out} was created: {files_under(out)}"


def copy_checkpoint(micro, dest: Path) -> Path:
    dest.mkdir()
    for name in ("vae.safetensors", "vae.json", "ldm.safetensors", "ldm.json"):
        (dest / name).write_bytes((micro.checkpoint / name).read_bytes())
    return dest


def test_unknown_preset_is_refused(micro, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", "vae", "--preset", "huge", "--data", micro.data, "--out", out]
    code, err = run_cli(args, capsys)
    assert_clean_failure(code, err, "train", out, "unknown preset 'huge'", "paper", "tiny")
    code, err = run_cli(["train", "vae", "--set", "no_such_field=1", "--out", out], capsys)
    assert_clean_failure(code, err, "train", out, "no_such_field")


def test_empty_or_missing_data_folder_is_refused(micro, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no maps here")
    out = tmp_path / "out"
    args = ["train", "vae", *micro_cli_set(), "--data", empty, "--out", out, "--steps", "1"]
    code, err = run_cli(args, capsys)
    assert_clean_failure(code, err, "train", out, str(empty), "0 label map")
    args = ["train", "vae", "--data", tmp_path / "nowhere", "--out", out, "--steps", "1"]
    code, err = run_cli(args, capsys)
    assert_clean_failure(code, err, "train", out, "no such folder")


def test_data_on_another_grid_is_refused(micro, tmp_path, capsys):
    out = tmp_path / "out"
    # The micro cohort is 32³; the tiny preset wants 64³.
    args = ["train", "vae", "--preset", "tiny", "--data", micro.data, "--out", out]
    code, err = run_cli([*args, "--steps", "1"], capsys)
    assert_clean_failure(code, err, "train", out, "grid is 32x32x32, expected 64x64x64")


def test_vae_checkpoint_of_another_preset_is_refused_by_train_ldm(micro, tmp_path, capsys):
    out = tmp_path / "out"
    vae = micro.checkpoint / "vae.safetensors"
    args = ["train", "ldm", "--preset", "paper", "--vae", vae, "--data", micro.data, "--out", out]
    code, err = run_cli(args, capsys)
    assert_clean_failure(code, err, "train", out, "does not fit preset 'paper'")
    # An LDM file given as the VAE.
    ldm = micro.checkpoint / "ldm.safetensors"
    args = ["train", "ldm", *micro_cli_set(), "--vae", ldm, "--data", micro.data, "--out", out]
    code, err = run_cli(args, capsys)
    assert_clean_failure(code, err, "train", out, "not a VAE checkpoint")


def test_corrupted_vae_file_is_refused_by_train_ldm(micro, tmp_path, capsys):
    ckpt = copy_checkpoint(micro, tmp_path / "ckpt")
    (ckpt / "vae.safetensors").write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    args = ["train", "ldm", *micro_cli_set(), "--vae", ckpt / "vae.safetensors"]
    code, err = run_cli([*args, "--data", micro.data, "--out", out], capsys)
    assert_clean_failure(code, err, "train", out, "corrupt or not a safetensors file")


def test_sample_refuses_a_checkpoint_of_another_preset(micro, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sample", "--n", "1", "--checkpoint", micro.checkpoint, "--preset", "paper"]
    code, err = run_cli([*args, "--out", out], capsys)
    assert_clean_failure(code, err, "sample", out, "checkpoint is for preset 'tiny', not 'paper'")


def test_demo_refuses_a_checkpoint_of_another_preset_before_writing(micro, tmp_path, capsys):
    out = tmp_path / "demo_out"
    args = ["demo", "--checkpoint", micro.checkpoint, "--preset", "paper", "--device", "cpu"]
    code, err = run_cli([*args, "--out", out], capsys)
    assert_clean_failure(code, err, "demo", out, "checkpoint is for preset 'tiny', not 'paper'")


def test_sample_refuses_weights_that_do_not_fit_their_config(micro, tmp_path, capsys):
    ckpt = copy_checkpoint(micro, tmp_path / "ckpt")
    tensors, meta = load_tensors(ckpt / "ldm.safetensors")
    meta["preset"]["unet_channels"] = [32, 64, 64]
    save_tensors(ckpt / "ldm.safetensors", tensors, meta)
    out = tmp_path / "out"
    code, err = run_cli(["sample", "--n", "1", "--checkpoint", ckpt, "--out", out], capsys)
    assert_clean_failure(code, err, "sample", out, "weights do not fit preset")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("truncate", "corrupt or not a safetensors file"),
        ("garbage", "corrupt or not a safetensors file"),
        ("legacy_without_json", "missing checkpoint config"),
        ("other_vae", "trained on another VAE"),
    ],
)
def test_sample_refuses_a_corrupted_checkpoint(micro, tmp_path, capsys, damage, needle):
    ckpt = copy_checkpoint(micro, tmp_path / "ckpt")
    ldm, vae = ckpt / "ldm.safetensors", ckpt / "vae.safetensors"
    if damage == "truncate":
        ldm.write_bytes(ldm.read_bytes()[: ldm.stat().st_size // 2])
    elif damage == "garbage":
        ldm.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "legacy_without_json":
        # Tensors without the embedded config, and no JSON twin.
        save_file(load_file(str(vae)), str(vae))
        (ckpt / "vae.json").unlink()
    elif damage == "other_vae":
        # Still a valid file, but its bytes (hence hash) are not the VAE the LDM was trained on.
        raw = bytearray(vae.read_bytes())
        raw[-1] ^= 0x01
        vae.write_bytes(bytes(raw))
    out = tmp_path / "out"
    code, err = run_cli(["sample", "--n", "1", "--checkpoint", ckpt, "--out", out], capsys)
    assert_clean_failure(code, err, "sample", out, needle)


@pytest.mark.parametrize(
    ("flag", "value"), [("--n", "0"), ("--n", "-3"), ("--steps", "0"), ("--batch", "0")]
)
def test_sample_refuses_non_positive_counts(micro, tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    args = {"--n": "2", "--steps": "2", "--batch": "1", flag: value}
    flat = [x for kv in args.items() for x in kv]
    code, err = run_cli(["sample", *flat, "--checkpoint", micro.checkpoint, "--out", out], capsys)
    assert_clean_failure(code, err, "sample", out, f"{flag} must be at least 1")


def test_bad_input_exit_status_from_a_real_process(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "siblings", "sample", "--n", "0", "--out", str(out)]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == "siblings sample: error: --n must be at least 1, got 0"
    assert not out.exists()


def test_crash_between_weights_and_config_write_still_resumes_exactly(micro, tmp_path, monkeypatch):
    """A checkpoint is a .safetensors file plus a .json twin, each written atomically;
    a crash between the two renames must not pair new tensors with an old step."""
    import siblings.checkpoint as checkpoint

    kw = dict(steps=6, batch=2, seed=0, device="cpu", ckpt_every=2, progress=False)
    train_vae(micro.data, tmp_path / "whole", micro.preset, **kw)

    real_write_json, saves = checkpoint.write_json, []

    def crash_on_second_state_save(path, obj):
        if Path(path).name == "vae_state.json":
            saves.append(obj["step"])
            if len(saves) == 2:
                raise KeyboardInterrupt("simulated kill after the tensors were renamed")
        return real_write_json(path, obj)

    monkeypatch.setattr(checkpoint, "write_json", crash_on_second_state_save)
    with pytest.raises(KeyboardInterrupt):
        train_vae(micro.data, tmp_path / "crashed", micro.preset, **kw)
    monkeypatch.undo()
    assert saves == [2, 4]
    train_vae(micro.data, tmp_path / "crashed", micro.preset, **kw)
    assert_same_tensors(
        tmp_path / "whole" / "vae.safetensors", tmp_path / "crashed" / "vae.safetensors"
    )


def test_checkpoint_config_travels_inside_the_safetensors_file(micro, tmp_path, capsys):
    """The JSON twin is a readable copy; a folder without it still loads."""
    ckpt = copy_checkpoint(micro, tmp_path / "ckpt")
    for name in ("vae.json", "ldm.json"):
        (ckpt / name).unlink()
    _, meta = load_tensors(ckpt / "ldm.safetensors")
    assert meta == json.loads((micro.checkpoint / "ldm.json").read_text())
    code, err = run_cli(
        ["sample", "--n", "1", "--steps", "1", "--checkpoint", ckpt, "--out", tmp_path / "o"],
        capsys,
    )
    assert code == 0, err


def test_learning_rate_schedule_is_constant_then_cosine_to_the_final_fraction():
    from siblings.models.presets import get_preset
    from siblings.train import learning_rate

    p = get_preset("tiny", lr_decay_start=0.5, lr_final=0.1)
    lrs = [learning_rate(1.0, s, 100, p) for s in range(100)]
    assert lrs[:50] == [1.0] * 50
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[75] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 49)))
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    paper = get_preset("paper")
    assert {learning_rate(2.5e-5, s, 1000, paper) for s in range(1000)} == {2.5e-5}


@pytest.mark.parametrize("name", [None, "", "auto", "AUTO"])
def test_pick_device_none_or_auto_chooses_cuda_if_available(name, monkeypatch):
    from siblings.train import pick_device

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(name) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(name) == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_pick_device_refuses_cuda_where_there_is_none(monkeypatch):
    from siblings.train import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda:0")
