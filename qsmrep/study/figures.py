"""The paper's figures, as plotting functions the notebooks call (matplotlib; nothing is shown or saved here).

Equations are drawn with matplotlib mathtext inside the figures, so the offline HTML report
needs no MathJax.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from qsmrep import registry

ACTIVATION_STYLE = {  # colour per activation, line style per width
    "elu": "#1b9e77", "leaky_relu": "#d95f02", "relu": "#7570b3",
    "gelu": "#e7298a", "silu": "#66a61e", "prelu": "#e6ab02", "mish": "#a6761d",
}
WIDTH_STYLE = dict(zip(registry.PAPER_CHANNELS, ("-", "--")))


def variant_label(activation: str, channels: int) -> str:
    """``"ELU 16 IC"``-style label of a variant."""
    return f"{registry.ACTIVATION_LABELS.get(activation, activation)} {channels} IC"


def plot_activations(leaky_slope: float = 0.2, elu_alpha: float = 1.0) -> Figure:
    """Figure 1: ReLU, leaky ReLU and ELU with their equations; identical for x > 0."""
    x = np.linspace(-3, 3, 601)
    curves = {
        "relu": (np.maximum(x, 0), r"ReLU: $f(x)=\max(0,\,x)$"),
        "leaky_relu": (np.where(x > 0, x, leaky_slope * x), rf"leaky ReLU: $f(x)=x$ if $x>0$, else ${leaky_slope:g}\,x$"),
        "elu": (np.where(x > 0, x, elu_alpha * np.expm1(np.minimum(x, 0))),
                rf"ELU: $f(x)=x$ if $x>0$, else ${elu_alpha:g}\,(e^{{x}}-1)$"),
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (name, (y, label)), ls in zip(curves.items(), ("-", "--", "-.")):
        ax.plot(x, y, color=ACTIVATION_STYLE[name], lw=2.2 if name == "relu" else 1.8, ls=ls, label=label)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.6", lw=0.8)
    ax.set(xlabel="x", ylabel="f(x)", title="Figure 1: activation functions (identical for x > 0)", ylim=(-1.5, 3.1))
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    return fig


def _band(ax, frame: pd.DataFrame, column: str, color: str, ls: str, label: str) -> None:
    """Mean over seeds as a line, the range over seeds (min to max) as a band when there is more than one seed.

    The range, not mean ± sd: every quantity drawn is non-negative, and a band that reaches below zero would
    show values no seed had."""
    grouped = frame.groupby("epoch")[column]
    mean, low, high, n = grouped.mean(), grouped.min(), grouped.max(), grouped.count()
    ax.plot(mean.index, mean.values, color=color, ls=ls, lw=1.6, label=label)
    if (n > 1).any():
        ax.fill_between(mean.index, low.values, high.values, color=color, alpha=0.18, lw=0)


#: a panel spanning more than this ratio between its largest and smallest positive value is drawn on a log axis
LOG_AXIS_RATIO = 30.0


def _log_if_wide(ax, values: pd.Series) -> bool:
    positive = values[values > 0]
    wide = len(positive) > 0 and positive.max() / positive.min() > LOG_AXIS_RATIO
    if wide:
        ax.set_yscale("log")
    return wide


def loss_text(lam: float = 1.0, chi_norm: str = "l1", field_norm: str = "l1", b0_axis: str = "k_z",
              field_target: str = "label") -> tuple[str, str, str]:
    """Mathtext of the loss with the configured norms and field target, the dipole kernel along B0, and a note."""
    from qsmrep.core.loss import NORM_SYMBOLS

    chi_term = NORM_SYMBOLS[chi_norm].format(r"\hat\chi-\chi")
    target = r"d\ast\chi" if field_target == "label" else "B"
    field_term = NORM_SYMBOLS[field_norm].format(r"d\ast\hat\chi-" + target)
    axis = b0_axis.replace("k_", "k_{") + "}" if b0_axis.startswith("k_") else r"k\cdot\hat{b}"
    names = {"l1": "mean absolute error (L1)", "mse": "mean squared error (L2²)"}
    note = (f"χ term: {names[chi_norm]}; field term: {names[field_norm]}; the paper's norms are not stated in its text")
    return (rf"$\mathcal{{L}}={chi_term}+\lambda\,{field_term}$",
            rf"$\lambda={lam:g}$;  $d\ast\cdot$: dipole convolution, $D(k)=\frac{{1}}{{3}}-\frac{{{axis}^2}}{{|k|^2}}$",
            note)


def plot_convergence(histories: pd.DataFrame, early_epoch: int | None = None, lam: float = 1.0, chi_norm: str = "l1",
                     field_norm: str = "l1", b0_axis: str = "k_z", field_target: str = "label", title: str = "") -> Figure:
    """Figure 2: (A) training loss, (B) validation loss, (C) validation mean NRMSE against epoch, (D) the loss.

    ``histories``: history.csv rows plus ``activation``, ``channels`` and ``seed``;
    several seeds of a variant are drawn as the mean with the range over seeds. The losses are drawn on log
    axes, the validation NRMSE on a log axis only when it spans more than :data:`LOG_AXIS_RATIO` (blown-up runs). Panel D writes the loss with the run's
    norms, λ, field target and B0 axis (``b0_axis`` from :attr:`qsmrep.core.physics.DipolePhysics.b0_axis_name`).
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [("train_loss", "A  training loss", "loss"), ("val_loss", "B  validation loss", "loss"),
              ("val_nrmse", "C  validation mean NRMSE", "NRMSE (%)")]
    for ax, (column, title_, ylabel) in zip(axes.flat, panels):
        for (activation, channels), frame in histories.groupby(["activation", "channels"], sort=False):
            _band(ax, frame, column, ACTIVATION_STYLE.get(activation, "k"), WIDTH_STYLE.get(channels, ":"),
                  variant_label(activation, channels))
        if early_epoch:
            ax.axvline(early_epoch, color="0.5", lw=0.8, ls=":")
        if column == "val_nrmse":
            log = _log_if_wide(ax, histories[column])
        else:
            ax.set_yscale("log")
            log = True
        ax.set(title=title_ + (" (log scale)" if log else ""), xlabel="epoch", ylabel=ylabel)
        ax.grid(alpha=0.25)
    axes[0, 0].legend(fontsize=8, frameon=False, ncol=2)
    ax = axes[1, 1]
    ax.axis("off")
    ax.set_title("D  loss function", loc="left")
    formula, kernel, note = loss_text(lam, chi_norm, field_norm, b0_axis, field_target)
    ax.text(0.02, 0.62, formula, fontsize=15, transform=ax.transAxes)
    ax.text(0.02, 0.38, kernel, fontsize=11, transform=ax.transAxes)
    ax.text(0.02, 0.18, note, fontsize=8, color="0.35", transform=ax.transAxes, wrap=True)
    fig.suptitle(title or "Figure 2: convergence of the six models (dotted line: early checkpoint)")
    fig.tight_layout()
    return fig


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.rot90(np.take(volume, index, axis=axis))


