"""Evidence for the paper's claims C1–C8 from a run's histories and test metrics, provenance,
and the offline clean-up of the rendered HTML report.

Each claim is decided by a stated rule on this run's numbers (single seed unless several are
given: then on the seed means). The thresholds are choices of this reproduction, written next to
each verdict in the report; the paper gives none.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from qsmrep import registry

REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE = "reproduced", "not reproduced", "not testable at this scale"
NOT_TESTABLE_DIVERGED = "not testable: diverged"
VARIANTS = registry.PAPER_VARIANTS
SMALL, LARGE = registry.PAPER_CHANNELS
ACTS = registry.PAPER_ACTIVATIONS
BEST = registry.RECOMMENDED_ACTIVATION  # the paper's recommendation (ELU)
GUARD_TOLERANCE = 0.02  # the accuracy guard: fast setting within ±2 % of fp32 (end-level validation NRMSE)


def variant_key(activation: str, channels: int) -> str:
    return registry.variant_name(activation, channels)


def _final(histories: pd.DataFrame, column: str) -> pd.Series:
    """Per variant: mean over seeds of ``column`` at each seed's last epoch."""
    last = histories.sort_values("epoch").groupby(["activation", "channels", "seed"]).tail(1)
    return last.groupby(["activation", "channels"])[column].mean()


