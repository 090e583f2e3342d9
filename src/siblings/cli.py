"""The ``siblings`` command line: a thin layer that parses arguments and calls the API.

Each subcommand is registered by one ``_add_<name>`` function below; the work itself is
done by library functions that a Python user can call directly. The project's own errors
(:class:`siblings.errors.SiblingsError`: bad files, bad options) and the file errors of the
paths the user gave are reported as one line on stderr with exit code 2, the arguments they
name worded as this command line's flags; any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

from . import __version__
from .errors import SiblingsError


class UsageError(SiblingsError):
    """Bad input from the user: printed without a traceback, exit code 2."""


# Library arguments whose flag is not ``--`` + the name with ``-`` for ``_``.
_FLAGS = {
    "overrides": "--set",
    "psis": "--psi",
    "with_myocardium": "--no-myocardium",
    "dry_run": "--plan",
    "interpolation": "--interpolation",
    "keep_axis": "--no-keep-axis",
}


# ... and those whose flag differs in one command.
_COMMAND_FLAGS = {
    ("train", "resume"): "--no-resume",
    ("train", "state_dir"): "--state",
    ("export", "iterations"): "--smooth",
}


def flag(argument: str, command: str | None = None) -> str:
    """The flag of a library argument in ``command`` (``n_boot`` -> ``--n-boot``)."""
    if (command, argument) in _COMMAND_FLAGS:
        return _COMMAND_FLAGS[command, argument]
    return _FLAGS.get(argument, "--" + argument.replace("_", "-"))


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _sub(subparsers, name: str, help: str, examples: tuple[str, ...], description: str = ""):
    return subparsers.add_parser(
        name,
        help=help,
        description=textwrap.dedent(description or help),
        epilog=_examples(*examples),
        formatter_class=_formatter,
    )


# ---------------------------------------------------------------------------------
# Options shared by the commands that load the model
# ---------------------------------------------------------------------------------
_DEVICE_HELP = "cpu, cuda, cuda:1 … or auto (default: cuda if available, else cpu)"


def _device(value: str) -> str | None:
    """``--device``: None for "auto" (cuda if available, else cpu), else a torch device.

    Checked while parsing, so a misspelt device is an argparse error (exit 2) rather
    than a traceback from deep inside model loading.
    """
    if value.strip().lower() in ("", "auto"):
        return None
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a device; expected {_DEVICE_HELP}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{value!r}: CUDA is not available on this machine; use cpu or auto"
        )
    return value


def _add_device_option(p) -> None:
    p.add_argument("--device", type=_device, default=None, help=_DEVICE_HELP)


_BF16_DEFAULT = (
    "the default where the hardware runs bf16 natively: CPUs with AMX or AVX512-BF16, "
    "CUDA GPUs with bf16; elsewhere the default is fp32"
)


def _add_precision_options(p, default: str = _BF16_DEFAULT) -> None:
    """--bf16 and --fp32 (either, not both); resolved by :func:`_bf16`."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--bf16",
        action="store_true",
        help=f"run the networks under bf16 autocast ({default})",
    )
    group.add_argument("--fp32", action="store_true", help="full precision, no autocast")


def _precision(args: argparse.Namespace, training: bool = False) -> tuple[bool, str | None]:
    """bf16 autocast or not, as --bf16/--fp32 and the hardware say, and a warning or None
    (:func:`siblings.runtime.choose_bf16`)."""
    from .runtime import choose_bf16, pick_device

    requested = True if args.bf16 else False if args.fp32 else None
    return choose_bf16(pick_device(args.device), requested, training=training)


def _bf16(args: argparse.Namespace) -> bool:
    """:func:`_precision` for the model commands, its warning printed as one line."""
    bf16, warning = _precision(args)
    if warning:
        print(f"siblings {args.command}: warning: {warning}", file=sys.stderr)
    return bf16


def _add_model_options(p) -> None:
    """--checkpoint, --preset, --device, --bf16/--fp32 and --threads, with one default and one
    help text each, for every command that loads the latent diffusion model (sample,
    edit perturb/local, augment, experiment, demo); see :func:`_load_model`."""
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint folder (default: the shipped tiny weights)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="refuse a checkpoint of another preset (default: accept the checkpoint's)",
    )
    _add_device_option(p)
    _add_precision_options(p)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: the cores not already busy, from the load average)",
    )


def _load_model(args: argparse.Namespace):
    """Set the CPU threads and load the model as the options of :func:`_add_model_options` say."""
    from .models.ldm import LatentDiffusionModel

    _cpu_threads(args.threads)
    return LatentDiffusionModel.load(
        args.checkpoint, device=args.device, preset=args.preset, amp=_bf16(args)
    )


def _add_guidance_options(p, what: str = "maps") -> None:
    """--target, --guidance-scale and --regressor (issue 17: guided sampling and editing)."""
    from .models.guided import DEFAULT_GUIDANCE_SCALE

    p.add_argument(
        "--target",
        default=None,
        metavar="CONDITION",
        help=f"steer the {what} towards a morphology: the --where language of `augment`, plus "
        "COLUMN = NUMBER ± TOL and, for edits, FACTOR*twin (e.g. "
        '"RV_volume_ml = 130 ± 5", "LV_volume_ml > 1.2*twin"); see docs/guidance.md',
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=DEFAULT_GUIDANCE_SCALE,
        help=f"classifier-guidance scale for --target (default {DEFAULT_GUIDANCE_SCALE:g})",
    )
    p.add_argument(
        "--regressor",
        type=Path,
        default=None,
        help="morphology regressor for --target (default: the checkpoint's regressor.safetensors)",
    )
    p.add_argument(
        "--hold",
        default=None,
        metavar="FEATURES",
        help="with --target: features the guidance must not move, comma-separated columns or "
        "chambers (LV, RV, LA, RA) or `others`; e.g. --target 'RV_volume_ml > 115' "
        "--hold LV,LA,RA grows the RV without pushing the other chambers (docs/guidance.md)",
    )


