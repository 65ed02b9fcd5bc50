"""Reading training curves: where a curve ends, when it first reaches a level, per-variant means.

A *curve* is a pandas Series indexed by epoch (validation NRMSE in percent, losses); a *history*
table has one row per (activation, channels, seed, epoch) with the columns of ``history.csv``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: validation NRMSE (%) above which a finished run counts as diverged: ten times a zero prediction's 100 %
BLOWUP_NRMSE = 1000.0
#: a curve has levelled off (claim C1's rule) when its end level is below this fraction of its first value ...
LEVEL_DROP = 0.5
#: ... and moved less than this, relative, from the median of the 20 % of epochs before the last 20 %
LEVEL_MOVING = 0.15


def end_level(curve: pd.Series) -> float:
    """Where a training curve ends: the median over its last 20 % of epochs (at least one).

    A single-epoch spike at the very end (seen with ReLU16: validation NRMSE 52 → 123 % in the last
    epoch of one seed) moves the last value but not this level."""
    return float(curve.iloc[-max(1, len(curve) // 5):].median())


def epochs_to_reach(curve: pd.Series, threshold: float) -> float:
    """First epoch at which ``curve`` is ≤ ``threshold`` (inf if never)."""
    hit = curve[curve <= threshold]
    return float(hit.index.min()) if len(hit) else float("inf")


def end_levels(histories: pd.DataFrame, column: str) -> pd.Series:
    """Per variant (activation, channels): mean over seeds of each seed's :func:`end_level` of ``column``."""
    ends = histories.sort_values("epoch").groupby(["activation", "channels", "seed"])[column].agg(end_level)
    return ends.groupby(["activation", "channels"]).mean()


def final_values(histories: pd.DataFrame, column: str) -> pd.Series:
    """Per variant: mean over seeds of ``column`` at each seed's last epoch."""
    last = histories.sort_values("epoch").groupby(["activation", "channels", "seed"]).tail(1)
    return last.groupby(["activation", "channels"])[column].mean()


def mean_curve(histories: pd.DataFrame, activation: str, channels: int, column: str) -> pd.Series:
    """``column`` of one variant against epoch, mean over its seeds."""
    frame = histories[(histories.activation == activation) & (histories.channels == channels)]
    return frame.groupby("epoch")[column].mean()


def levelled_off(curve: pd.Series) -> dict:
    """Claim C1's rule on one curve (indexed by epoch): with w = max(1, n // 5) epochs,
    end = median of the last w values, before = median of the w values before them,
    moving = |end − before| / before; levelled off when every value is finite, end / first < LEVEL_DROP and
    moving < LEVEL_MOVING. Returns end, first, moving (a fraction) and ``levelled_off``."""
    window = max(1, len(curve) // 5)
    end = end_level(curve)
    before = float(curve.iloc[-2 * window:-window].median()) if len(curve) > window else float("nan")
    moving = abs(end - before) / max(abs(before), 1e-12)
    first = float(curve.iloc[0])
    ok = bool(np.isfinite(curve).all() and end / first < LEVEL_DROP and moving < LEVEL_MOVING)
    return {"end": end, "first": first, "moving": moving, "levelled_off": ok}


def convergence_by_run(histories: pd.DataFrame, column: str = "val_nrmse") -> pd.DataFrame:
    """One row per run (arm where present, activation, channels, seed): :func:`levelled_off` of its ``column``
    curve, with ``end``, ``first`` and ``change_last_20pct`` in the curve's units / percent."""
    keys = [k for k in ("arm", "activation", "channels", "seed") if k in histories]
    rows = []
    for key, run in histories.sort_values("epoch").groupby(keys, sort=True):
        verdict = levelled_off(run.set_index("epoch")[column])
        rows.append({**dict(zip(keys, key)), "epochs": len(run), "first": verdict["first"], "end": verdict["end"],
                     "change_last_20pct": 100 * verdict["moving"], "levelled_off": verdict["levelled_off"]})
    return pd.DataFrame(rows, columns=[*keys, "epochs", "first", "end", "change_last_20pct", "levelled_off"])


def convergence_sentence(table: pd.DataFrame) -> str:
    """Per variant, in how many seeds its run levelled off, and which runs did not (from :func:`convergence_by_run`)."""
    if not len(table):
        return "No runs."
    counts = table.groupby(["activation", "channels"], sort=False).levelled_off.agg(["sum", "count"])
    text = "Levelled off (C1's rule, per run): " + ", ".join(
        f"{a}{c} {int(k)} of {n}" for (a, c), (k, n) in counts.iterrows()) + ". "
    missed = table[~table.levelled_off]
    if not len(missed):
        return text + "Every run levelled off."
    return text + "Did not: " + ", ".join(f"{r.activation}{r.channels} seed {r.seed}" for r in missed.itertuples()) + "."
