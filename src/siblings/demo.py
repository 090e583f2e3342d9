"""`siblings demo`: a short tour of the package on the embedded phantom cohort."""

from __future__ import annotations

from pathlib import Path

from .data.phantom import generate_cohort, summarise_cohort


def run_demo(out: str | Path, seed: int = 0) -> None:
    """Make a small phantom cohort in ``out/phantom`` and print its summary."""
    out = Path(out)
    rows = generate_cohort(out / "phantom", n=16, size=64, seed=seed, defect_rate=0.25)
    print(summarise_cohort(rows))
    print(f"demo cohort written to {out / 'phantom'}")