# ---------------------------------------------------------------------------------
# phantom
# ---------------------------------------------------------------------------------
def _add_phantom(sub) -> None:
    p = _sub(
        sub,
        "phantom",
        "generate the procedural four-chamber phantom cohort",
        (
            "siblings phantom --n 512 --size 128 --seed 0 --defect-rate 0.25 --out data/phantom128",
            "siblings phantom --n 32 --size 64 --seed 1 --defect-rate 0 --out data/heldout64",
        ),
        description="""\
        Write N procedural hearts (phantom_XXXX.nii.gz, labels 0-6, RAS+, 179.2 mm field
        of view) and parameters.csv with each subject's ground truth (volumes in mL).
        Same seed, same bytes.""",
    )
    p.add_argument("--n", type=int, default=512, help="number of subjects (default 512)")
    p.add_argument(
        "--size", type=int, default=128, help="grid size per axis (default 128 = 1.4 mm)"
    )
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument(
        "--defect-rate",
        type=float,
        default=0.25,
        help="fraction of subjects with segmentation-like defects (default 0.25)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> None:
    from .data.phantom import summarise_cohort
    from .pipelines.phantom import generate_cohort

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    if args.size < 16:
        raise UsageError(f"--size must be at least 16, got {args.size}")
    if not 0 <= args.defect_rate <= 1:
        raise UsageError(f"--defect-rate must be in [0, 1], got {args.defect_rate}")
    rows = generate_cohort(
        args.out,
        n=args.n,
        size=args.size,
        seed=args.seed,
        defect_rate=args.defect_rate,
        workers=args.workers,
    )
    print(summarise_cohort(rows))
    print(f"wrote {len(rows)} subjects and parameters.csv to {args.out}")


# ---------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = _sub(
        sub,
        "demo",
        "a short tour: phantom cohort, samples, and a twin edited both ways (a few minutes)",
        ("siblings demo --out demo_out",),
        description="""\
        Make a small phantom cohort, sample a few maps with the shipped weights, and edit
        one held-out phantom twin (placed in a scanner-like space) both ways: perturbational
        (psi = 0.5) and localized (LV regenerated), 4 siblings each, with manifests,
        siblings back on the twin's scan grid and a report with the side-by-side figure.""",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    _add_model_options(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from .pipelines.demo import run_demo

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    _cpu_threads(args.threads)
    run_demo(
        args.out,
        seed=args.seed,
        checkpoint=args.checkpoint,
        preset=args.preset,
        device=args.device,
        amp=_bf16(args),
        steps=args.steps,
    )


# ---------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = _sub(
        sub,
        "train",
        "train the VAE or the latent diffusion model (resumable; torchrun for several processes)",
        (
            "siblings train vae --preset tiny --data data/phantom64 --out runs/tiny",
            "siblings train ldm --preset tiny --data data/phantom64 --out runs/tiny",
            "torchrun --nproc_per_node=4 -m siblings.cli train ldm --preset paper --data DIR --out DIR",
            "siblings train regressor --data data/phantom64 --extra data/phantom64_s10 "
            "--heldout data/heldout64 --out runs/reg",
        ),
        description="""\
        Train one stage of the latent diffusion model. `vae` writes OUT/vae.safetensors;
        `ldm` encodes the data with OUT/vae.safetensors (or --vae) and writes
        OUT/ldm.safetensors. Interrupted runs resume from OUT/state (or --state).
        Without --data, a 512-subject phantom cohort is generated in OUT/data.""",
    )
    p.add_argument(
        "stage",
        choices=["vae", "ldm", "regressor"],
        help="which network to train (regressor: the morphology regressor of guided sampling, "
        "on the latents of --checkpoint)",
    )
    p.add_argument("--preset", default="tiny", help="tiny (CPU) or paper (GPU); default tiny")
    p.add_argument("--data", type=Path, default=None, help="folder of prepared label maps")
    p.add_argument("--out", type=Path, required=True, help="output folder for weights and logs")
    p.add_argument(
        "--vae", type=Path, default=None, help="VAE weights for `ldm` (default OUT/vae.safetensors)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimisation steps (default: the preset's)"
    )
    p.add_argument(
        "--batch", type=int, default=None, help="global batch size (default: the preset's)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    _add_device_option(p)
    _add_precision_options(
        p,
        "the default, except on a CPU without AMX or AVX512-BF16, where bf16 would be "
        "emulated: there fp32, with a warning",
    )
    p.add_argument(
        "--state", type=Path, default=None, help="resumable state folder (default OUT/state)"
    )
    p.add_argument(
        "--no-resume", action="store_true", help="start from scratch even if state exists"
    )
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE", help="override a preset field (repeatable)"
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="shipped|DIR",
        help="fine-tune: start from these weights (the shipped ones, or a checkpoint folder "
        "of the same preset) with a fresh optimiser",
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="regressor: the model whose latents it reads (default: the shipped weights)",
    )
    p.add_argument(
        "--heldout",
        type=Path,
        default=None,
        help="regressor: held-out maps whose R² and MAE per feature and σ go into its JSON",
    )
    p.add_argument(
        "--latents",
        type=Path,
        default=None,
        help="regressor: cached latents of --data from `train ldm` (checked, else encoded)",
    )
    p.add_argument(
        "--extra",
        type=Path,
        default=None,
        help="regressor: a folder of further maps to train on as well (e.g. `siblings phantom "
        "--seed 10`; never the held-out maps)",
    )
    p.add_argument(
        "--extra-latents",
        type=Path,
        default=None,
        help="regressor: cached latents of --extra (checked, else encoded)",
    )
    p.add_argument(
        "--heldout-latents",
        type=Path,
        default=None,
        help="regressor: cached latents of --heldout (checked, else encoded)",
    )
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from .models.presets import get_preset, parse_overrides
    from .train import load_init, resolve_init, train_ldm, train_vae

    if args.stage == "regressor":
        return _run_train_regressor(args)

    preset = get_preset(args.preset, **parse_overrides(args.set))
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    if args.lr is not None and not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.init is not None:  # refused (other preset or shape) before anything is written
        load_init(resolve_init(args.init, args.stage, preset), args.stage, preset)
    vae = args.vae or args.out / "vae.safetensors"
    data = args.data
    if data is None:
        from .pipelines.phantom import generate_cohort

        data = args.out / "data"
        if not (data / "parameters.csv").exists():
            generate_cohort(data, n=512, size=preset.size, seed=0, defect_rate=0.25)
    amp, warning = _precision(args, training=True)
    if warning:  # bad input is still reported as its one error line
        _check_train_inputs(args.stage, data, vae, preset)
        print(f"siblings train: warning: {warning}", file=sys.stderr)
    common = dict(
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
        amp=amp,
        state_dir=args.state,
        resume=not args.no_resume,
        init=args.init,
        lr=args.lr,
    )
    if args.stage == "vae":
        path = train_vae(data, args.out, preset, **common)
    else:
        path = train_ldm(data, args.out, vae, preset=preset, **common)
    print(f"wrote {path}")


def _run_train_regressor(args: argparse.Namespace) -> None:
    from .train import train_regressor

    if args.data is None:
        raise UsageError("train regressor needs --data (the cohort the model was trained on)")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    options = {k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v is not None}
    if args.lr is not None:
        options["lr"] = args.lr
    path = train_regressor(
        args.data,
        args.out,
        args.checkpoint,
        heldout=args.heldout,
        latents=args.latents,
        heldout_latents=args.heldout_latents,
        extra=args.extra,
        extra_latents=args.extra_latents,
        state_dir=args.state,
        seed=args.seed,
        resume=not args.no_resume,
        **options,
    )
    print(f"wrote {path}")


def _check_train_inputs(stage: str, data: Path, vae: Path, preset) -> None:
    """The input checks the training functions start with, run ahead of a warning."""
    from .checkpoint import CheckpointError
    from .data.dataset import LabelMapDataset
    from .train import load_vae

    if stage == "ldm":
        _, theirs, _ = load_vae(vae)
        if theirs.size != preset.size or tuple(theirs.vae_channels) != tuple(preset.vae_channels):
            raise CheckpointError(
                f"{vae}: VAE of preset {theirs.name!r} does not fit preset {preset.name!r}"
            )
    LabelMapDataset(data, size=preset.size)


# ---------------------------------------------------------------------------------
# sample
# ---------------------------------------------------------------------------------
def _add_sample(sub) -> None:
    p = _sub(
        sub,
        "sample",
        "sample a synthetic cohort unconditionally (NIfTI + provenance JSON per map)",
        (
            "siblings sample --n 16 --steps 20 --seed 0 --out synthetic",
            "siblings sample --n 360 --batch 16 --checkpoint runs/tiny --out synthetic",
            'siblings sample --n 8 --target "RV_volume_ml = 130 ± 5" --guidance-scale 20 --out big_rv',
            "torchrun --nproc_per_node=2 -m -- siblings sample --n 1000 --out big_cohort",
        ),
        description="""\
        Draw N label maps from the latent diffusion model with EDM's Heun sampler
        (N steps = 2N-1 denoiser calls). Sample i depends only on (--seed, i), so the
        cohort does not depend on --batch or on the number of torchrun processes.""",
    )
    p.add_argument("--n", type=int, required=True, help="number of maps")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--batch", type=int, default=8, help="maps per batch (default 8)")
    _add_model_options(p)
    _add_guidance_options(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_repair_options(p)
    _add_export_option(p)
    p.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    from .pipelines.sample import sample_cohort

    paths = sample_cohort(
        lambda: _load_model(args),
        args.out,
        args.n,
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        device=args.device,
        repair=args.repair,
        max_gap=args.max_gap,
        export=args.export,
        export_edge_mm=args.export_edge_mm,
        target=args.target,
        guidance_scale=args.guidance_scale,
        regressor=args.regressor,
        hold=args.hold,
    )
    print(f"wrote {len(paths)} {'repaired ' if args.repair else ''}maps to {args.out}")
    if args.target is not None and (args.out / "guidance.json").exists():
        import json

        rep = json.loads((args.out / "guidance.json").read_text())
        print(
            f"  target {rep['target']}: {rep['within']} of {rep['n']} maps within "
            f"({100 * rep['share_within']:.0f}%)"
        )
        if rep.get("note"):
            print(f"siblings sample: warning: {rep['note']}", file=sys.stderr)


# ---------------------------------------------------------------------------------
# edit
# ---------------------------------------------------------------------------------
_EDIT_OUTPUTS = """\
        Writes OUT/sibling_XXXXX.nii.gz with a JSON manifest each (provenance, morphology,
        the 12 topology checks, Dice against the twin), OUT/twin/ (the twin in model space,
        its VAE reconstruction and, if prepared here, its transform), OUT/report/report.html
        (siblings against the twin, and the twin beside siblings in three slices) and
        OUT/run.json. TWIN is a label map in the model's space, a label map in any other
        space and voxel size (prepared as `siblings prepare` does, transform kept), or a
        TotalSegmentator subject folder; when it came from another space every sibling is
        also written on the twin's original grid in OUT/scanner/. Nothing is written
        unless the whole run succeeds."""


def _add_invert_option(p) -> None:
    """--invert-steps, for every command that edits a twin (edit perturb/local, augment)."""
    from .diffusion.inversion import DEFAULT_INVERT_STEPS

    p.add_argument(
        "--invert-steps",
        type=int,
        default=DEFAULT_INVERT_STEPS,
        metavar="N",
        help="encode the twin by inversion: refine its posterior mean by up to N gradient "
        "steps so that it decodes back to the twin (default "
        f"{DEFAULT_INVERT_STEPS}; 0 = the paper's posterior mean)",
    )


_LABELS_HELP = (
    "label scheme of the input map(s): siblings (default, values 0-6), "
    "totalsegmentator-heartchambers, mmwhs, mmwhs-ordinal, a JSON file "
    '{"205": "Myo", ...} or an nnU-Net dataset.json (`siblings labels --list`)'
)


def _add_labels_option(p, flag_name: str = "--labels", what: str = "") -> None:
    """--labels SCHEME|FILE, for every command that reads users' label maps."""
    p.add_argument(
        flag_name,
        default=None,
        metavar="SCHEME|FILE",
        help=(f"{what}: " if what else "") + _LABELS_HELP,
    )


def _edit_common(p) -> None:
    p.add_argument(
        "twin",
        type=Path,
        metavar="TWIN",
        help="twin label map (.nii.gz) or TotalSegmentator subject folder",
    )
    p.add_argument("--n", type=int, default=60, help="number of siblings (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps N (default 20)")
    p.add_argument("--batch", type=int, default=8, help="siblings per batch (default 8)")
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    _add_invert_option(p)
    _add_model_options(p)
    p.add_argument(
        "--register-to",
        default="phantom",
        metavar="MAP|phantom|none",
        help="registration target for a twin from another space: a model-space map, the "
        "first default phantom (default), or none (reorient and centre only)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="REF_DIR",
        help="also evaluate the siblings against this cohort (FD, precision, recall)",
    )
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples in the report (default 1000)"
    )
    p.add_argument(
        "--figure-siblings",
        type=int,
        default=5,
        help="siblings shown beside the twin in the figure (default 5)",
    )
    _add_labels_option(p)
    p.add_argument(
        "--allow-truncated",
        action="store_true",
        help="edit a twin whose chambers or myocardium its scan cuts (refused by default)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    _add_repair_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_export_option(p)
    _add_guidance_options(p, "siblings")
    p.set_defaults(func=_run_edit)


def _cpu_threads(requested: int | None) -> None:
    """Set torch's intra-op threads: ``requested``, or the cores not already busy.

    On a shared CPU, more threads than free cores spin-wait: with a training job on one
    of two cores, sampling ran 2.5x slower with 2 threads than with 1.
    """
    import os

    import torch

    if requested is None:
        cores = os.cpu_count() or 1
        try:
            busy = int(os.getloadavg()[0] + 0.5)
        except OSError:  # not available on this platform
            busy = 0
        requested = max(1, min(torch.get_num_threads(), cores - busy))
    if requested < 1:
        raise UsageError(f"--threads must be at least 1, got {requested}")
    torch.set_num_threads(requested)


def _add_edit(sub) -> None:
    p = _sub(
        sub,
        "edit",
        "make digital siblings of a twin: perturbational (psi) or localized (tissues) editing",
        (
            "siblings edit perturb twin.nii.gz --psi 0.5 --n 60 --seed 0 --out sibs_psi05",
            "siblings edit local twin.nii.gz --regenerate LV --n 60 --seed 0 --out sibs_lv",
        ),
        description="""\
        Digital siblings of one twin (SPEC §4). `perturb` re-noises the twin's latent and
        recomputes the last round(psi*N) sampler steps (SDEdit, paper §3.3); `local`
        regenerates the named tissues and keeps the rest (inpainting, paper §3.4).""",
    )
    methods = p.add_subparsers(dest="method", metavar="<method>", required=True)
    pp = methods.add_parser(
        "perturb",
        help="perturbational editing: siblings at sampling ratio psi",
        description=textwrap.dedent(
            """\
        Perturbational editing (paper §3.3, SDEdit): encode the twin, add noise at level
        sigma_(N-k) with k = max(1, round(psi*N)), and run the last k of the N sampler
        steps. Small psi gives siblings close to the twin (psi -> 0: its VAE
        reconstruction); psi = 1 starts from almost pure noise (unconditional samples).
        """
        )
        + "\n"
        + textwrap.dedent(_EDIT_OUTPUTS),
        epilog=_examples(
            "siblings edit perturb twin.nii.gz --psi 0.5 --n 60 --seed 0 --out sibs_psi05",
            "siblings edit perturb scan_labels.nii.gz --psi 0.35 --n 8 --out sibs  # any space",
            "siblings edit perturb TotalSegmentator/s0011 --psi 0.65 --n 60 --out sibs_s0011",
            "siblings edit perturb mmwhs_ct_1001.nii.gz --labels mmwhs --psi 0.5 --n 8 --out sibs",
            "siblings edit perturb twin.nii.gz --psi 0.8 --checkpoint runs/tiny --device cpu --out x",
            'siblings edit perturb twin.nii.gz --psi 0.65 --target "LV_volume_ml = 1.2*twin ± 5%" --out x',
        ),
        formatter_class=_formatter,
    )
    _edit_common(pp)
    pp.add_argument(
        "--psi", type=float, required=True, help="sampling ratio in (0, 1] (paper: .35-1.0)"
    )
    pl = methods.add_parser(
        "local",
        help="localized editing: regenerate chosen tissues, keep the others",
        description=textwrap.dedent(
            """\
        Localized editing (paper §3.4, eq. 5): the kept tissues' latent is pasted back at
        the current noise level before every denoiser call, so only the --regenerate
        tissues (plus the myocardium when a ventricle is regenerated, as in the paper)
        are made anew. The keep mask is taken to the latent grid and dilated --dilate
        times (default: the preset's, about 11 mm). With --keep exact (the default) each
        decoded sibling is then composed with the twin in label space, on the model grid
        and again on the twin's own grid: every voxel of a kept tissue is the twin's, kept
        tissues appear nowhere else, and a seam rule adds no island or forbidden contact.
        --keep latent is the paper's method alone. Each sibling's manifest holds the keep
        mode and the Dice of every kept tissue against the twin.
        """
        )
        + "\n"
        + textwrap.dedent(_EDIT_OUTPUTS),
        epilog=_examples(
            "siblings edit local twin.nii.gz --regenerate LV --n 60 --seed 0 --out sibs_lv",
            "siblings edit local twin.nii.gz --regenerate LV --regenerate RV --out sibs_lv_rv",
            "siblings edit local twin.nii.gz --regenerate LV,RV --dilate 0 --keep-background --out x",
            "siblings edit local twin.nii.gz --regenerate RV --keep latent --out sibs_paper",
            'siblings edit local twin.nii.gz --regenerate RV --target "RV_volume_ml = 130 ± 5" --out x',
        ),
        formatter_class=_formatter,
    )
    _edit_common(pl)
    pl.add_argument(
        "--regenerate",
        action="append",
        required=True,
        metavar="TISSUE[,TISSUE]",
        help=f"tissue(s) to regenerate, repeatable: {', '.join(_tissue_names())}",
    )
    pl.add_argument(
        "--dilate",
        type=int,
        default=None,
        help="latent dilations of the keep mask (default: the preset's, about 11 mm)",
    )
    pl.add_argument(
        "--keep",
        choices=("exact", "latent"),
        default="exact",
        help="exact (default): kept tissues are the twin's voxels, composed in label space "
        "on both grids; latent: the paper's latent pasting alone (eq. 5)",
    )
    pl.add_argument("--keep-background", action="store_true", help="keep the twin's background too")
    pl.add_argument(
        "--no-myocardium",
        action="store_true",
        help="do not regenerate the myocardium with a ventricle",
    )
    pl.add_argument(
        "--fresh-noise",
        action="store_true",
        help="draw fresh noise at every paste (default: one fixed noise per sibling)",
    )


def _tissue_names() -> tuple[str, ...]:
    from .anatomy import TISSUES

    return TISSUES


def _run_edit(args: argparse.Namespace) -> None:
    from .editing import check_settings, format_run
    from .pipelines.edit import run_edit

    opt = vars(args)  # the local-only flags are absent for perturb (check_settings drops them)
    settings = check_settings(
        args.method,
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        psi=opt.get("psi"),
        regenerate=opt.get("regenerate"),
        dilate=opt.get("dilate"),
        keep_background=opt.get("keep_background", False),
        with_myocardium=not opt.get("no_myocardium", False),
        fresh_noise=opt.get("fresh_noise", False),
        keep=opt.get("keep", "exact"),
        invert_steps=args.invert_steps,
    )
    with _warnings_as_lines("edit"):
        run = run_edit(
            lambda: _load_model(args),
            args.twin,
            args.out,
            settings,
            register_to=args.register_to,
            reference=args.reference,
            n_boot=args.n_boot,
            figure_siblings=args.figure_siblings,
            overwrite=args.overwrite,
            progress=not args.quiet,
            repair=args.repair,
            max_gap=args.max_gap,
            labels=args.labels,
            allow_truncated=args.allow_truncated,
            export=args.export,
            export_edge_mm=args.export_edge_mm,
            target=args.target,
            guidance_scale=args.guidance_scale,
            regressor=args.regressor,
            hold=args.hold,
        )
    print(format_run(run))


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Show every UserWarning raised inside as one line ``siblings COMMAND: warning: ...``."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"siblings {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


# ---------------------------------------------------------------------------------
# prepare, unprepare
# ---------------------------------------------------------------------------------
def _single_blas_thread() -> None:
    """Parallelism is across subjects: one BLAS thread per process (set before NumPy
    loads; oversubscribed BLAS threads spin-wait and run several times slower)."""
    import os

    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, "1")


def _add_prepare(sub) -> None:
    p = _sub(
        sub,
        "prepare",
        "prepare segmentations as model-space label maps (resample, reorient, crop, register)",
        (
            "siblings prepare totalsegmentator Totalsegmentator_dataset --out data/prepared128",
            "siblings prepare totalsegmentator DATA --out data/prepared64 --size 64 --workers 8",
            "siblings prepare labelmaps mmwhs_labels --labels mmwhs --out data/prepared128",
        ),
        description="""\
        Turn a segmentation dataset into a cohort of label maps in the model's space
        (SPEC §2): 1.4 mm isotropic at --size 128, LV->LA axis along +z, heart centred,
        rigidly registered to a reference. Writes DIR/<subject>.nii.gz, the forward
        transform DIR/<subject>.xfm.json (for `siblings unprepare`), a manifest
        DIR/<subject>.json, DIR/exclusions.csv and DIR/prepare.json.""",
    )
    sources = p.add_subparsers(dest="source", metavar="<source>", required=True)
    t = sources.add_parser(
        "totalsegmentator",
        help="a TotalSegmentator dataset (v1 per-class files or v2 heartchambers_highres)",
        description=textwrap.dedent("""\
        Prepare a TotalSegmentator dataset: SRC holds one folder per subject with
        segmentations/<class>.nii.gz (v1), heartchambers_highres.nii.gz (v2, --ml) or
        heartchambers_highres/<class>.nii.gz (v2), and optionally meta.csv. Subjects
        with a missing, empty, unreadable or truncated class, or an implausible
        chamber volume, are excluded with their reason in DIR/exclusions.csv. The v2
        `total` task (whole heart only) is refused. Re-running skips finished subjects."""),
        epilog=_examples(
            "siblings prepare totalsegmentator Totalsegmentator_dataset --out prepared128",
            "siblings prepare totalsegmentator DATA --out prepared --reference ref.nii.gz",
            "siblings prepare totalsegmentator DATA --out prepared --volume-bounds LV=30:350",
        ),
        formatter_class=_formatter,
    )
    t.add_argument("src", type=Path, metavar="SRC", help="dataset root (or one subject folder)")
    _prepare_options(t)
    t.add_argument("--split", default=None, help="only subjects of this meta.csv split")
    t.set_defaults(func=_run_prepare)
    m = sources.add_parser(
        "labelmaps",
        help="a folder of multi-label maps in any label scheme (MM-WHS, nnU-Net, ...)",
        description=textwrap.dedent("""\
        Prepare a folder of multi-label maps, one subject per SRC/<subject>.nii.gz, whose
        values follow the --labels scheme: the same quality control, exclusions,
        resampling, reorientation, registration and transforms as `prepare
        totalsegmentator`. A file with a missing tissue, a heart cut by the scan, an
        implausible chamber volume or values the scheme does not map (listed with their
        voxel counts) is excluded with its reason. The scheme is recorded in every
        manifest. Re-running skips finished subjects."""),
        epilog=_examples(
            "siblings prepare labelmaps mmwhs_labels --labels mmwhs --out prepared128",
            "siblings prepare labelmaps nnunet_preds --labels Dataset027/dataset.json --out prep",
            "siblings prepare labelmaps mine --labels my_scheme.json --size 64 --out prep64",
        ),
        formatter_class=_formatter,
    )
    m.add_argument("src", type=Path, metavar="SRC", help="folder of label maps (or one map)")
    _add_labels_option(m)
    _prepare_options(m)
    m.set_defaults(func=_run_prepare)


def _prepare_options(t) -> None:
    """The options `prepare totalsegmentator` and `prepare labelmaps` share."""
    t.add_argument("--out", type=Path, required=True, help="output folder")
    t.add_argument("--size", type=int, default=128, help="prepared grid (default 128 = 1.4 mm)")
    t.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    t.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="prepared map to register to (default: the cohort's medoid subject)",
    )
    t.add_argument(
        "--engine",
        choices=["simpleitk", "ants"],
        default="simpleitk",
        help="registration engine (default simpleitk; ants needs antspyx)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed for engines that sample (default 0)")
    t.add_argument(
        "--volume-bounds",
        action="append",
        metavar="CHAMBER=MIN:MAX",
        help="plausible chamber volume in mL, repeatable (defaults LV=20:400 RV=20:450 "
        "LA=10:250 RA=10:300)",
    )
    t.add_argument(
        "--interpolation",
        choices=["linear", "nearest"],
        default="linear",
        help="label resampling: one-hot linear + argmax (default) or nearest",
    )
    t.add_argument("--register-size", type=int, default=48, help="registration grid (default 48)")
    t.add_argument(
        "--no-keep-axis",
        action="store_true",
        help="keep the registration's tilt instead of putting LV->LA back on +z",
    )


def _run_prepare(args: argparse.Namespace) -> None:
    _single_blas_thread()
    from .data.totalseg import format_summary
    from .pipelines.prepare import prepare_labelmaps, prepare_totalsegmentator

    common = dict(
        size=args.size,
        workers=args.workers,
        reference=args.reference,
        engine=args.engine,
        seed=args.seed,
        volume_bounds=args.volume_bounds,
        interpolation=args.interpolation,
        register_size=args.register_size,
        keep_axis=not args.no_keep_axis,
    )
    if args.source == "labelmaps":
        summary = prepare_labelmaps(args.src, args.out, args.labels, **common)
    else:
        summary = prepare_totalsegmentator(args.src, args.out, split=args.split, **common)
    print(format_summary(summary))


def _add_unprepare(sub) -> None:
    p = _sub(
        sub,
        "unprepare",
        "map prepared-space label maps (twins, siblings) back onto the original scan grid",
        (
            "siblings unprepare prepared/s0001.nii.gz --transform prepared/s0001.xfm.json --out s0001_scan.nii.gz",
            "siblings unprepare siblings_of_s0001/ --transform prepared/s0001.xfm.json --out on_scan/",
        ),
        description="""\
        Apply the inverse of a subject's stored forward transform (written by
        `siblings prepare`) to a map in prepared space, or to every map of a folder,
        and resample it label-safely onto the subject's original scan grid, so it
        overlays the CT. Writes NAME.nii.gz and NAME.json (provenance) per map.""",
    )
    p.add_argument(
        "map", type=Path, metavar="MAP", help="a prepared-space .nii.gz or a folder of them"
    )
    p.add_argument("--transform", type=Path, required=True, help="the subject's <subject>.xfm.json")
    p.add_argument("--out", type=Path, required=True, help="output file (or folder)")
    p.add_argument(
        "--interpolation",
        choices=["linear", "nearest"],
        default="linear",
        help="one-hot linear + argmax (default) or nearest",
    )
    p.set_defaults(func=_run_unprepare)


def _run_unprepare(args: argparse.Namespace) -> None:
    _single_blas_thread()
    from .pipelines.unprepare import unprepare_files

    written = unprepare_files(args.map, args.transform, args.out, interpolation=args.interpolation)
    where = written[0] if len(written) == 1 else args.out
    print(f"wrote {len(written)} map{'s' if len(written) != 1 else ''} on the scan grid to {where}")


# ---------------------------------------------------------------------------------
# repair
# ---------------------------------------------------------------------------------
def _add_max_gap_option(p, prefix: str = "") -> None:
    from .repair import DEFAULT_MAX_GAP

    p.add_argument(
        "--max-gap",
        type=int,
        default=DEFAULT_MAX_GAP,
        metavar="VOXELS",
        help=f"{prefix}longest chain of voxels a bridge or a closed contact may paint "
        f"(default {DEFAULT_MAX_GAP})",
    )


def _add_repair_options(p) -> None:
    """--repair and --max-gap, for the commands that make maps (sample, edit, augment)."""
    p.add_argument(
        "--repair",
        action="store_true",
        help="repair each map's topology before it is written (as `siblings repair` does); "
        "its manifest records the checks before and after and the voxels changed",
    )
    _add_max_gap_option(p, prefix="with --repair: ")


def _add_repair(sub) -> None:
    p = _sub(
        sub,
        "repair",
        "fix the topology violations of label maps with the least change (SPEC 5 checks)",
        (
            "siblings repair siblings_lv/ --out siblings_lv_repaired",
            "siblings repair sample_00003.nii.gz --out repaired --max-gap 3",
        ),
        description="""\
        Mend what the 12 topology checks call violated, each with the smallest relabelling
        found that does not break another check: a tissue's detached islands relabelled to
        the label around them; a forbidden contact (LV-RV, LA-RA) cut by a one-voxel layer
        (myocardium between the ventricles, background between the atria); a missing
        required contact closed by a chain of at most --max-gap voxels. What cannot be
        fixed (a missing tissue, a contact too far) is left and reported, never faked.
        Writes OUT/NAME.nii.gz (a map that needed no change is copied byte for byte),
        OUT/NAME.json (the checks before and after, voxels changed per label, what is left
        and why) and OUT/repair.json (the cohort's figures). Never changes a map in place.""",
    )
    p.add_argument(
        "map", type=Path, metavar="MAP_OR_DIR", help="a label map (.nii.gz) or a folder of them"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    _add_max_gap_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_labels_option(p)
    p.set_defaults(func=_run_repair)


def _run_repair(args: argparse.Namespace) -> None:
    from .pipelines.repair import format_repair, repair_maps

    run = repair_maps(
        args.map,
        args.out,
        max_gap=args.max_gap,
        overwrite=args.overwrite,
        progress=not args.quiet,
        labels=args.labels,
    )
    print(format_repair(run))


# ---------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    p = _sub(
        sub,
        "evaluate",
        "measure a cohort against a reference: FD, precision/recall, topology, heatmaps, report",
        (
            "siblings evaluate synthetic --reference data/phantom128 --out eval/synthetic",
            "siblings evaluate siblings_lv --reference data/rare --k 5 --n-boot 2000 --out eval/lv",
        ),
        description="""\
        Evaluate the label maps in COHORT_DIR (*.nii.gz, values 0-6) against those in
        REF_DIR, on one grid (paper §3.5, appendix B). Writes OUT/metrics.json (n, fd,
        precision, recall, tv_percent, each with a 95% bootstrap interval *_ci, and the
        per-check violation rates), OUT/per_map.csv (12 morphology and 12 check columns per
        map), OUT/reference_per_map.csv, PNG figures and a self-contained OUT/report.html.
        Nothing is written if any input map is invalid.""",
    )
    p.add_argument(
        "cohort", type=Path, metavar="COHORT_DIR", help="folder of label maps to evaluate"
    )
    p.add_argument(
        "--reference",
        type=Path,
        required=True,
        metavar="REF_DIR",
        help="folder of reference (real) label maps",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--k", type=int, default=3, help="k of the k-NN precision/recall radii (default 3)"
    )
    p.add_argument(
        "--n-boot",
        type=int,
        default=1000,
        help="bootstrap resamples for the intervals (default 1000, 0 = none)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--min-component-voxels",
        type=int,
        default=0,
        help="ignore components smaller than this in checks 1-5 (default 0: every speck counts)",
    )
    p.add_argument(
        "--contact-connectivity",
        type=int,
        default=26,
        choices=(6, 18, 26),
        help="neighbourhood defining contact (default 26)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    _add_labels_option(p, what="the cohort's maps")
    _add_labels_option(p, "--reference-labels", what="the reference's maps")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from .pipelines.evaluate import evaluate_cohort

    ev = evaluate_cohort(
        args.cohort,
        args.reference,
        args.out,
        k=args.k,
        n_boot=args.n_boot,
        seed=args.seed,
        workers=args.workers,
        progress=not args.quiet,
        min_component_voxels=args.min_component_voxels,
        contact_connectivity=args.contact_connectivity,
        figures=not args.no_figures,
        labels=args.labels,
        reference_labels=args.reference_labels,
    )
    m = ev.metrics

    def ci(key: str, fmt: str) -> str:
        v = m.get(f"{key}_ci")
        return "" if not v else f" [{v[0]:{fmt}}, {v[1]:{fmt}}]"

    print(f"cohort {m['n']} maps vs reference {m['n_reference']} maps (k = {m['k']})")
    print(
        f"FD {m['fd']:.3f}{ci('fd', '.3f')}  precision {m['precision']:.3f}{ci('precision', '.3f')}"
        f"  recall {m['recall']:.3f}{ci('recall', '.3f')}"
    )
    print(
        f"TV% {m['tv_percent']:.2f}{ci('tv_percent', '.2f')} (reference {m['reference']['tv_percent']:.2f})"
    )
    print(f"wrote metrics.json, per_map.csv and report.html to {args.out}")


# ---------------------------------------------------------------------------------
# augment
# ---------------------------------------------------------------------------------
def _add_augment(sub) -> None:
    p = _sub(
        sub,
        "augment",
        "grow a rare subgroup of a cohort with generated maps that meet a morphology condition",
        (
            'siblings augment --where "RV_volume_ml > 115" --strategy perturb --n 140 --data data/phantom64 --seed 0 --out aug/perturb',
            'siblings augment --where "RV_volume_ml > 115" --strategy uncond --n 140 --data data/phantom64 --max-attempts 5000 --out aug/uncond',
            'siblings augment --where "RV_volume_ml > 115 and LV_volume_ml < 150" --strategy local --n 50 --data DIR --out DIR',
            'siblings augment --where "RV_volume_ml > 115" --strategy guided --guidance-scale 20 --n 20 --data data/phantom64 --out aug/guided',
        ),
        description="""\
        The rare twins are the maps in --data meeting --where (any morphology column:
        {LV,RV,LA,RA}_{volume_ml,major_mm,minor_mm}, with <, >, <=, >=, joined by `and`).
        New maps come from unconditional samples (uncond), perturbational siblings of the
        rare twins (perturb: half the attempts at psi 0.5, half at 0.35) or localized
        siblings (local: LV regenerated for half the twins, RV for the other half), and
        are kept only if the written map meets the condition. Stops at --n accepted maps
        (--resume continues an interrupted run and gives the same files).
        Writes OUT/<strategy>_XXXXX.nii.gz + .json per map, OUT/augment.json (counts,
        acceptance rate) and OUT/report/ (the accepted cohort evaluated against the rare
        twins). Same --seed, same files, whatever --batch.""",
    )
    p.add_argument("--where", required=True, metavar="CONDITION", help='e.g. "RV_volume_ml > 115"')
    p.add_argument(
        "--strategy",
        required=True,
        choices=["uncond", "perturb", "local", "guided"],
        help="how to generate (guided: --sampler with classifier guidance towards --where)",
    )
    p.add_argument(
        "--sampler",
        choices=["uncond", "perturb", "local"],
        default="uncond",
        help="guided: the sampler guided (default uncond)",
    )
    p.add_argument("--n", type=int, required=True, help="number of maps to accept")
    p.add_argument(
        "--data", type=Path, required=True, help="folder of real label maps on the model's grid"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    p.add_argument("--batch", type=int, default=8, help="attempts per batch (default 8)")
    p.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="give up after this many attempts (default max(1000, 50 x N))",
    )
    p.add_argument(
        "--psi",
        default="0.5,0.35",
        help="perturb: sampling ratios, alternated over twins and rounds (default 0.5,0.35)",
    )
    p.add_argument(
        "--regions",
        default="LV,RV",
        help="local: tissue regenerated per twin in turn (default LV,RV; '+' joins, e.g. LV+RV)",
    )
    p.add_argument(
        "--dilate", type=int, default=None, help="local: keep-mask dilations (default: preset's)"
    )
    p.add_argument(
        "--keep",
        choices=("exact", "latent"),
        default="exact",
        help="local: exact (default) keeps the twin's kept tissues voxel for voxel (composed "
        "in label space); latent: the paper's latent pasting alone",
    )
    _add_invert_option(p)
    _add_model_options(p)
    _add_guidance_options(p)
    p.add_argument("--k", type=int, default=3, help="k of precision/recall (default 3)")
    p.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000, 0 = none)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUT (same settings; N may grow)",
    )
    _add_labels_option(p, what="the maps in --data")
    p.add_argument("--no-evaluate", action="store_true", help="skip the evaluation report")
    p.add_argument("--no-figures", action="store_true", help="no PNG figures in the report")
    _add_export_option(p)
    _add_repair_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_augment)


