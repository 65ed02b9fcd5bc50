"""Reading training curves: where a curve ends, when it first reaches a level, per-variant means.

A *curve* is a pandas Series indexed by epoch (validation NRMSE in percent, losses); a *history*
table has one row per (activation, channels, seed, epoch) with the columns of ``history.csv``.
"""

from __future__ import annotations

import pandas as pd

#: validation NRMSE (%) above which a finished run counts as diverged: ten times a zero prediction's 100 %
BLOWUP_NRMSE = 1000.0


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
