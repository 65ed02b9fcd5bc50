"""Quick-look plots of synthetic samples (matplotlib, Agg-safe; never calls ``plt.show``)."""

from __future__ import annotations

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def plot_orthogonal_slices(sample: dict, slice_index=None):
    """Three orthogonal slices through ``chi``, ``field`` and ``mask`` of one sample.

    Args:
        sample: dict with ``chi`` and ``field`` (ppm) and optionally ``mask``, each (X, Y, Z)
            (torch tensors or numpy arrays), as returned by :func:`qsmrep.synth.synthetic_sample`.
        slice_index: (i, j, k) slice positions; ``None`` means the centre.

    Returns:
        matplotlib Figure: rows chi / field / mask, columns the planes x = i, y = j, z = k
        (B0 along z, so the z = k plane shows the field's rotational symmetry and x/y planes
        its dipole lobes). chi and field share a symmetric colour range per row, in ppm.
    """
    from matplotlib.figure import Figure

    rows = [("chi", "χ (ppm)", "gray"), ("field", "B (ppm, ΔB/B0)", "RdBu_r"),
            ("mask", "mask", "gray")]
    rows = [r for r in rows if r[0] in sample]
    vols = {k: _np(sample[k]) for k, _, _ in rows}
    shape = next(iter(vols.values())).shape
    idx = tuple(s // 2 for s in shape) if slice_index is None else tuple(slice_index)
    fig = Figure(figsize=(10, 3.2 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (key, label, cmap) in enumerate(rows):
        v = vols[key].astype(np.float32)
        if key == "mask":
            vmin, vmax = 0.0, 1.0
        else:
            m = float(np.abs(v).max()) or 1.0
            vmin, vmax = -m, m
        planes = [v[idx[0], :, :], v[:, idx[1], :], v[:, :, idx[2]]]
        names = [f"x = {idx[0]}", f"y = {idx[1]}", f"z = {idx[2]}"]
        for c, (img, name) in enumerate(zip(planes, names)):
            ax = axes[r, c]
            im = ax.imshow(img.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{key}, {name}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes[r, :].tolist(), shrink=0.8, label=label)
    return fig