def end_level(curve: pd.Series) -> float:
    """Where a training curve ends: the median over its last 20 % of epochs (at least one).

    A single-epoch spike at the very end (seen with ReLU16: validation NRMSE 52 → 123 % in the last
    epoch of one seed) moves the last value but not this level."""
    return float(curve.iloc[-max(1, len(curve) // 5):].median())


def _end_levels(histories: pd.DataFrame, column: str) -> pd.Series:
    """Per variant: mean over seeds of each seed's :func:`end_level` of ``column``."""
    ends = histories.sort_values("epoch").groupby(["activation", "channels", "seed"])[column].agg(end_level)
    return ends.groupby(["activation", "channels"]).mean()


def _curve(histories: pd.DataFrame, activation: str, channels: int, column: str) -> pd.Series:
    frame = histories[(histories.activation == activation) & (histories.channels == channels)]
    return frame.groupby("epoch")[column].mean()


def _test(metrics: pd.DataFrame, activation: str, channels: int, epoch: int, column: str) -> float:
    rows = metrics[(metrics.activation == activation) & (metrics.channels == channels) & (metrics.epoch == epoch)]
    return float(rows[column].mean()) if len(rows) else float("nan")


def epochs_to_reach(curve: pd.Series, threshold: float) -> float:
    """First epoch at which ``curve`` is ≤ ``threshold`` (inf if never)."""
    hit = curve[curve <= threshold]
    return float(hit.index.min()) if len(hit) else float("inf")


def divergences(status: pd.DataFrame | None) -> pd.DataFrame:
    """The diverged rows of a run-status table (:func:`qsmrep.results.run_status_table`): training stopped on a
    non-finite number, or finished with a validation NRMSE blown up far beyond a zero prediction's."""
    if status is None or not len(status) or "diverged_epoch" not in status:
        return pd.DataFrame(columns=["activation", "channels", "seed", "diverged_epoch", "diverged_kind"])
    return status[status.diverged_epoch.notna()]


def _diverged_text(rows: pd.DataFrame) -> str:
    kinds = {"validation": ", validation NRMSE above 1000 % with a finite training loss", "non-finite": ""}
    return "; ".join(f"{variant_key(r.activation, r.channels)} seed {r.seed} at epoch {int(r.diverged_epoch)}"
                     + kinds.get(getattr(r, "diverged_kind", ""), "")
                     + (f" (last val NRMSE before it {r.last_finite_val_nrmse:.1f} %)"
                        if "last_finite_val_nrmse" in rows and pd.notna(r.last_finite_val_nrmse) else "")
                     for r in rows.itertuples())


def evaluate_claims(histories: pd.DataFrame, metrics: pd.DataFrame, early_epoch: int, final_epoch: int,
                    costs: pd.DataFrame | None = None, status: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim: id, claim, evidence (numbers of this run), rule, verdict — for one arm.

    ``histories``: history.csv rows with activation, channels, seed columns; ``metrics``: per-map
    test metrics with activation, channels, epoch; ``costs``: optional per-variant table with
    ``params``, ``seconds_per_epoch``, ``peak_mem_mb``; ``status``: optional run-status table
    (:func:`qsmrep.results.run_status_table`). A claim that needs a model that diverged on any seed
    (before the checkpoint it needs) is ``not testable: diverged``, naming the run, epoch and last
    finite validation NRMSE.
    """
    have = {(a, c) for a, c in histories[["activation", "channels"]].drop_duplicates().itertuples(index=False)}
    diverged = divergences(status)
    rows = []

    def add(cid, claim, evidence, rule, verdict):
        rows.append({"id": cid, "claim": claim, "evidence": evidence, "rule": rule, "verdict": verdict})

    def blocked(cid, claim, rule, needed, before: int | None = None) -> bool:
        hit = diverged[np.array([(a, c) in needed for a, c in zip(diverged.activation, diverged.channels)], dtype=bool)]
        if before is not None and len(hit):
            hit = hit[hit.diverged_epoch <= before]
        if len(hit):
            add(cid, claim, f"diverged: {_diverged_text(hit)}", rule, NOT_TESTABLE_DIVERGED)
        return bool(len(hit))

    missing = [variant_key(*v) for v in VARIANTS if v not in have]
    if missing:
        add("all", "all claims compare the six variants", f"missing variants: {', '.join(missing)}", "-", NOT_TESTABLE)
        return pd.DataFrame(rows)
    others = [a for a in ACTS if a != BEST]

    claim, rule = ("all six models converge within the budget",
                   "every validation-loss curve's end level (median over the last 20 % of epochs) is below 50 % of its "
                   "first value and differs < 15 % from the median of the 20 % of epochs before")
    if not blocked("C1", claim, rule, VARIANTS):
        parts, ok = [], True
        for a, c in VARIANTS:
            curve = _curve(histories, a, c, "val_loss")
            window = max(1, len(curve) // 5)
            end, before = end_level(curve), float(curve.iloc[-2 * window:-window].median()) if len(curve) > window else float("nan")
            drop = end / curve.iloc[0]
            moving = abs(end - before) / max(abs(before), 1e-12)
            ok &= bool(np.isfinite(curve).all() and drop < 0.5 and moving < 0.15)
            parts.append(f"{variant_key(a, c)}: end level/start {drop:.2f}, change over the last 20 % {100 * moving:.0f} %")
        add("C1", claim, "; ".join(parts), rule, REPRODUCED if ok else NOT_REPRODUCED)

    claim = f"{SMALL}-channel ELU reaches low validation loss/NRMSE earlier than the other {SMALL}-channel models"
    rule = (f"ELU{SMALL} strictly first to reach 1.1 × the worst {SMALL}-channel end level (median val NRMSE over the last "
            "20 % of epochs), and lowest at the early epoch")
    if not blocked("C2", claim, rule, [(a, SMALL) for a in ACTS]):
        finals = {a: _end_levels(histories, "val_nrmse")[(a, SMALL)] for a in ACTS}
        threshold = 1.1 * max(finals.values())
        reach = {a: epochs_to_reach(_curve(histories, a, SMALL, "val_nrmse"), threshold) for a in ACTS}
        at_early = {a: _curve(histories, a, SMALL, "val_nrmse").get(early_epoch, np.nan) for a in ACTS}
        ok = reach[BEST] < min(reach[a] for a in others) and at_early[BEST] < min(at_early[a] for a in others)
        add("C2", claim, f"epochs to val NRMSE ≤ {threshold:.1f} %: " + ", ".join(f"{a} {reach[a]:g}" for a in reach)
            + f"; val NRMSE at epoch {early_epoch}: " + ", ".join(f"{a} {at_early[a]:.1f} %" for a in at_early),
            rule, REPRODUCED if ok else NOT_REPRODUCED)

    claim = f"{SMALL}-channel ReLU and leaky-ReLU models end with about twice the validation loss of the others"
    rule = "ratio ≥ 1.5, end level = median over the last 20 % of epochs"
    if not blocked("C3", claim, rule, VARIANTS):
        final_loss = _end_levels(histories, "val_loss")
        weak = np.mean([final_loss[(a, SMALL)] for a in others])
        rest = np.mean([final_loss[(BEST, SMALL)]] + [final_loss[(a, LARGE)] for a in ACTS])
        ratio = weak / rest
        add("C3", claim, f"end-level val loss ratio (ReLU{SMALL}, leaky{SMALL}) / (ELU{SMALL} and {LARGE}-channel models) "
            f"= {ratio:.2f}", rule, REPRODUCED if ratio >= 1.5 else NOT_REPRODUCED)

    large = [(a, LARGE) for a in ACTS]
    claim, rule = f"all {LARGE}-channel models reach similar metrics after the full budget", "(max − min)/mean of test NRMSE ≤ 10 %"
    n32 = {a: _test(metrics, a, LARGE, final_epoch, "nrmse") for a in ACTS}
    if not blocked("C4", claim, rule, large):
        spread = (max(n32.values()) - min(n32.values())) / np.mean(list(n32.values()))
        add("C4", claim, "test NRMSE: " + ", ".join(f"{a} {v:.1f} %" for a, v in n32.items())
            + f"; relative spread {100 * spread:.0f} %", rule, REPRODUCED if spread <= 0.10 else NOT_REPRODUCED)

    claim = f"among {LARGE}-channel models after the full budget ELU has the best NRMSE and SSIM"
    rule = f"ELU{LARGE} lowest mean NRMSE and highest mean SSIM"
    if not blocked("C5", claim, rule, large):
        s32 = {a: _test(metrics, a, LARGE, final_epoch, "ssim") for a in ACTS}
        ok = n32[BEST] == min(n32.values()) and s32[BEST] == max(s32.values())
        add("C5", claim, "test NRMSE / SSIM: " + ", ".join(f"{a} {n32[a]:.1f} % / {s32[a]:.3f}" for a in ACTS),
            rule, REPRODUCED if ok else NOT_REPRODUCED)

    claim = (f"at the early checkpoint (epoch {early_epoch}) {SMALL}-channel ELU beats {SMALL}-channel ReLU in NRMSE "
             "and SSIM")
    rule = "lower mean test NRMSE and higher mean test SSIM"
    if not blocked("C6", claim, rule, [(BEST, SMALL), ("relu", SMALL)], before=early_epoch):
        e = {m: _test(metrics, BEST, SMALL, early_epoch, m) for m in ("nrmse", "ssim")}
        r = {m: _test(metrics, "relu", SMALL, early_epoch, m) for m in ("nrmse", "ssim")}
        ok = e["nrmse"] < r["nrmse"] and e["ssim"] > r["ssim"]
        add("C6", claim, f"ELU{SMALL} {e['nrmse']:.1f} % / {e['ssim']:.3f}; ReLU{SMALL} {r['nrmse']:.1f} % / {r['ssim']:.3f}",
            rule, REPRODUCED if ok else NOT_REPRODUCED)

    claim = f"ELU lets the {SMALL}-channel model match the {LARGE}-channel one with less memory and time"
    rule = f"ELU{SMALL} NRMSE ≤ 1.05 × ELU{LARGE}'s, with fewer parameters and less time per epoch"
    if not blocked("C7", claim, rule, [(BEST, SMALL), (BEST, LARGE)]):
        small, big = _test(metrics, BEST, SMALL, final_epoch, "nrmse"), _test(metrics, BEST, LARGE, final_epoch, "nrmse")
        cost_text, cheaper = "no cost table", False
        if costs is not None and len(costs):
            c16 = costs[(costs.activation == BEST) & (costs.channels == SMALL)].iloc[0]
            c32 = costs[(costs.activation == BEST) & (costs.channels == LARGE)].iloc[0]
            cheaper = c16.seconds_per_epoch < c32.seconds_per_epoch and c16.params < c32.params
            cost_text = (f"parameters {c16.params / 1e6:.1f} M vs {c32.params / 1e6:.1f} M, seconds/epoch "
                         f"{c16.seconds_per_epoch:.1f} vs {c32.seconds_per_epoch:.1f}, peak memory "
                         f"{c16.peak_mem_mb:.0f} vs {c32.peak_mem_mb:.0f} MiB")
        ok = small <= 1.05 * big and cheaper
        add("C7", claim, f"test NRMSE ELU{SMALL} {small:.1f} % vs ELU{LARGE} {big:.1f} %; {cost_text}", rule,
            REPRODUCED if ok else NOT_REPRODUCED)

    claim, rule = ("ReLU networks lose units to dying ReLU; ELU does not",
                   "max ReLU dead fraction ≥ 5 % and ≥ 2 × ELU's (a measured precondition, not proof of the causal explanation)")
    if not blocked("C8", claim, rule, [("relu", c) for c in registry.PAPER_CHANNELS] + [(BEST, c) for c in registry.PAPER_CHANNELS]):
        dead = _final(histories, "dead_fraction")
        relu_dead = max(dead[("relu", c)] for c in registry.PAPER_CHANNELS)
        best_dead = max(dead[(BEST, c)] for c in registry.PAPER_CHANNELS)
        ok = relu_dead >= 0.05 and relu_dead >= 2 * best_dead
        add("C8", claim, "final dead-channel fraction: " + ", ".join(f"{variant_key(a, c)} {100 * dead[(a, c)]:.1f} %"
                                                                   for a, c in VARIANTS),
            rule, REPRODUCED if ok else NOT_REPRODUCED)
    return pd.DataFrame(rows)


def compare_arms(claims: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, str]:
    """Verdicts of each claim side by side per arm, and one paragraph saying what the arm changes.

    ``claims``: arm → :func:`evaluate_claims` table. The paragraph lists the claims whose verdict
    differs between the arms (with both verdicts) and those that agree."""
    arms = list(claims)
    table = pd.concat([c.set_index("id")["verdict"].rename(arm) for arm, c in claims.items()], axis=1).reset_index()
    if len(arms) < 2:
        return table, "Only one arm was run; no comparison."
    changed = table[table[arms].nunique(axis=1) > 1]
    same = table[table[arms].nunique(axis=1) == 1]
    names = {"none": "without normalisation (the standard U-Net)", "batch": "with batch normalisation"}
    parts = [f"{r.id} is {' but '.join(f'{getattr(r, a)} {names.get(a, a)}' for a in arms)}" for r in changed.itertuples()]
    text = ("Normalisation changes the verdict of " + ("; ".join(parts) if parts else "no claim") + ". "
            + (f"The verdicts of {', '.join(same.id)} are the same in both arms." if len(same) else ""))
    return table, text


def default_arm_evidence(status: pd.DataFrame) -> str:
    """One paragraph: which arm ``./run_all.sh`` trains by default (:data:`qsmrep.registry.DEFAULT_ARM`), the
    rule that chose it, and this run's evidence: per arm, how many runs diverged, by variant.

    ``status``: the run-status table (:func:`qsmrep.results.run_status_table`) with arm, activation, channels,
    seed and ``diverged_epoch`` columns."""
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


def _code_changes(git) -> str:
    """Uncommitted changes to tracked files other than the run's own outputs (``results/``, ``figures/``),
    which every run rewrites and which are committed after it."""
    return git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", ":(exclude)figures")


def provenance(profile: str, repo: str | Path = ".") -> dict:
    """Commit, date, machine, CPU/GPU and library versions of this run."""
    import torch

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    from qsmrep.runtime import hardware_summary

    hardware = hardware_summary()
    memory = ""
    try:
        kib = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "profile": profile,
        "commit": git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if _code_changes(git) else ""),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} ({platform.system()} {platform.machine()})",
        "cpu": f"{hardware['cpu']}, {os.cpu_count()} cores",
        "cpu capability (ATen)": hardware["cpu capability"],
        "cpu native bf16 (AMX or AVX512-BF16)": "yes" if hardware["cpu native bf16"] else "no",
        "memory": memory,
        "gpu": hardware["gpu"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
    }


_EXTERNAL = re.compile(r"""<script[^>]*\bsrc=["']https?://[^"']*["'][^>]*>\s*</script>|<link[^>]*\bhref=["']https?://[^"']*["'][^>]*/?>""",
                       re.IGNORECASE)


def make_offline(html: str) -> str:
    """Remove every ``<script src=http…>`` and ``<link href=http…>`` (nbconvert's CDN MathJax and
    require.js): the report's equations are drawn inside its figures, so nothing is lost."""
    return _EXTERNAL.sub("", html)


def external_references(html: str) -> list[str]:
    """The ``src``/``href`` values of ``html`` that would fetch from the network."""
    return re.findall(r"""(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""", html, flags=re.IGNORECASE)


def _interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t confidence interval over seeds (NaN interval for one seed)."""
    from scipy import stats

    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def seed_statistics(histories: pd.DataFrame, metrics: pd.DataFrame, early_epoch: int, final_epoch: int,
                    status: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-seed evidence for C2, C3, C5 and C6 with the mean and a 95 % t interval over seeds (one arm).

    Each quantity is computed within one seed (same seed, same data: a paired comparison), then
    summarised over seeds; a seed on which a model the quantity needs diverged contributes nothing
    (its value is NaN and the ``seeds`` column counts only the others). ``supports`` is True when the
    whole interval lies on the side the paper claims, False when the whole interval lies on the other
    side or the mean does, and None (undecided) for a single seed or an interval that straddles the
    boundary.
    """
    test = metrics.groupby(["activation", "channels", "epoch", "seed"])[["nrmse", "ssim"]].mean()
    seeds = sorted(set(histories.seed))
    diverged = divergences(status)
    per_seed: dict[str, list[float]] = {}
    others = [a for a in ACTS if a != BEST]

    def put(key, value, needed, seed, before=None):
        involved = np.array([(a, c) in needed for a, c in zip(diverged.activation, diverged.channels)], dtype=bool)
        hit = diverged[(diverged.seed == seed).to_numpy() & involved]
        if before is not None:
            hit = hit[hit.diverged_epoch <= before]
        per_seed.setdefault(key, []).append(np.nan if len(hit) else value)

    ok = histories[~histories.get("diverged", pd.Series(False, index=histories.index)).astype(bool)]
    final16 = _end_levels(ok, "val_nrmse") if len(ok) else pd.Series(dtype=float)
    threshold = 1.1 * max((final16.get((a, SMALL), np.nan) for a in ACTS), default=np.nan)
    small, large = [(a, SMALL) for a in ACTS], [(a, LARGE) for a in ACTS]
    for seed in seeds:
        h = histories[histories.seed == seed]
        reach = {a: epochs_to_reach(_curve(h, a, SMALL, "val_nrmse"), threshold) for a in ACTS}
        best_other = min(reach[a] for a in others)
        put("C2", reach[BEST] - best_other if np.isfinite(best_other) and np.isfinite(reach[BEST]) else np.nan, small, seed)
        loss = {(a, c): end_level(_curve(h, a, c, "val_loss")) if len(_curve(h, a, c, "val_loss")) else np.nan
                for a, c in VARIANTS}
        put("C3", np.mean([loss[(a, SMALL)] for a in others])
            / np.mean([loss[(BEST, SMALL)], *(loss[(a, LARGE)] for a in ACTS)]), VARIANTS, seed)

        def t(a, c, e, m):
            return float(test.loc[(a, c, e, seed), m]) if (a, c, e, seed) in test.index else np.nan

        put("C5 NRMSE", t(BEST, LARGE, final_epoch, "nrmse") - min(t(a, LARGE, final_epoch, "nrmse") for a in others), large, seed)
        put("C5 SSIM", t(BEST, LARGE, final_epoch, "ssim") - max(t(a, LARGE, final_epoch, "ssim") for a in others), large, seed)
        pair = [(BEST, SMALL), ("relu", SMALL)]
        put("C6 NRMSE", t(BEST, SMALL, early_epoch, "nrmse") - t("relu", SMALL, early_epoch, "nrmse"), pair, seed, early_epoch)
        put("C6 SSIM", t(BEST, SMALL, early_epoch, "ssim") - t("relu", SMALL, early_epoch, "ssim"), pair, seed, early_epoch)

    described = {
        "C2": (f"epochs for ELU{SMALL} to reach val NRMSE ≤ {threshold:.1f} % (the C2 threshold) minus the best other "
               f"{SMALL}-channel model's", "<", 0.0),
        "C3": (f"end-level val loss ratio (ReLU{SMALL}, leaky{SMALL}) / (ELU{SMALL} and {LARGE}-channel models)", ">", 1.5),
        "C5 NRMSE": (f"ELU{LARGE} test NRMSE minus the best other {LARGE}-channel model's (percentage points)", "<", 0.0),
        "C5 SSIM": (f"ELU{LARGE} test SSIM minus the best other {LARGE}-channel model's", ">", 0.0),
        "C6 NRMSE": (f"ELU{SMALL} minus ReLU{SMALL} test NRMSE at epoch {early_epoch} (percentage points)", "<", 0.0),
        "C6 SSIM": (f"ELU{SMALL} minus ReLU{SMALL} test SSIM at epoch {early_epoch}", ">", 0.0),
    }
    rows = []
    for key, (quantity, side, boundary) in described.items():
        values = per_seed.get(key, [])
        mean, low, high = _interval(values)
        claimed = (lambda v: v < boundary) if side == "<" else (lambda v: v > boundary)
        if not np.isfinite(mean):
            supports = None
        elif np.isfinite(low) and claimed(low) and claimed(high):
            supports = True
        elif (np.isfinite(low) and not claimed(low) and not claimed(high)) or (np.isfinite(low) and not claimed(mean)):
            supports = False
        else:
            supports = None
        rows.append({"claim": key, "quantity": quantity, "claimed": f"{side} {boundary:g}",
                     "seeds": int(np.isfinite(values).sum()) if values else 0,
                     "per seed": ", ".join(f"{v:.3g}" for v in values), "mean": mean,
                     "95 % CI low": low, "95 % CI high": high, "supports": supports})
    table = pd.DataFrame(rows)
    table["supports"] = pd.Series([row["supports"] for row in rows], dtype=object)  # keep True/False/None
    return table


def precision_guard(fast: pd.DataFrame, fp32: pd.DataFrame, tolerance: float = GUARD_TOLERANCE) -> tuple[pd.DataFrame, dict]:
    """The accuracy guard of the fast setting: its end-level validation NRMSE against plain fp32 twins.

    ``fast``: histories of the runs in the adopted setting; ``fp32``: histories of their fp32 twins
    (same arm, variant, seed and data). Per pair: the relative difference
    d = (NRMSE_fast − NRMSE_fp32) / NRMSE_fp32 of the end levels (median over the last 20 % of epochs),
    and the speed-up (median fp32 seconds per epoch / fast seconds per epoch). Pairs where either run
    diverged are listed, not used. The statistic: mean of d over all pairs with its 95 % t interval;
    the guard *holds* when the interval lies inside ±``tolerance``, *fails* when the interval lies wholly
    outside it (the fast setting is then surely more than ``tolerance`` worse or better), else it is
    *undecided*: the pairs are too few or too noisy to tell (a mean outside ±``tolerance`` whose interval
    reaches into the band decides nothing).

    Returns ``(table, summary)``; summary keys: pairs, mean, low, high, max_abs, speedup, verdict.
    """
    rows = []
    for key, run, twin in _twins(fast, fp32):
        usable = not (_diverged(run) or _diverged(twin))
        a, b = end_level(run["val_nrmse"]), end_level(twin["val_nrmse"])
        rows.append({**key, "precision": run["precision"].iloc[0] if "precision" in run else "",
                     "val_nrmse_fast": a, "val_nrmse_fp32": b, "relative_difference": (a - b) / b if usable else np.nan,
                     "speedup": float(twin["seconds"].iloc[1:].median() / run["seconds"].iloc[1:].median())
                     if len(run) > 1 and len(twin) > 1 else np.nan, "used": usable})
    table = pd.DataFrame(rows)
    if not len(table):
        return table, {"pairs": 0, "verdict": "not run"}
    d = table.loc[table.used, "relative_difference"].to_numpy(dtype=float)
    mean, low, high = _interval(list(d))
    if np.isfinite(low) and -tolerance <= low and high <= tolerance:
        verdict = "holds"
    elif np.isfinite(low) and (low > tolerance or high < -tolerance):
        verdict = "fails"
    else:
        verdict = "undecided"
    return table, {"pairs": int(len(d)), "mean": mean, "low": low, "high": high,
                   "max_abs": float(np.nanmax(np.abs(d))) if len(d) else np.nan,
                   "speedup": float(table.speedup.median()), "verdict": verdict, "tolerance": tolerance}


def clipping_trial(plain: pd.DataFrame, clipped: pd.DataFrame) -> pd.DataFrame:
    """Each clipped twin beside its unclipped run: end-level validation NRMSE and whether each diverged.

    ``plain``: histories of the paper runs; ``clipped``: histories of their twins trained with the gradient's
    global norm clipped (``grad_clip``); both with arm, activation, channels, seed and ``diverged`` columns.
    """
    rows = []
    for key, run, twin in _twins(plain, clipped):
        row = dict(key)
        for name, frame in (("without clipping", run), ("with clipping", twin)):
            row[f"end-level val NRMSE {name}"] = end_level(frame["val_nrmse"])
            row[f"diverged {name}"] = _diverged(frame)
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_table(metrics: pd.DataFrame, reference: str = "elu-1") -> pd.DataFrame:
    """Each setting of the extended sweep against ``reference`` (the paper's ELU, α = 1) on the same seeds.

    ``metrics``: per-map test metrics of the sweep (columns name, seed, nrmse in percent, ssim), one
    checkpoint per run. Per seed s, NRMSE_s is the mean over the test maps; the paired difference
    Δ_s = NRMSE_s(setting) − NRMSE_s(reference) (percentage points; same seed, same data, same
    initialisation stream) is summarised by its mean and 95 % t interval over the seeds both have.
    ``verdict``: "worse" when the whole interval lies above 0, "better" when below, else "undecided"
    (also for a single seed); empty for the reference and when the reference was not run. Rows
    sorted by mean NRMSE.
    """
    per_seed = metrics.groupby(["name", "seed"], sort=False)[["nrmse", "ssim"]].mean()
    reference_nrmse = per_seed.loc[reference, "nrmse"] if reference in per_seed.index.get_level_values(0) else None
    rows = []
    for name, runs in per_seed.groupby(level="name", sort=False):
        nrmse = runs["nrmse"].droplevel("name")
        row = {"setting": name, "seeds": len(nrmse), "test NRMSE mean": nrmse.mean(),
               "test NRMSE SD over seeds": nrmse.std(ddof=1) if len(nrmse) > 1 else np.nan,
               "test NRMSE worst seed": nrmse.max(), "SSIM mean": runs["ssim"].mean()}
        mean = low = high = np.nan
        verdict = ""
        if reference_nrmse is not None and name != reference:
            common = nrmse.index.intersection(reference_nrmse.index)
            mean, low, high = _interval(list(nrmse[common] - reference_nrmse[common]))
            verdict = "worse" if low > 0 else "better" if high < 0 else "undecided"
        row.update({f"Δ vs {reference}": mean, "95 % CI low": low, "95 % CI high": high, "verdict": verdict})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("test NRMSE mean", ignore_index=True)


def _twins(runs: pd.DataFrame, twins: pd.DataFrame):
    """(key, run history, twin history) for every twin with a run of the same arm, variant and seed, by epoch."""
    keys = ["arm", "activation", "channels", "seed"]
    for values, twin in twins.groupby(keys):
        key = dict(zip(keys, values))
        run = runs[(runs[keys] == pd.Series(key)).all(axis=1)]
        if len(run):
            yield key, run.sort_values("epoch"), twin.sort_values("epoch")


def _diverged(history: pd.DataFrame) -> bool:
    return bool(history.get("diverged", pd.Series(False, index=history.index)).astype(bool).any())