def _run_augment(args: argparse.Namespace) -> None:
    from .augment import AugmentStopped, check_settings
    from .metrics.condition import parse_condition
    from .pipelines.augment import augment

    parse_condition(args.where)  # a bad condition is reported before a bad --psi
    try:
        psis = [float(v) for v in args.psi.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--psi: expected numbers separated by commas, got {args.psi!r}") from None
    regions = [r.strip().replace("+", ",") for r in args.regions.split(",") if r.strip()]
    settings = check_settings(
        args.where,
        args.strategy,
        args.n,
        seed=args.seed,
        steps=args.steps,
        batch=args.batch,
        max_attempts=args.max_attempts,
        psis=psis,
        regions=regions,
        dilate=args.dilate,
        keep=args.keep,
        invert_steps=args.invert_steps,
        sampler=args.sampler,
    )
    try:
        with _warnings_as_lines("augment"):
            res = augment(
                lambda: _load_model(args),
                args.data,
                settings,
                args.out,
                resume=args.resume,
                evaluate=not args.no_evaluate,
                k=args.k,
                n_boot=args.n_boot,
                figures=not args.no_figures,
                progress=not args.quiet,
                repair=args.repair,
                max_gap=args.max_gap,
                export=args.export,
                export_edge_mm=args.export_edge_mm,
                labels=args.labels,
                target=args.target,
                guidance_scale=args.guidance_scale,
                regressor=args.regressor,
                hold=args.hold,
            )
    except AugmentStopped as exc:
        print(f"siblings augment: {exc.worded(flag)}", file=sys.stderr)
        raise SystemExit(1) from None
    s = res.summary
    lo, hi = s["acceptance_rate_ci95_wilson"]
    print(
        f"{len(res.rare_twins)} rare twins meet {res.condition}; accepted {res.accepted} of "
        f"{res.attempted} attempts: acceptance rate {100 * res.acceptance_rate:.1f}% "
        f"(95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"
    )
    ev = s["evaluation"]
    if "skipped" in ev:
        print(f"evaluation skipped: {ev['skipped']}")
    else:
        print(
            f"vs the rare cohort: FD {ev['fd']:.3f}  precision {ev['precision']:.3f}  "
            f"recall {ev['recall']:.3f}  TV% {ev['tv_percent']:.2f}"
        )
    report = "" if "skipped" in ev else " and report/"
    print(f"wrote {res.accepted} maps, augment.json{report} to {res.out}")


# ---------------------------------------------------------------------------------
# experiment
# ---------------------------------------------------------------------------------
def _add_experiment(sub) -> None:
    p = _sub(
        sub,
        "experiment",
        "run the paper's experiments (Tables 1-4, Figs. 4-12) into one report",
        (
            "siblings experiment all --preset tiny --data data/phantom64 --out runs/exp --bf16 --jobs 2",
            "siblings experiment all --data data/phantom64 --out runs/exp --plan",
            "siblings experiment unconditional --data data/phantom64 --out runs/exp --scale 0.1",
            "siblings experiment perturb --data data/phantom64 --out runs/exp --bf16 --batch 8",
            "siblings experiment all --data data/phantom64 --out runs/exp --publish docs/results",
        ),
        description="""\
        Run one experiment of the paper (paper §4, appendix C) or all of them, at the
        paper's counts (--scale shrinks every count of maps, at least 4 per cohort):
          sensitivity    steps and cohort size in {5,10,20,50,100,200}: FD, P, R, TV%
          unconditional  360 samples; real, real through the VAE, synthetic (Table 1)
          perturb        4 seeds x psi in {.35,.5,.65,.8,1} x 60 siblings (Table 2)
          local          4 seeds x {LV, RV} regenerated x 60 siblings (Table 3)
          augment        rare cohort (--where) grown by 140 maps per strategy (Table 4)
        Writes OUT/<experiment>/<cohort>/ (maps + done marker), tables (CSV, Markdown)
        and figures per experiment, OUT/results.json and OUT/report.html. Re-running
        the same command skips finished cohorts (resume after an interruption).""",
    )
    p.add_argument(
        "name",
        choices=["sensitivity", "unconditional", "perturb", "local", "augment", "all"],
        metavar="NAME",
        help="sensitivity, unconditional, perturb, local, augment or all",
    )
    p.add_argument("--data", type=Path, required=True, help="folder of real label maps")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    _add_model_options(p)
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every count of maps (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--batch", type=int, default=8, help="maps per sampler batch (default 8)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument(
        "--where",
        default="RV_volume_ml > 115",
        help="rare-cohort condition of `augment` (default 'RV_volume_ml > 115')",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="processes for the real cohort (default: all)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes making cohorts at once, one thread each (default 1; e.g. 2 on 2 cores)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="only list the cohorts to make (maps, cost, finished or not); write nothing",
    )
    p.add_argument(
        "--publish",
        type=Path,
        default=None,
        metavar="DIR",
        help="afterwards copy report.html, results.json, tables and figures (no maps) to DIR",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_experiment)


def _run_experiment(args: argparse.Namespace) -> None:
    from .experiments import run_experiments

    if not args.scale > 0:
        raise UsageError(f"--scale must be greater than 0, got {args.scale}")
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1, got {args.batch}")
    if args.n_boot < 0:
        raise UsageError(f"--n-boot must be 0 or more, got {args.n_boot}")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.plan and args.publish is not None:
        raise UsageError("--plan writes nothing; it cannot be combined with --publish")
    _cpu_threads(args.threads)
    results = run_experiments(
        args.name,
        args.data,
        args.out,
        checkpoint=args.checkpoint,
        preset=args.preset,
        device=args.device,
        bf16=_bf16(args),
        scale=args.scale,
        seed=args.seed,
        batch=args.batch,
        n_boot=args.n_boot,
        workers=args.workers,
        where=args.where,
        progress=not args.quiet,
        command="siblings " + " ".join(sys.argv[1:]) if sys.argv else None,
        jobs=args.jobs,
        dry_run=args.plan,
    )
    if args.plan:
        rows = results["plan"]
        for r in rows:
            state = "done" if r["done"] else "to make"
            print(f"{r['cohort']:32s} {r['kind']:8s} {r['n']:5d} maps  {r['cost']:10.0f}  {state}")
        todo = sum(r["cost"] for r in rows if not r["done"])
        print(
            f"{sum(not r['done'] for r in rows)} of {len(rows)} cohorts to make, {todo:.0f} cost "
            "units (denoiser calls on one map; decoding a map counts 20)"
        )
        return
    for name, res in results["experiments"].items():
        print(f"{name}: {res.get('wall_seconds', 0):.0f} s")
    print(f"wrote {args.out / 'report.html'} and {args.out / 'results.json'}")
    if args.publish is not None:
        from .experiments.run import publish

        written = publish(args.out, args.publish)
        print(
            f"published {len(written)} files (report, numbers, tables, figures) to {args.publish}"
        )


# ---------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------
def _add_export_option(p) -> None:
    """--export FORMAT and --export-edge-mm, for the commands that write label maps."""
    from .mesh.formats import FORMATS
    from .mesh.volume import DEFAULT_EDGE_MM

    p.add_argument(
        "--export",
        choices=FORMATS,
        default=None,
        metavar="FORMAT",
        help="also export every map written (as `siblings export` does) into OUT/mesh/NAME/: "
        f"{', '.join(FORMATS)}; each map's manifest records the files",
    )
    p.add_argument(
        "--export-edge-mm",
        type=float,
        default=DEFAULT_EDGE_MM,
        metavar="MM",
        help=f"target tetrahedron edge length for --export vtu|msh (default {DEFAULT_EDGE_MM})",
    )


def _add_export(sub) -> None:
    from .mesh.formats import FORMATS
    from .mesh.surfaces import DEFAULT_ITERATIONS
    from .mesh.volume import DEFAULT_EDGE_MM

    p = _sub(
        sub,
        "export",
        "export label maps as surfaces (stl, obj, vtp) or tagged tetrahedral meshes (vtu, msh)",
        (
            "siblings export sibs_psi05 --format stl --out sibs_stl",
            "siblings export twin.nii.gz --format vtp --out twin_vtp",
            "siblings export sibs_lv --format vtu --edge-mm 2 --out sibs_mesh",
        ),
        description="""\
        Turn each label map into geometry in world millimetres (from its NIfTI affine),
        in OUT/NAME/: surfaces (stl, obj, vtp) are one closed, outward-oriented surface per
        tissue, from one multi-label surface net (touching tissues share their interface;
        vtp adds interfaces.vtp with both labels of every face), Taubin-smoothed (no
        shrinking); vtu and msh are one conforming tetrahedral mesh of the whole heart
        (TetGen) with cell data `tissue` (label values 1-6), a target edge length, and
        mesh_quality.json (dihedral angles, radius ratios). Every export also writes
        scene.mrml (3D Slicer, label colours), scene.vtm (ParaView, one block per tissue)
        for VTK formats, and export.json. vtu and msh need the mesh extra:
        pip install digital-siblings[mesh].""",
    )
    p.add_argument(
        "source", type=Path, metavar="MAP_OR_DIR", help="a .nii.gz label map or a folder"
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", type=Path, required=True, help="output folder (new)")
    p.add_argument(
        "--edge-mm",
        type=float,
        default=DEFAULT_EDGE_MM,
        help=f"target tetrahedron edge length in mm for vtu/msh (default {DEFAULT_EDGE_MM})",
    )
    p.add_argument(
        "--smooth",
        type=int,
        default=DEFAULT_ITERATIONS,
        metavar="N",
        dest="iterations",
        help=f"Taubin smoothing passes (default {DEFAULT_ITERATIONS}; 0 = voxel faces)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _add_labels_option(p)
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from .pipelines.export import export_maps

    run = export_maps(
        args.source,
        args.out,
        args.format,
        edge_mm=args.edge_mm,
        iterations=args.iterations,
        overwrite=args.overwrite,
        labels=args.labels,
    )
    print(f"exported {run['n']} map(s) as {run['format']} to {args.out} in {run['seconds']:.1f} s")


# ---------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------
def _add_labels(sub) -> None:
    p = _sub(
        sub,
        "labels",
        "list the input label schemes, or show how one scheme (or JSON file) maps values",
        (
            "siblings labels --list",
            "siblings labels mmwhs",
            "siblings labels my_scheme.json",
            "siblings labels Dataset027_ACDC/dataset.json",
        ),
        description="""\
        Commands that read label maps (edit, prepare labelmaps, evaluate, augment) take
        --labels SCHEME|FILE: a built-in scheme, a JSON file mapping source values to
        tissues ({"205": "Myo", "850": "background", "*": "background"}) or an nnU-Net
        dataset.json, whose label names are matched to tissues by a table of common
        names. This command prints the built-in schemes, or what a scheme or file maps.""",
    )
    p.add_argument(
        "scheme", nargs="?", default=None, metavar="SCHEME|FILE", help="a scheme to show"
    )
    p.add_argument("--list", action="store_true", help="print every built-in scheme")
    p.set_defaults(func=_run_labels)


def _run_labels(args: argparse.Namespace) -> None:
    from .labels import list_schemes, load_scheme

    if args.scheme is None:
        print(list_schemes())
        return
    print(load_scheme(args.scheme).table())


# ---------------------------------------------------------------------------------
COMMANDS: list[Callable] = [
    _add_phantom,
    _add_prepare,
    _add_unprepare,
    _add_repair,
    _add_train,
    _add_sample,
    _add_edit,
    _add_evaluate,
    _add_augment,
    _add_experiment,
    _add_export,
    _add_labels,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siblings",
        description="Make and measure digital siblings: anatomic variants of cardiac digital twins.",
        epilog=_examples(
            "siblings phantom --n 64 --size 64 --out cohort",
            "siblings demo --out demo_out",
            "siblings <command> --help",
        ),
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"digital-siblings {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.func(args)
    except SiblingsError as exc:
        worded = exc.worded(lambda argument: flag(argument, args.command))
        print(f"siblings {args.command}: error: {worded}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        # A path the user gave is missing, or in the way of an output.
        print(f"siblings {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siblings {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
