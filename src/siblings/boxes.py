"""Bounding boxes of 3D label maps and masks: the one copy every layer uses.

Work on a map is often confined to the box around its non-background voxels (nothing
outside it forms a component, a contact or an overlap). :func:`bounding_box` finds that
box for one or several arrays on one grid (their union), optionally grown by ``pad``
voxels and clipped to the grid. It needs only NumPy and imports nothing of the package,
so every layer (data, diffusion, metrics, report, editing) can use it.

Example
-------
>>> import numpy as np
>>> from siblings.boxes import bounding_box
>>> lab = np.zeros((8, 8, 8), np.uint8); lab[2:4, 3, 5:7] = 4
>>> bounding_box(lab)
(slice(2, 4, None), slice(3, 4, None), slice(5, 7, None))
>>> bounding_box(lab, pad=2)
(slice(0, 6, None), slice(1, 6, None), slice(3, 8, None))
>>> bounding_box(np.zeros((8, 8, 8))) is None
True
"""

from __future__ import annotations

import numpy as np


def bounding_box(*arrays: np.ndarray, pad: int = 0) -> tuple[slice, slice, slice] | None:
    """Smallest box holding every non-zero voxel of ``arrays``, grown by ``pad``.

    Parameters
    ----------
    *arrays : one or more 3D arrays of one shape (label maps or masks); the box holds
        the union of their non-zero voxels.
    pad : voxels added on every side, clipped to the grid (default 0).

    Returns
    -------
    tuple of three slices, or None
        The box as index slices (``stop`` exclusive), or None when every array is all
        zero.

    Raises
    ------
    ValueError
        when an array is not 3D or the shapes differ.
    """
    if not arrays:
        raise ValueError("bounding_box needs at least one array")
    shape = np.shape(arrays[0])
    if len(shape) != 3:
        raise ValueError(f"expected a 3D label map, got shape {shape}")
    xs = yz = None
    for arr in arrays:
        arr = np.asarray(arr)
        if arr.shape != shape:
            raise ValueError(f"bounding_box of arrays of shapes {shape} and {arr.shape}")
        # Projections: reducing over the last two axes and over the first is fast.
        x, p = arr.any(axis=(1, 2)), arr.any(axis=0)
        xs, yz = (x, p) if xs is None else (xs | x, yz | p)
    if not xs.any():
        return None
    box = []
    for axis, hit in enumerate((xs, yz.any(axis=1), yz.any(axis=0))):
        idx = np.flatnonzero(hit)
        box.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, shape[axis])))
    return tuple(box)  # type: ignore[return-value]


__all__ = ["bounding_box"]
