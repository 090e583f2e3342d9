"""Export figures on a 64³ phantom twin (2.8 mm voxels): surfaces, a 2 mm tetrahedral mesh,
file sizes, and the size of the edit report's 3D view (twin + 5 siblings).

Run: ``python benchmarks/bench_export.py [--edge-mm 2] [--out /tmp/bench_export]``.
Volume formats need the mesh extra (``pip install digital-siblings[mesh]``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from siblings.data.phantom import make_phantom
from siblings.io import write_label_map
from siblings.pipelines.export import export_maps
from siblings.report.viewer3d import viewer_html


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edge-mm", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_export"))
    args = parser.parse_args()
    twin, _ = make_phantom(0, size=64, seed=0)
    src = args.out / "twin.nii.gz"
    write_label_map(src, twin)
    for fmt in ("stl", "vtp", "vtu"):
        t0 = time.perf_counter()
        run = export_maps(src, args.out / fmt, fmt, edge_mm=args.edge_mm, overwrite=True)
        seconds = time.perf_counter() - t0
        rec = run["maps"]["twin"]
        folder = args.out / fmt / "twin"
        size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        worst = max(abs(t["volume_ml"] / t["voxel_volume_ml"] - 1) for t in rec["tissues"].values())
        line = (
            f"{fmt}: {seconds:.1f} s total, surfaces {rec['surface_seconds']:.2f} s, "
            f"{size:.1f} MB, all closed {all(t['closed'] for t in rec['tissues'].values())}, "
            f"all 2-manifold {all(t['manifold'] for t in rec['tissues'].values())}, "
            f"worst volume vs voxels {100 * worst:.2f}%"
        )
        if fmt == "vtu":
            q = json.loads((folder / "mesh_quality.json").read_text())
            line += (
                f"; mesh {rec['mesh_seconds']:.1f} s at {args.edge_mm} mm: {q['cells']} cells, "
                f"{q['points']} points, inverted {q['inverted_cells']}, edge median "
                f"{q['edge_mm']['median']:.2f} mm, min dihedral min/p1/median "
                f"{q['min_dihedral_deg']['min']:.1f}/{q['min_dihedral_deg']['p1']:.1f}/"
                f"{q['min_dihedral_deg']['median']:.1f} deg, radius ratio min/p1/median "
                f"{q['radius_ratio']['min']:.3f}/{q['radius_ratio']['p1']:.3f}/"
                f"{q['radius_ratio']['median']:.3f}"
            )
        print(line, flush=True)
    maps = [("twin", twin.data)] + [
        (f"sibling {i}", make_phantom(i, size=64, seed=0)[0].data) for i in range(1, 6)
    ]
    t0 = time.perf_counter()
    view = viewer_html(maps, twin.affine)
    print(
        f"3D view, twin + 5 maps at 64³: {len(view) / 1e6:.2f} MB, {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
