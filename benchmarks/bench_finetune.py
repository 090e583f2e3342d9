"""Fine-tuning cost on this CPU: seconds per training step and peak memory, per preset.

    python benchmarks/bench_finetune.py                       # tiny, and paper at 32³ and 64³
    python benchmarks/bench_finetune.py --threads 1 2 --steps 5 --json finetune.json
    python benchmarks/bench_finetune.py --presets tiny --fp32

Each row is one run of the real training function (``siblings.train.train_vae`` or
``train_ldm``, what ``siblings train vae|ldm --init … --lr …`` calls) in its own
process, on a cohort of 8 phantoms at the row's grid, for 1 + ``--steps`` steps. The
first step is the warm-up (allocation, oneDNN kernel choice) and is left out; the
figures are the median over the other steps of the wall time and of the process's CPU
time (user + system: on cores shared with other work the wall time grows, the CPU time
much less). Memory is the child's peak resident set (``ru_maxrss``): over the whole
process (data, weights, the warm-up step and, for the denoiser, encoding the cohort
with the VAE), and over the measured steps alone (``VmHWM`` after resetting both peaks
at the end of the warm-up step through ``/proc/self/clear_refs``; Linux only).

``tiny`` fine-tunes the shipped weights (``--init shipped``) at the preset's batch (VAE
2, denoiser 16). No ``paper`` weights are shipped, so the ``paper`` rows train the
paper's networks from their initialisation at a reduced grid (``--set size=G``: the
VAE at G³, the denoiser on its (G/4)³ latent) at the preset's batch (VAE 2, denoiser
8); a step costs the same with or without ``--init``. The paper denoiser rows use the
VAE written by the paper VAE row of the same grid.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _vm_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def child(spec: dict) -> dict:
    """One training run as ``spec`` says; per-step wall and CPU time, peak memory."""
    torch.set_num_threads(spec["threads"])
    import siblings.train as T
    from siblings.models.presets import get_preset

    marks: list[tuple[float, float]] = []
    setup_peak_kb = []
    write = T._Log.write

    def timed_write(self, record):  # called once per step (log_every=1), after the step
        marks.append((time.perf_counter(), time.process_time()))
        if len(marks) == 1:  # end of the warm-up step: measure the peak from here on
            setup_peak_kb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            try:  # resets VmHWM and ru_maxrss alike
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        write(self, record)

    T._Log.write = timed_write
    preset = get_preset(spec["preset"], **spec["overrides"])
    common = dict(
        steps=1 + spec["steps"],
        batch=spec["batch"],
        seed=0,
        device="cpu",
        amp=spec["bf16"],
        resume=False,
        ckpt_every=10**9,
        log_every=1,
        progress=False,
        init=spec["init"],
        lr=spec["lr"],
    )
    if spec["stage"] == "vae":
        T.train_vae(spec["data"], spec["out"], preset, **common)
    else:
        T.train_ldm(spec["data"], spec["out"], spec["vae"], preset=preset, **common)
    wall = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(marks)]
    hwm = _vm_kb("VmHWM")
    peak_kb = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, *setup_peak_kb])
    return {
        **{k: spec[k] for k in ("preset", "stage", "grid", "batch", "threads", "bf16", "init")},
        "step_wall_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "steps_measured": len(wall),
        "peak_rss_gb": peak_kb / 2**20,
        "steps_peak_rss_gb": None if hwm is None else hwm / 2**20,
    }


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        return {**spec, "error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def plan(args, work: Path) -> list[dict]:
    """The runs: per preset and grid, per thread count and precision, VAE then denoiser."""
    from siblings.models.presets import get_preset
    from siblings.pipelines.phantom import generate_cohort
    from siblings.train import resolve_init

    rows = []
    for preset in args.presets:
        grids = [get_preset("tiny").size] if preset == "tiny" else args.paper_grids
        for grid in grids:
            data = work / f"data{grid}"
            if not data.exists():
                generate_cohort(data, n=8, size=grid, seed=0, defect_rate=0.25, workers=1,
                                progress=False)  # fmt: skip
            p = get_preset(preset, size=grid)
            shipped = preset == "tiny"
            overrides = {} if shipped else {"size": grid}
            for threads in args.threads:
                for bf16 in args.precisions:
                    tag = work / f"{preset}{grid}_{threads}t_{'bf16' if bf16 else 'fp32'}"
                    run = dict(preset=preset, grid=grid, steps=args.steps, data=str(data),
                               lr=3e-5, overrides=overrides, threads=threads, bf16=bf16,
                               init="shipped" if shipped else None)  # fmt: skip
                    rows.append({**run, "stage": "vae", "batch": p.vae_batch,
                                 "out": f"{tag}_vae"})  # fmt: skip
                    vae = (
                        resolve_init("shipped", "vae", p)
                        if shipped
                        else f"{tag}_vae/vae.safetensors"
                    )
                    rows.append({**run, "stage": "ldm", "batch": p.ldm_batch, "vae": str(vae),
                                 "out": f"{tag}_ldm"})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "paper"], choices=["tiny", "paper"])
    ap.add_argument("--paper-grids", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=3, help="measured steps after the warm-up")
    ap.add_argument("--fp32", action="store_true", help="also measure without bf16 autocast")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from siblings.runtime import native_bf16

    args.precisions = [True, False] if args.fp32 else [True]
    print(
        f"{cpu_model()}, native bf16: {native_bf16('cpu')}, torch {torch.__version__}; "
        f"{args.steps} measured steps after one warm-up, medians"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        for spec in plan(args, Path(tmp)):
            r = run_child(spec)
            results.append(r)
            what = (
                f"{r['preset']:5s} {r['stage']} {r['grid']:3d}³ batch {r['batch']:2d} "
                f"{'bf16' if r['bf16'] else 'fp32'} {r['threads']} thread(s)"
            )
            if "error" in r:
                print(f"{what}: failed: {r['error']}", flush=True)
                continue
            steps_peak = r["steps_peak_rss_gb"]
            print(
                f"{what}: {r['step_wall_s']:6.2f} s/step wall, {r['step_cpu_s']:6.2f} s CPU; "
                f"peak RSS {r['peak_rss_gb']:5.2f} GB (during the steps "
                f"{'n/a' if steps_peak is None else f'{steps_peak:.2f}'} GB)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