def display_label(per_map: pd.DataFrame, arm: str, activation: str, channels: int, epoch: int) -> str | None:
    """The checkpoint a reconstruction figure shows for a variant: of its seeds, the one whose mean test NRMSE is
    the median (the lower of the two middle ones for an even count), so the picture is a typical run, not seed 0.
    None when the variant has no rows at ``epoch``."""
    rows = per_map[(per_map.arm == arm) & (per_map.activation == activation) & (per_map.channels == channels)
                   & (per_map.epoch == epoch)]
    if not len(rows):
        return None
    by_seed = rows.groupby("label").nrmse.mean().sort_values(kind="stable")
    return str(by_seed.index[(len(by_seed) - 1) // 2])


def map_metrics(per_map: pd.DataFrame, label: str, test_map: int) -> dict:
    """NRMSE and SSIM (and the seed) of checkpoint ``label`` on test map ``test_map``: the numbers of that map."""
    row = per_map[(per_map["label"] == label) & (per_map["map"] == test_map)].iloc[0]
    return {"nrmse": float(row.nrmse), "ssim": float(row.ssim), "seed": int(row.seed)}


def reconstruction_panels(per_map: pd.DataFrame, arrays, arm: str, variants, epoch: int, test_map: int = 0,
                          baselines=()) -> tuple[dict, dict]:
    """(title → prediction, title → metrics of that map) for :func:`plot_reconstructions`: each variant's
    :func:`display_label` checkpoint and each baseline, on test map ``test_map`` (``arrays``: the evaluation's
    ``arrays.npz``, keys ``<label>/pred_<map>``). Variants without a checkpoint at ``epoch`` are left out."""
    preds, metrics = {}, {}
    for activation, channels in variants:
        label = display_label(per_map, arm, activation, channels, epoch)
        if label is not None:
            name = variant_label(activation, channels)
            preds[name], metrics[name] = arrays[f"{label}/pred_{test_map}"], map_metrics(per_map, label, test_map)
    for name in baselines:
        preds[name] = arrays[f"{name}/pred_{test_map}"]
        metrics[name] = {k: v for k, v in map_metrics(per_map, name, test_map).items() if k != "seed"}
    return preds, metrics


def _b0_arrow(ax, axis: int, b0_dir=(0.0, 0.0, 1.0)) -> None:
    """Mark B0 on a slice drawn by :func:`_slice`: the first remaining axis runs right, the second up."""
    right, up = (float(b0_dir[k]) for k in range(3) if k != axis)
    if np.hypot(right, up) < 0.2 * np.linalg.norm(b0_dir):
        ax.text(0.06, 0.9, "B0 ⊙ (through the slice)", color="yellow", fontsize=7, transform=ax.transAxes)
        return
    ax.annotate("", xy=(0.12 + 0.1 * right, 0.78 + 0.1 * up), xytext=(0.12, 0.78), xycoords="axes fraction",
                arrowprops=dict(arrowstyle="->", color="yellow", lw=1.5))
    ax.text(0.2, 0.8, "B0", color="yellow", fontsize=8, transform=ax.transAxes)


def plot_reconstructions(truth: np.ndarray, preds: dict[str, np.ndarray], metrics: dict[str, dict], mask: np.ndarray,
                         field: np.ndarray | None = None, axis: int = 0, index: int | None = None,
                         title: str = "", chi_range: float = 0.6, diff_range: float = 0.3,
                         b0_dir=(0.0, 0.0, 1.0)) -> Figure:
    """Reconstructions (top) and differences to the ground truth (bottom) on one slice of one test map.

    Used for Figure 3 (32-channel models, final) and Figure 4 (16-channel ELU vs ReLU, early; with
    ``field`` the input field is drawn under the ground truth). ``metrics[label]`` holds ``nrmse`` and ``ssim``
    of the map shown (:func:`map_metrics`), printed above each panel, and optionally its ``seed``. χ in ppm;
    the ground-truth panel marks the B0 direction.
    """
    index = truth.shape[axis] // 2 if index is None else index
    labels = list(preds)
    fig, axes = plt.subplots(2, len(labels) + 1, figsize=(3.0 * (len(labels) + 1), 6.6), squeeze=False,
                             layout="constrained")
    chi_kw = dict(cmap="gray", vmin=-chi_range, vmax=chi_range)
    diff_kw = dict(cmap="RdBu_r", vmin=-diff_range, vmax=diff_range)
    image = axes[0, 0].imshow(_slice(truth * mask, axis, index), **chi_kw)
    axes[0, 0].set_title("ground truth χ", fontsize=9)
    _b0_arrow(axes[0, 0], axis, b0_dir)
    diff = None
    if field is not None:
        fimage = axes[1, 0].imshow(_slice(field, axis, index), cmap="RdBu_r", vmin=-0.3, vmax=0.3)
        axes[1, 0].set_title("input field B", fontsize=9)
        fig.colorbar(fimage, ax=axes[1, 0], shrink=0.8, label="ppm")
    else:
        axes[1, 0].axis("off")
    for column, label in enumerate(labels, start=1):
        pred = preds[label] * mask
        axes[0, column].imshow(_slice(pred, axis, index), **chi_kw)
        m = metrics.get(label, {})
        seed = f", seed {m['seed']}" if "seed" in m else ""
        axes[0, column].set_title(f"{label}{seed}\nNRMSE {m.get('nrmse', float('nan')):.1f} %  "
                                  f"SSIM {m.get('ssim', float('nan')):.3f}", fontsize=9)
        diff = axes[1, column].imshow(_slice(pred - truth * mask, axis, index), **diff_kw)
        axes[1, column].set_title(f"difference {label}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[0, :]), shrink=0.8, label="χ (ppm)")
    if diff is not None:
        fig.colorbar(diff, ax=list(axes[1, 1:]), shrink=0.8, label="χ̂ − χ (ppm)")
    fig.suptitle(title)
    return fig


def plot_dead_units(histories: pd.DataFrame, title: str = "") -> Figure:
    """Dead units against epoch, per variant: (A) by the slope criterion of each activation
    (:mod:`qsmrep.run.units`; runs trained before it have none), (B) channels never positive on validation map 0."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), sharey=True)
    panels = [("zero_gradient_fraction", "A  dead: slope < 1 % of its largest on every voxel"),
              ("dead_fraction", "B  never positive (dead only for ReLU)")]
    for ax, (column, panel) in zip(axes, panels):
        if column in histories and histories[column].notna().any():
            for (activation, channels), frame in histories.groupby(["activation", "channels"], sort=False):
                _band(ax, frame, column, ACTIVATION_STYLE.get(activation, "k"), WIDTH_STYLE.get(channels, ":"),
                      variant_label(activation, channels))
            ax.legend(fontsize=8, frameon=False, ncol=2)
        else:
            ax.text(0.5, 0.5, "not recorded by these runs", ha="center", transform=ax.transAxes, color="0.4")
        ax.set(xlabel="epoch", title=panel)
        ax.grid(alpha=0.25)
    axes[0].set_ylabel("fraction of channels (validation map 0)")
    fig.suptitle("Dead units" + (f": {title}" if title else ""))
    fig.tight_layout()
    return fig


def plot_sweep(histories: pd.DataFrame, metrics: pd.DataFrame) -> Figure:
    """Extended sweep: (A) validation NRMSE against epoch per activation setting, (B) test NRMSE and SSIM."""
    fig, (ax_curve, ax_nrmse) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(dict.fromkeys(metrics["name"])) if len(metrics) else list(dict.fromkeys(histories["name"]))
    cmap = plt.get_cmap("tab20")
    for number, name in enumerate(names):
        frame = histories[histories.name == name]
        _band(ax_curve, frame, "val_nrmse", cmap(number % 20), "-", name)
    ax_curve.set(title="A  validation mean NRMSE (16 channels)", xlabel="epoch", ylabel="NRMSE (%)")
    ax_curve.grid(alpha=0.25)
    ax_curve.legend(fontsize=7, frameon=False, ncol=2)
    summary = metrics.groupby("name", sort=False)[["nrmse", "ssim"]].agg(["mean", "std"]).reindex(names)
    x = np.arange(len(names))
    ax_nrmse.bar(x, summary[("nrmse", "mean")], yerr=summary[("nrmse", "std")].fillna(0), color=[cmap(i % 20) for i in x])
    ax_nrmse.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax_nrmse.set(title="B  test NRMSE (bars, %) and SSIM (dots) after the full budget", ylabel="NRMSE (%)")
    ax_ssim = ax_nrmse.twinx()
    ax_ssim.plot(x, summary[("ssim", "mean")], "ko", ms=4)
    ax_ssim.set_ylabel("SSIM")
    fig.suptitle("Extended activation sweep")
    fig.tight_layout()
    return fig


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
            (torch tensors or numpy arrays), as returned by :func:`qsmrep.core.synth.synthetic_sample`.
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
