"""Precision: bf16 autocast by default only where the hardware runs it natively (issue 14).

The CPU's flags come from an injected /proc/cpuinfo text; the commands' choice is
tested with ``siblings.runtime.native_bf16`` patched to each kind of machine (conftest
pins in-process commands to "no native bf16" otherwise).
"""

from __future__ import annotations

import json

import pytest
import torch

import siblings.runtime as runtime
from siblings.cli import build_parser, main
from siblings.runtime import choose_bf16, cpu_flags, native_bf16

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AMX_ONLY = "processor : 0\nflags : fpu sse avx2 amx_bf16 amx_tile\n"
ZEN4 = (
    "processor : 0\nmodel name : AMD EPYC 9R14\nflags : fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
)
ZEN3 = "processor : 0\nmodel name : AMD EPYC 7R13\nflags : fpu sse avx avx2 fma f16c\n"
SKYLAKE = "processor : 0\nflags : fpu avx2 avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(SAPPHIRE_RAPIDS, True), (AMX_ONLY, True), (ZEN4, True), (ZEN3, False), (SKYLAKE, False)],
)
def test_cpu_runs_bf16_natively_with_amx_or_avx512_bf16(cpuinfo, native):
    assert native_bf16(CPU, cpuinfo) is native
    assert native_bf16("cpu", cpuinfo) is native


def test_cpu_flags_are_the_words_of_the_flags_lines():
    assert {"amx_bf16", "avx512_bf16", "sse2"} <= cpu_flags(SAPPHIRE_RAPIDS)
    assert "Xeon(R)" not in cpu_flags(SAPPHIRE_RAPIDS)  # the model name is not a flag
    assert cpu_flags("") == set() and native_bf16(CPU, "") is False


def test_cuda_runs_bf16_natively_where_torch_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert native_bf16("cuda:0", ZEN3) is True  # the CPU's flags do not matter
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert native_bf16("cuda", SAPPHIRE_RAPIDS) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert native_bf16("cuda") is False


@pytest.mark.parametrize(
    ("cpuinfo", "requested", "training", "bf16", "warns"),
    [
        (ZEN4, None, False, True, False),  # native: bf16 by default
        (ZEN4, False, False, False, False),  # --fp32
        (ZEN4, True, False, True, False),  # --bf16
        (ZEN3, None, False, False, False),  # emulated: fp32 by default, silently
        (ZEN3, True, False, True, True),  # --bf16 obeyed, with a warning
        (ZEN3, False, False, False, False),
        (ZEN4, None, True, True, False),  # training: bf16 as before where native
        (ZEN3, None, True, False, True),  # ... fp32 with a warning where emulated
        (ZEN3, False, True, False, False),
    ],
)
def test_choice_of_precision(cpuinfo, requested, training, bf16, warns):
    got, warning = choose_bf16(CPU, requested, training=training, cpuinfo=cpuinfo)
    assert got is bf16
    assert (warning is not None) is warns
    if warning:
        assert "\n" not in warning and "AVX512-BF16" in warning


def test_the_bf16_warning_says_why_and_what_to_do():
    _, warning = choose_bf16(CPU, True, cpuinfo=ZEN3)
    assert "emulates" in warning and "85x slower" in warning and "leave out --bf16" in warning
    _, warning = choose_bf16(CPU, None, training=True, cpuinfo=ZEN3)
    assert "emulated" in warning and "training in fp32" in warning


# ---------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------
MODEL_ARGV = {
    "sample": ["sample", "--n", "1", "--out", "o"],
    "edit": ["edit", "perturb", "twin.nii.gz", "--psi", "0.5", "--out", "o"],
    "augment": [
        *("augment", "--where", "RV_volume_ml > 1", "--strategy", "uncond", "--n", "1"),
        *("--data", "d", "--out", "o"),
    ],
    "experiment": ["experiment", "all", "--data", "d", "--out", "o"],
    "demo": ["demo"],
}


def on_cpu(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda device, cpuinfo=None: native)


@pytest.mark.parametrize("name", sorted(MODEL_ARGV))
@pytest.mark.parametrize(
    ("native", "flag", "bf16", "warns"),
    [
        (True, None, True, False),
        (True, "--fp32", False, False),
        (True, "--bf16", True, False),
        (False, None, False, False),
        (False, "--fp32", False, False),
        (False, "--bf16", True, True),
    ],
)
def test_model_commands_resolve_bf16_and_fp32(name, native, flag, bf16, warns, monkeypatch, capsys):
    from siblings.cli import _bf16

    on_cpu(monkeypatch, native)
    args = build_parser().parse_args([*MODEL_ARGV[name], *([flag] if flag else [])])
    assert _bf16(args) is bf16
    err = capsys.readouterr().err
    if warns:
        assert err.count("\n") == 1 and err.startswith(f"siblings {name}: warning: bf16 asked")
    else:
        assert err == ""


@pytest.mark.parametrize("name", [*sorted(MODEL_ARGV), "train"])
def test_bf16_and_fp32_together_are_refused(name, capsys):
    argv = MODEL_ARGV.get(name, ["train", "vae", "--out", "o"])
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--bf16", "--fp32"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_sample_records_the_precision_it_ran_in(micro, tmp_path, monkeypatch):
    on_cpu(monkeypatch, True)
    argv = ["sample", "--n", "1", "--steps", "1", "--checkpoint", str(micro.checkpoint)]
    for extra, precision in (([], "bf16"), (["--fp32"], "fp32")):
        out = tmp_path / precision
        assert main([*argv, *extra, "--device", "cpu", "--out", str(out)]) == 0
        model = json.loads((out / "sample_00000.json").read_text())["model"]
        assert (model["precision"], model["bf16"]) == (precision, precision == "bf16")


def test_training_without_native_bf16_warns_and_trains_in_fp32(micro, tmp_path, capsys):
    # conftest: this process sees a CPU without native bf16.
    out = tmp_path / "out"
    argv = ["train", "vae", *micro.cli_set, "--data", str(micro.data), "--out", str(out)]
    assert main([*argv, "--steps", "1", "--batch", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "siblings train: warning: this CPU has neither AMX nor AVX512-BF16" in err
    assert json.loads((out / "vae.json").read_text())["amp_bf16"] is False


def test_training_with_bad_data_still_fails_with_one_line(micro, tmp_path, capsys):
    """The fallback warning comes only after the input checks, so an error stays one line."""
    out = tmp_path / "out"
    argv = ["train", "vae", "--preset", "tiny", "--data", str(micro.data), "--out", str(out)]
    assert main([*argv, "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("siblings train: error: ") and "\n" not in err, err
    assert "grid is 32x32x32, expected 64x64x64" in err
    assert not out.exists()
