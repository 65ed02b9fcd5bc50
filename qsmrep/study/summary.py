"""The report's first paragraph: how the networks compare with the classical baselines, and which claims hold.

Numbers come from the evaluation's tables: per-map test metrics (noise-free, and with field noise when
evaluated) and each arm's claims table (:func:`qsmrep.study.claims.evaluate_claims`).
"""

from __future__ import annotations

import pandas as pd

from qsmrep import registry
from qsmrep.study.claims import NOT_REPRODUCED, REPRODUCED, UNDECIDED
from qsmrep.study.curves import BLOWUP_NRMSE

BASELINE_MODELS = ("TKD", "Tikhonov")


def network_table(per_map: pd.DataFrame, final_epoch: int) -> pd.DataFrame:
    """Per arm and variant at the final epoch: mean test NRMSE over maps and seeds, and the range over seeds."""
    final = per_map[(per_map.epoch == final_epoch) & ~per_map.model.isin(BASELINE_MODELS)]
    per_seed = final.groupby(["arm", "activation", "channels", "seed"]).nrmse.mean()
    table = per_seed.groupby(["arm", "activation", "channels"]).agg(["mean", "min", "max", "count"])
    return table.rename(columns={"count": "seeds"}).reset_index().sort_values("mean", ignore_index=True)


def baseline_nrmse(per_map: pd.DataFrame) -> dict[str, float]:
    """Mean test NRMSE of each classical baseline present in ``per_map``."""
    rows = per_map[per_map.model.isin(BASELINE_MODELS)]
    return rows.groupby("model").nrmse.mean().to_dict()


def _comparison(per_map: pd.DataFrame, final_epoch: int, where: str) -> str:
    networks, base = network_table(per_map, final_epoch), baseline_nrmse(per_map)
    closed = ", ".join(f"{m} {v:.1f} %" for m, v in sorted(base.items()))
    if not len(networks):
        return (f"On the {where} test maps the classical inversions reach {closed}; no network was evaluated on them "
                "here." if base else "")
    sound = networks[networks["mean"] <= BLOWUP_NRMSE]
    best = networks.iloc[0]
    name = f"{registry.variant_name(best.activation, best.channels)} ({best.arm})"
    text = (f"On the {where} test maps the best network, {name}, reaches {best['mean']:.1f} % test NRMSE "
            f"(mean over maps and {int(best.seeds)} seed(s); its seeds {best['min']:.1f}–{best['max']:.1f} %); the "
            f"networks range from {sound['mean'].min():.1f} to {sound['mean'].max():.1f} %"
            + (f" ({len(networks) - len(sound)} variant(s) blown up above {BLOWUP_NRMSE:g} % aside)"
               if len(sound) < len(networks) else ""))
    if base:
        ratio = best["mean"] / min(base.values())
        text += (f". The classical inversions, each with its parameter chosen on the validation maps, reach {closed}: "
                 f"the best network's error is {ratio:.1f}× the best baseline's")
    return text + "."


def claims_line(claims: dict[str, pd.DataFrame]) -> str:
    """Per arm: the claims reproduced, not reproduced, undecided and not testable."""
    parts = []
    for arm, table in claims.items():
        groups = {"reproduced": table.id[table.verdict == REPRODUCED], "not reproduced": table.id[table.verdict == NOT_REPRODUCED],
                  "undecided": table.id[table.verdict == UNDECIDED],
                  "not testable": table.id[table.verdict.str.startswith("not testable")]}
        listed = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in groups.items() if len(ids))
        parts.append(f"**{registry.ARM_LABELS.get(arm, arm)}**: {listed}")
    return "Claims — " + ". ".join(parts) + "."


def summary_markdown(per_map: pd.DataFrame, claims: dict[str, pd.DataFrame], final_epoch: int,
                     noisy: pd.DataFrame | None = None) -> str:
    """The report's summary paragraph (markdown)."""
    lines = [_comparison(per_map, final_epoch, "paper's noise-free")]
    if noisy is not None and len(noisy):
        lines.append(_comparison(noisy, final_epoch, f"noisy ({noisy.test_set.iloc[0]})"))
    lines.append(claims_line(claims))
    return "\n\n".join(line for line in lines if line)
