"""The ``siblings`` command line: help with examples, the phantom and demo commands, and
one-line errors with exit code 2 that write nothing (DESIGN: "clear errors")."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import subprocess_env
from siblings import __version__
from siblings.cli import build_parser, main
from siblings.pipelines.phantom import generate_cohort, read_parameters

SIBLINGS = Path(sys.executable).parent / "siblings"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script, as a user would."""
    return subprocess.run(
        [str(SIBLINGS), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=subprocess_env(),
        timeout=300,
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


# ---------------------------------------------------------------------------------
# Help.
# ---------------------------------------------------------------------------------
def test_console_script_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("positional arguments:")[1].split("options:")[0]
    names = subcommands()
    assert {"phantom", "train", "sample", "demo"} <= set(names)
    for name in names:
        assert re.search(rf"^    {name}(\s|$)", listed, re.M), f"{name} missing from --help"


def test_python_dash_m_siblings_is_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "siblings", "--version"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"digital-siblings {__version__}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_help_has_runnable_looking_examples(name):
    sub = subcommands()[name]
    help_text = sub.format_help()
    examples = help_text.split("examples:\n")[1].splitlines()
    assert examples and all(
        line.strip().startswith(("siblings ", "torchrun ")) for line in examples if line.strip()
    )
    assert any(f"siblings {name}" in line or "-m siblings" in line for line in examples)


def test_phantom_help_shows_the_issue_command_line():
    result = run("phantom", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "siblings phantom --n 512 --size 128 --seed 0 --defect-rate 0.25 --out" in result.stdout
    for option in ("--n", "--size", "--seed", "--defect-rate", "--workers", "--out"):
        assert option in result.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: siblings" in capsys.readouterr().out


# ---------------------------------------------------------------------------------
# phantom and demo.
# ---------------------------------------------------------------------------------
def test_phantom_command_writes_the_same_cohort_as_the_api(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["phantom", "--n", "3", "--size", "32", "--seed", "1", "--defect-rate", "0.5"]
    assert main([*argv, "--workers", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("3 subjects, grid 32³ at 5.60 mm")
    assert f"wrote 3 subjects and parameters.csv to {out}" in printed
    generate_cohort(
        tmp_path / "api", n=3, size=32, seed=1, defect_rate=0.5, workers=1, progress=False
    )
    for name in ["parameters.csv"] + [f"phantom_{i:04d}.nii.gz" for i in range(3)]:
        assert (out / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name


def test_demo_makes_a_cohort_samples_and_edits_a_twin_both_ways(micro, tmp_path):
    """The tour with the micro checkpoint (the shipped weights' run is timed by hand)."""
    args = ("--checkpoint", str(micro.checkpoint), "--steps", "2", "--device", "cpu")
    result = run("demo", "--out", "demo_out", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "demo_out"
    rows = read_parameters(out / "phantom")
    assert len(rows) == 16 and len(list((out / "phantom").glob("phantom_*.nii.gz"))) == 16
    assert result.stdout.startswith("16 subjects, grid 64³ at 2.80 mm")
    assert f"demo cohort written to {Path('demo_out') / 'phantom'}" in result.stdout
    assert len(list((out / "samples").glob("sample_*.nii.gz"))) == 4
    for run_dir in ("perturb_psi0.5", "local_LV"):
        assert len(list((out / run_dir).glob("sibling_*.nii.gz"))) == 4
        assert len(list((out / run_dir / "scanner").glob("sibling_*.nii.gz"))) == 4
        report = Path("demo_out") / run_dir / "report"
        assert (tmp_path / report / "siblings.png").is_file()
        assert str(report / "report.html") in result.stdout  # printed where it is


# ---------------------------------------------------------------------------------
# Bad input: exit 2, one line on stderr, nothing written.
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "0"], "siblings phantom: error: --n must be at least 1, got 0"),
        (["--n", "-3"], "siblings phantom: error: --n must be at least 1, got -3"),
        (["--size", "8"], "siblings phantom: error: --size must be at least 16, got 8"),
        (
            ["--defect-rate", "1.5"],
            "siblings phantom: error: --defect-rate must be in [0, 1], got 1.5",
        ),
        (
            ["--defect-rate", "-0.1"],
            "siblings phantom: error: --defect-rate must be in [0, 1], got -0.1",
        ),
        (
            ["--defect-rate", "nan"],
            "siblings phantom: error: --defect-rate must be in [0, 1], got nan",
        ),
    ],
)
def test_bad_phantom_values_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["phantom", *args, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""
    assert not out.exists()


def test_bad_input_through_the_console_script_exits_2(tmp_path):
    result = run("phantom", "--n", "0", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["siblings phantom: error: --n must be at least 1, got 0"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_unparsable_defect_rate_is_an_argparse_error_naming_the_option(tmp_path):
    result = run("phantom", "--defect-rate", "lots", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "siblings phantom: error: argument --defect-rate: invalid float value: 'lots'"
    )
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert (
        main(["phantom", "--n", "1", "--size", "16", "--workers", "1", "--out", str(blocker)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("siblings phantom: error: ") and err.count("\n") == 1
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------------------------
# Options shared by the commands that load the model: one default, one help text.
# ---------------------------------------------------------------------------------
# Each command's required arguments (none of which loads anything while parsing).
MODEL_COMMANDS: dict[str, list[str]] = {
    "sample": ["sample", "--n", "1", "--out", "o"],
    "edit perturb": ["edit", "perturb", "twin.nii.gz", "--psi", "0.5", "--out", "o"],
    "edit local": ["edit", "local", "twin.nii.gz", "--regenerate", "LV", "--out", "o"],
    "augment": [
        *("augment", "--where", "RV_volume_ml > 1", "--strategy", "uncond", "--n", "1"),
        *("--data", "d", "--out", "o"),
    ],
    "experiment": ["experiment", "all", "--data", "d", "--out", "o"],
    "demo": ["demo"],
}
SHARED_DEFAULTS = {
    "--checkpoint": None,
    "--preset": None,
    "--device": None,  # cuda if available, else cpu
    "--bf16": False,  # neither: bf16 where the hardware has it (test_runtime.py)
    "--fp32": False,
    "--threads": None,
}


def model_command_parser(name: str) -> argparse.ArgumentParser:
    parser = subcommands()[name.split()[0]]
    if " " in name:  # edit perturb, edit local
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name.split()[1]]
    return parser


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: a for a in parser._actions for flag in a.option_strings}


@pytest.mark.parametrize("name", sorted(MODEL_COMMANDS))
def test_model_commands_declare_the_shared_options_alike(name):
    """sample, edit perturb/local, augment, experiment and demo: same flags, defaults,
    types and help texts for --checkpoint, --preset, --device, --bf16, --fp32, --threads."""
    actions = option_actions(model_command_parser(name))
    reference = option_actions(model_command_parser("sample"))
    for flag, default in SHARED_DEFAULTS.items():
        assert flag in actions, f"{name} lacks {flag}"
        a, r = actions[flag], reference[flag]
        assert a.default == default, (name, flag, a.default)
        assert (a.help, a.type, a.nargs, a.const, a.required) == (
            r.help,
            r.type,
            r.nargs,
            r.const,
            r.required,
        ), (name, flag)
    assert "default: cuda if available, else cpu" in actions["--device"].help
    # Parsed without the options: the same defaults in the namespace.
    args = build_parser().parse_args(MODEL_COMMANDS[name])
    assert {f: getattr(args, f[2:]) for f in SHARED_DEFAULTS} == SHARED_DEFAULTS
    # ... and listed in --help.
    help_text = model_command_parser(name).format_help()
    for flag in SHARED_DEFAULTS:
        assert re.search(rf"^\s+{flag}\b", help_text, re.M), (name, flag)


@pytest.mark.parametrize("name", sorted(MODEL_COMMANDS))
@pytest.mark.parametrize(
    ("value", "parsed"), [("auto", None), ("AUTO", None), ("cpu", "cpu"), ("cuda:1", "cuda:1")]
)
def test_device_auto_means_the_default_and_devices_pass_through(name, value, parsed, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    args = build_parser().parse_args([*MODEL_COMMANDS[name], "--device", value])
    assert args.device == parsed


@pytest.mark.parametrize("name", sorted(MODEL_COMMANDS))
def test_cuda_without_cuda_exits_2_before_writing(name, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([*MODEL_COMMANDS[name], "--device", "cuda"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"siblings {name}: error: argument --device: 'cuda': CUDA is not available on this "
        "machine; use cpu or auto"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [*sorted(MODEL_COMMANDS), "train"])
def test_bad_device_is_an_argparse_error_with_exit_2(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = MODEL_COMMANDS.get(name, ["train", "vae", "--out", "o"])
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--device", "gpu0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"siblings {name}: error: argument --device: 'gpu0' is not a device; expected "
        "cpu, cuda, cuda:1 … or auto (default: cuda if available, else cpu)"
    )
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_device_through_the_console_script_exits_2(tmp_path):
    result = run("sample", "--n", "1", "--device", "gpu0", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "siblings sample: error: argument --device: 'gpu0' is not a device"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
