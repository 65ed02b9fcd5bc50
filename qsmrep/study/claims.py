"""Evidence for the paper's claims C1–C8 from one arm's histories and test metrics, the arms side by
side, and the default arm's evidence.

Each claim is decided by a stated rule on this run's numbers (single seed unless several are
given: then on the seed means). The thresholds are choices of this reproduction, written next to
each verdict in the report; the paper gives none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from qsmrep import registry
from qsmrep.run.units import DEAD_COLUMN
from qsmrep.study.collect import MACHINE_NOT_RECORDED, MACHINES_JOINED, divergences
from qsmrep.study.curves import (BLOWUP_NRMSE, convergence_by_run, convergence_sentence, end_levels,
                                 epochs_to_reach, final_values, levelled_off, mean_curve, LEVEL_DROP, LEVEL_MOVING)
from qsmrep.study.stats import C7_MATCH, interval_verdicts, seed_statistics

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable at this scale"
NOT_TESTABLE_DIVERGED, NOT_RECORDED = "not testable: diverged", "not testable: not recorded"
NOT_TESTABLE_MACHINES = "not testable: timed on different machines"
UNDECIDED = "undecided (the seed interval reaches across the boundary)"
VARIANTS = registry.PAPER_VARIANTS
SMALL, LARGE = registry.PAPER_CHANNELS
ACTS = registry.PAPER_ACTIVATIONS
BEST = registry.RECOMMENDED_ACTIVATION  # the paper's recommendation (ELU)
OTHERS = tuple(a for a in ACTS if a != BEST)
variant_key = registry.variant_name


def _diverged_text(rows: pd.DataFrame) -> str:
    kinds = {"validation": f", validation NRMSE above {BLOWUP_NRMSE:g} % with a finite training loss", "non-finite": ""}
    return "; ".join(f"{variant_key(r.activation, r.channels)} seed {r.seed} at epoch {int(r.diverged_epoch)}"
                     + kinds.get(getattr(r, "diverged_kind", ""), "")
                     + (f" (last val NRMSE before it {r.last_finite_val_nrmse:.1f} %)"
                        if "last_finite_val_nrmse" in rows and pd.notna(r.last_finite_val_nrmse) else "")
                     for r in rows.itertuples())


@dataclass
class Evidence:
    """One arm's numbers: histories, per-map test metrics, the two checkpoints' epochs, costs and divergences."""

    histories: pd.DataFrame
    metrics: pd.DataFrame
    early_epoch: int
    final_epoch: int
    costs: pd.DataFrame | None
    diverged: pd.DataFrame

    def test(self, activation: str, channels: int, epoch: int, column: str) -> float:
        """Mean test ``column`` of a variant at ``epoch`` over its maps and seeds (NaN when absent)."""
        m = self.metrics
        rows = m[(m.activation == activation) & (m.channels == channels) & (m.epoch == epoch)]
        return float(rows[column].mean()) if len(rows) else float("nan")

    def curve(self, activation: str, channels: int, column: str) -> pd.Series:
        return mean_curve(self.histories, activation, channels, column)

    def diverged_among(self, needed, before: int | None = None) -> pd.DataFrame:
        """The divergences of the variants ``needed`` (at or before epoch ``before``, when given)."""
        d = self.diverged
        hit = d[np.array([(a, c) in needed for a, c in zip(d.activation, d.channels)], dtype=bool)]
        return hit[hit.diverged_epoch <= before] if before is not None and len(hit) else hit


def _c1(e: Evidence) -> tuple[str, bool]:
    parts, ok = [], True
    for a, c in VARIANTS:
        verdict = levelled_off(e.curve(a, c, "val_nrmse"))
        ok &= verdict["levelled_off"]
        parts.append(f"{variant_key(a, c)}: end level {verdict['end']:.1f} % (start {verdict['first']:.1f} %), change "
                     f"over the last 20 % of epochs {100 * verdict['moving']:.1f} %")
    return "; ".join(parts) + ". " + convergence_sentence(convergence_by_run(e.histories)), ok


def _c2(e: Evidence) -> tuple[str, bool]:
    finals = {a: end_levels(e.histories, "val_nrmse")[(a, SMALL)] for a in ACTS}
    threshold = 1.1 * max(finals.values())
    reach = {a: epochs_to_reach(e.curve(a, SMALL, "val_nrmse"), threshold) for a in ACTS}
    at_early = {a: e.curve(a, SMALL, "val_nrmse").get(e.early_epoch, np.nan) for a in ACTS}
    ok = reach[BEST] < min(reach[a] for a in OTHERS) and at_early[BEST] < min(at_early[a] for a in OTHERS)
    return (f"epochs to val NRMSE ≤ {threshold:.1f} %: " + ", ".join(f"{a} {reach[a]:g}" for a in reach)
            + f"; val NRMSE at epoch {e.early_epoch}: " + ", ".join(f"{a} {at_early[a]:.1f} %" for a in at_early)), ok


def _c3(e: Evidence) -> tuple[str, bool]:
    final_loss = end_levels(e.histories, "val_loss")
    weak = np.mean([final_loss[(a, SMALL)] for a in OTHERS])
    rest = np.mean([final_loss[(BEST, SMALL)]] + [final_loss[(a, LARGE)] for a in ACTS])
    ratio = weak / rest
    return (f"end-level val loss ratio (ReLU{SMALL}, leaky{SMALL}) / (ELU{SMALL} and {LARGE}-channel models) = {ratio:.2f}",
            ratio >= 1.5)


def _c4(e: Evidence) -> tuple[str, bool]:
    n32 = {a: e.test(a, LARGE, e.final_epoch, "nrmse") for a in ACTS}
    spread = (max(n32.values()) - min(n32.values())) / np.mean(list(n32.values()))
    return ("test NRMSE: " + ", ".join(f"{a} {v:.1f} %" for a, v in n32.items()) + f"; relative spread {100 * spread:.0f} %",
            spread <= 0.10)


def _c5(e: Evidence) -> tuple[str, bool]:
    n32 = {a: e.test(a, LARGE, e.final_epoch, "nrmse") for a in ACTS}
    s32 = {a: e.test(a, LARGE, e.final_epoch, "ssim") for a in ACTS}
    ok = n32[BEST] == min(n32.values()) and s32[BEST] == max(s32.values())
    return "test NRMSE / SSIM: " + ", ".join(f"{a} {n32[a]:.1f} % / {s32[a]:.3f}" for a in ACTS), ok


def _c6(e: Evidence) -> tuple[str, bool]:
    elu = {m: e.test(BEST, SMALL, e.early_epoch, m) for m in ("nrmse", "ssim")}
    relu = {m: e.test("relu", SMALL, e.early_epoch, m) for m in ("nrmse", "ssim")}
    ok = elu["nrmse"] < relu["nrmse"] and elu["ssim"] > relu["ssim"]
    return (f"ELU{SMALL} {elu['nrmse']:.1f} % / {elu['ssim']:.3f}; ReLU{SMALL} {relu['nrmse']:.1f} % / {relu['ssim']:.3f}",
            ok)


def _c7(e: Evidence) -> tuple[str, bool, bool | None]:
    """(evidence, the NRMSE ratios hold, the training time to target holds): the time is not a per-seed quantity.
    Where the two models were timed on different machines (the cost table's ``machine``) the time is that of
    their steps timed again on one (``seconds_to_target_here``), or None where the table has none."""
    ratio = {a: e.test(a, SMALL, e.final_epoch, "nrmse") / e.test(a, LARGE, e.final_epoch, "nrmse") for a in ACTS}
    ok, faster = ratio[BEST] <= C7_MATCH and ratio[BEST] < min(ratio[a] for a in OTHERS), True
    text = (f"test NRMSE {SMALL}/{LARGE}-channel ratio: " + ", ".join(f"{a} {ratio[a]:.2f}" for a in ACTS))
    if e.costs is not None and len(e.costs) and "seconds_to_target" in e.costs:
        rows = {c: e.costs[(e.costs.activation == BEST) & (e.costs.channels == c)].iloc[0] for c in registry.PAPER_CHANNELS}
        t16, t32 = rows[SMALL].seconds_to_target, rows[LARGE].seconds_to_target
        faster = bool(t16 < t32)
        text += (f"; training time of ELU{SMALL} / ELU{LARGE} to the arm's target validation NRMSE "
                 f"({rows[SMALL].target_nrmse:.1f} %): {t16:.0f} / {t32:.0f} s; parameters "
                 f"{rows[SMALL].params / 1e6:.1f} M / {rows[LARGE].params / 1e6:.1f} M")
        machines = {c: rows[c].get("machine", MACHINE_NOT_RECORDED) for c in registry.PAPER_CHANNELS}
        if machines[SMALL] != machines[LARGE] or MACHINES_JOINED in machines[SMALL]:
            text += f"; but ELU{SMALL} was timed on {machines[SMALL]}, ELU{LARGE} on {machines[LARGE]}"
            if "seconds_to_target_here" not in e.costs:
                faster = None
                text += ": the times are not compared"
            else:  # a variant that never reached the target (NaN) is not the faster one
                here = {c: rows[c].seconds_to_target_here for c in registry.PAPER_CHANNELS}
                faster = bool(here[SMALL] < here[LARGE])
                text += (f"; their iterations to the target × a training step timed again on one machine "
                         f"({rows[SMALL].timed_here_on}): {here[SMALL]:.0f} / {here[LARGE]:.0f} s")
    else:
        text += "; no cost table (time to target not judged)"
    return text, ok, faster


def _c8(e: Evidence) -> tuple[str, bool]:
    if DEAD_COLUMN not in e.histories or e.histories[DEAD_COLUMN].isna().all():
        raise _NotRecorded("these runs recorded only channels that were never positive (trained before the "
                           "dead-unit criterion per activation); the never-positive fractions are in the dead-unit table")
    dead = final_values(e.histories, DEAD_COLUMN)
    relu_dead = max(dead[("relu", c)] for c in registry.PAPER_CHANNELS)
    best_dead = max(dead[(BEST, c)] for c in registry.PAPER_CHANNELS)
    text = "final dead-unit fraction: " + ", ".join(f"{variant_key(a, c)} {100 * dead[(a, c)]:.1f} %" for a, c in VARIANTS)
    if "dead_fraction" in e.histories:
        never = final_values(e.histories, "dead_fraction")
        text += "; never positive: " + ", ".join(f"{variant_key(a, c)} {100 * never[(a, c)]:.1f} %" for a, c in VARIANTS)
    return text, relu_dead >= 0.05 and relu_dead >= 2 * best_dead


class _NotRecorded(Exception):
    """A claim's evidence was not recorded by these runs (the message says what is missing)."""


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, its rule, the variants it needs (and up to which epoch), and how it is judged."""

    id: str
    claim: str
    rule: str
    needed: tuple
    judge: Callable[[Evidence], tuple]  # → (evidence text, verdict of the seed means[, conditions without seeds])
    early: bool = False  # needs the models only up to the early checkpoint


def claims(early_epoch: int) -> list[Claim]:
    """The paper's claims C1–C8 with this reproduction's rules (the early epoch appears in C6's text)."""
    small, large = tuple((a, SMALL) for a in ACTS), tuple((a, LARGE) for a in ACTS)
    both = tuple((a, c) for a in ("relu", BEST) for c in registry.PAPER_CHANNELS)
    return [
        Claim("C1", "all six models converge within the budget",
              "every validation-NRMSE curve's end level (median over the last 20 % of epochs) is below "
              f"{100 * LEVEL_DROP:g} % of its first value and differs < {100 * LEVEL_MOVING:g} % from the median of the "
              "20 % of epochs before (validation NRMSE inside the masks, not the loss over full maps that are mostly "
              "background; until 2026-12-03 the loss); judged on the mean curve over seeds, each run's verdict by the "
              "same rule in the evidence",
              VARIANTS, _c1),
        Claim("C2", f"{SMALL}-channel ELU reaches low validation loss/NRMSE earlier than the other {SMALL}-channel models",
              f"ELU{SMALL} strictly first to reach 1.1 × the worst {SMALL}-channel end level (median val NRMSE over "
              "the last 20 % of epochs), and lowest at the early epoch", small, _c2),
        Claim("C3", f"{SMALL}-channel ReLU and leaky-ReLU models end with about twice the validation loss of the others",
              "ratio ≥ 1.5, end level = median over the last 20 % of epochs (the validation loss, as the paper's claim "
              "says; over full maps, mostly background, it can rank models otherwise than the validation NRMSE)",
              VARIANTS, _c3),
        Claim("C4", f"all {LARGE}-channel models reach similar metrics after the full budget",
              "(max − min)/mean of test NRMSE ≤ 10 %", large, _c4),
        Claim("C5", f"among {LARGE}-channel models after the full budget ELU has the best NRMSE and SSIM",
              f"ELU{LARGE} lowest mean NRMSE and highest mean SSIM", large, _c5),
        Claim("C6", f"at the early checkpoint (epoch {early_epoch}) {SMALL}-channel ELU beats {SMALL}-channel ReLU in "
              "NRMSE and SSIM", "lower mean test NRMSE and higher mean test SSIM", ((BEST, SMALL), ("relu", SMALL)),
              _c6, early=True),
        Claim("C7", f"ELU lets the {SMALL}-channel model match the {LARGE}-channel one with less memory and time",
              f"ELU{SMALL} test NRMSE ≤ {C7_MATCH:g} × ELU{LARGE}'s, ELU's {SMALL}/{LARGE} ratio below every other "
              f"activation's, and ELU{SMALL} reaches the target validation NRMSE in less training time than ELU{LARGE} "
              "(until 2026-12-03: fewer parameters and less time per epoch, which every small model has)",
              VARIANTS, _c7),
        Claim("C8", "ReLU networks lose units to dying ReLU; ELU does not",
              "max ReLU dead fraction ≥ 5 % and ≥ 2 × ELU's; a unit is dead when its activation's slope stays below "
              "1 % of its largest slope on every voxel of validation map 0 (ReLU: never positive; ELU: saturated, "
              "input below ln 0.01; leaky ReLU: never) — a measured precondition, not proof of the causal explanation "
              "(until 2026-12-03: never positive, for every activation)", both, _c8),
    ]


def evaluate_claims(histories: pd.DataFrame, metrics: pd.DataFrame, early_epoch: int, final_epoch: int,
                    costs: pd.DataFrame | None = None, status: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim: id, claim, rule, evidence (numbers of this run), verdict — for one arm.

    ``histories``: history.csv rows with activation, channels, seed columns; ``metrics``: per-map
    test metrics with activation, channels, epoch; ``costs``: optional per-variant table with
    ``params``, ``seconds_per_epoch``, ``peak_mem_mb``; ``status``: optional run-status table
    (:func:`qsmrep.study.collect.run_status_table`). A claim that needs a model that diverged on any seed
    (before the checkpoint it needs) is ``not testable: diverged``, naming the run, epoch and last
    finite validation NRMSE.
    """
    have = {(a, c) for a, c in histories[["activation", "channels"]].drop_duplicates().itertuples(index=False)}
    missing = [variant_key(*v) for v in VARIANTS if v not in have]
    if missing:
        return pd.DataFrame([{"id": "all", "claim": "all claims compare the six variants",
                              "evidence": f"missing variants: {', '.join(missing)}", "rule": "-", "verdict": NOT_TESTABLE}])
    evidence = Evidence(histories, metrics, early_epoch, final_epoch, costs, divergences(status))
    seeds = histories.seed.nunique() if "seed" in histories else 1
    by_interval = interval_verdicts(seed_statistics(histories, metrics, early_epoch, final_epoch, status)) \
        if seeds > 1 else {}
    rows = []
    for claim in claims(early_epoch):
        rows.append({"id": claim.id, "claim": claim.claim, "rule": claim.rule,
                     **_judge(claim, evidence, by_interval, early_epoch)})
    return pd.DataFrame(rows)


def _judge(claim: Claim, evidence: Evidence, by_interval: dict, early_epoch: int) -> dict:
    """Evidence text and verdict of one claim. With several seeds, a claim that has per-seed quantities
    (:func:`qsmrep.study.stats.seed_statistics`) is decided by their 95 % intervals, not by the seed means."""
    hit = evidence.diverged_among(claim.needed, early_epoch if claim.early else None)
    if len(hit):
        return {"evidence": f"diverged: {_diverged_text(hit)}", "verdict": NOT_TESTABLE_DIVERGED}
    try:
        text, ok, *unpaired = claim.judge(evidence)  # unpaired: a condition without per-seed values (C7's time)
    except _NotRecorded as missing:
        return {"evidence": str(missing), "verdict": NOT_RECORDED}
    if not ok or False in unpaired:
        by_means = NOT_REPRODUCED
    else:  # None: a condition that cannot be judged here (C7's times from two machines)
        by_means = NOT_TESTABLE_MACHINES if None in unpaired else REPRODUCED
    if claim.id not in by_interval:
        return {"evidence": text, "verdict": by_means}
    decided = by_interval[claim.id]
    text += f"; decided by the seeds' 95 % intervals (the means alone would say {by_means})"
    if decided is False or False in unpaired:
        return {"evidence": text, "verdict": NOT_REPRODUCED}
    if None in unpaired:
        return {"evidence": text, "verdict": NOT_TESTABLE_MACHINES}
    return {"evidence": text, "verdict": REPRODUCED if decided else UNDECIDED}


def compare_arms(claims: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, str]:
    """Verdicts of each claim side by side per arm, and one paragraph saying what the arm changes.

    ``claims``: arm → :func:`evaluate_claims` table; the table has the id, the claim's text and a verdict column
    per arm. The paragraph lists the claims whose verdict differs between the arms (with both verdicts) and those
    that agree."""
    arms = list(claims)
    table = pd.concat([c.set_index("id")["verdict"].rename(arm) for arm, c in claims.items()], axis=1).reset_index()
    first = next(iter(claims.values()))
    if "claim" in first:  # the claim's text beside its id
        table.insert(1, "claim", table["id"].map(first.set_index("id")["claim"]))
    if len(arms) < 2:
        return table, "Only one arm was run; no comparison."
    changed = table[table[arms].nunique(axis=1) > 1]
    same = table[table[arms].nunique(axis=1) == 1]
    names = registry.ARM_PHRASES
    parts = [f"{r.id} ({', '.join(f'{getattr(r, a)} {names.get(a, a)}' for a in arms)})" for r in changed.itertuples()]
    text = ("Normalisation changes the verdict of " + ("; ".join(parts) if parts else "no claim") + ". "
            + (f"The verdicts of {', '.join(same.id)} are the same in both arms." if len(same) else ""))
    return table, text


def default_arm_evidence(status: pd.DataFrame) -> str:
    """One paragraph: which arm ``./run_all.sh`` trains by default (:data:`qsmrep.registry.DEFAULT_ARM`), the
    rule that chose it, and this run's evidence: per arm, how many runs diverged, by variant.

    ``status``: the run-status table (:func:`qsmrep.study.collect.run_status_table`) with arm, activation,
    channels, seed and ``diverged_epoch`` columns."""
    standard = registry.STANDARD_UNET_ARM
    text = (f"`./run_all.sh` trains the arm **{registry.DEFAULT_ARM}** unless told otherwise (`--arm none|batch|both`). "
            f"The rule: the arm closest to the paper's text, the standard U-Net (`{standard}`), unless the evidence "
            f"shows that it cannot train the paper's variants at this scale.")
    parts = []
    for arm, runs in status.groupby("arm", sort=False):
        gone = divergences(runs)
        per_variant = gone.groupby(["activation", "channels"]).size()
        seeds = runs.groupby(["activation", "channels"]).size()
        listed = ", ".join(f"{variant_key(a, c)} in {n} of {seeds[(a, c)]} seeds" for (a, c), n in per_variant.items())
        parts.append(f"arm `{arm}`: {len(gone)} of {len(runs)} runs diverged" + (f" ({listed})" if listed else ""))
    if standard not in set(status.arm):
        parts.append(f"the arm `{standard}` was not run here (`--arm both` runs it; the committed `cpu` reference "
                     f"results hold its evidence)")
    return text + " In this run: " + "; ".join(parts) + "."
