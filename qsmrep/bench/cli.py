"""``python -m qsmrep bench``: training-step, generator, forward-field and data-loader figures.

One row per case; ``--json`` prints one JSON object per row on stdout (progress goes to stderr),
otherwise a table is printed at the end. Exit code 1 when a case failed (its row has ``error``).

Any profile but ``paper`` (``cpu``, ``smoke``, ``gpu``) measures, on the machine at hand:

* ``train_step``: the trainer's step (:mod:`qsmrep.bench.steps`) for the six variants of the paper
  (depth 5) at the profile's patch size and batch, in fp32, bf16 autocast and channels-last-3d
  (bf16 only where it is native; :mod:`qsmrep.bench.plan`): s/iter, voxel/s, GFLOP/s, peak MiB;
* ``default_step``: ELU 16 in the setting a run adopts here, beside the plain fp32 step of the same run and the
  bf16 accuracy guard's verdict, against the profile's step target where it has one (:mod:`qsmrep.bench.headline`);
* ``monai_step`` and ``monai_ratio``: MONAI's ``BasicUNet`` in fp32 at 32³, 48³ and the profile's
  patch, and MONAI's seconds / our fastest setting's (target ≥ 1.8); skipped with ``--no-monai`` or
  without ``monai`` (``pip install 'qsmrep[bench]'``);
* ``generator`` (64³, 160³, 320³; s/sample), ``forward_field`` (voxel/s) and ``loader_stall`` (fraction
  of a short ``cpu``-profile training run spent waiting for data) (:mod:`qsmrep.bench.data`).

``--profile paper`` needs a CUDA GPU; there it measures what ``./run_all.sh --profile paper`` will cost
(:mod:`qsmrep.bench.paper`), the decisive rows first: training steps at 4 × 160³ for the six variants in
the default setting (bf16 + channels-last, with TFLOP/s and fraction of the card's peak), the data path
(training iterations with the maps rendered on the device vs. the bare step, target ≤ 1.1), validation
seconds per epoch per variant (and where its maps are kept), the memory on the card, evaluation seconds
per test map per variant, the validation fraction of the epoch (target ≤ 15 %) and the projected wall time
of training, validation, evaluation and report per variant (target ≤ 6 h); then fp32 steps, cuDNN
autotuning, the MONAI reference and the generator. On a CPU it measures the 320³ generator and the 160³
forward field only, unless ``--paper-rows``: the same rows at the sizes of any ``--profile`` (``smoke``: a
rehearsal of the GPU check on a CPU; with ``--quick`` the decisive rows only, from one or two
iterations each). ``--save`` writes the rows to ``results/bench/<card>-<date>.jsonl``
(or another folder), rewritten as each row is measured, so a run cut off keeps the rows it made.

``--breakdown`` measures nothing else: a ``torch.profiler`` breakdown of the ELU 16 CPU step at the profile's batch
and patch by kind of operation, in the setting a run adopts on this CPU and in plain fp32
(:mod:`qsmrep.bench.breakdown`).

``--quick`` runs fewer repeats and cases and stops starting training-step cases after
:data:`QUICK_BUDGET_SECONDS`, so that it ends within 5 minutes.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import sys
import time
from pathlib import Path

import torch

from qsmrep.run import files
from qsmrep.run.config import Config
from qsmrep.run.runtime import resolve_device
from qsmrep.study.plan import project_root
from qsmrep.bench.breakdown import breakdown_rows, breakdown_specs, breakdown_table
from qsmrep.bench.data import forward_field_rows, generator_rows, stall_rows
from qsmrep.bench.headline import default_step_rows
from qsmrep.bench.paper import card_name, paper_rows
from qsmrep.bench.plan import bf16_usable, comparison_specs, step_specs
from qsmrep.bench.rows import make_row, to_json
from qsmrep.bench.steps import PRELOAD, monai_available, run_step_case, speed_ratio_rows

QUICK_BUDGET_SECONDS = 240  # --quick stops starting training-step cases after this, so it ends within 5 minutes
STALL_PROFILES = ("cpu", "smoke")  # profiles small enough for the loader-stall training run (else: cpu)


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


class RowLog:
    """The rows of a run as they arrive: kept, printed as JSON lines with ``--json``, logged to stderr, and
    written (the whole file, atomically) to ``save`` when given."""

    def __init__(self, json_lines: bool, save: str | None = None):
        self.json_lines, self.save = json_lines, save
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, new: list[dict]) -> None:
        for row in new:
            self.rows.append(row)
            if self.json_lines:
                print(to_json(row), flush=True)
            if self.save:
                files.write_text(self.save, "".join(to_json(r) + "\n" for r in self.rows))
            status = f"ERROR {row['error']}" if row.get("error") else \
                f"{row.get('figure')} = {_fmt(row.get('value'), '.4g')} {row.get('unit', '')}"
            _log(f"{row['case']} {_fmt(row.get('variant'))} {_fmt(row.get('patch'))} {_fmt(row.get('precision'))} "
                 f"{_fmt(row.get('memory_format'))}: {status}  [{self.elapsed():.0f} s]")


def skipped_row(reason: str, **values) -> dict:
    """A ``skipped`` row saying why a case was not run (``unit`` holds the reason)."""
    return make_row(case="skipped", **values, figure="skipped", value=None, unit=reason)


# ---------------------------------------------------------------------------------------------- parts of a run
def _log_machine(profile: str, device: str, quick: bool) -> None:
    _log(f"profile {profile}, device {device}, {torch.get_num_threads()} threads, {'quick' if quick else 'full'} run, "
         f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        _log(f"warning: load average {os.getloadavg()[0]:.1f} before the run; other processes may distort the timings")


def _monai_wanted(args) -> bool:
    """Whether the MONAI reference runs (not with ``--no-monai``, not without monai); says so when not."""
    if getattr(args, "no_monai", False):
        _log("note: --no-monai, MONAI BasicUNet reference skipped")
        return False
    if not monai_available():
        _log("note: monai is not installed, MONAI BasicUNet reference skipped (pip install 'qsmrep[bench]')")
        return False
    if "monai.networks.nets" not in PRELOAD:
        PRELOAD.append("monai.networks.nets")
    return True


def _paper(out: RowLog, profile: str, device: str, use_monai: bool, paper_rows_anywhere: bool, quick: bool) -> None:
    """The paper-scale rows on a GPU (or at any profile with ``--paper-rows``; ``--quick``: the decisive rows only,
    from one or two iterations each); on a CPU without ``--paper-rows`` the 320³ generator and the forward field only."""
    if device != "cuda" and not paper_rows_anywhere:
        _log("note: no CUDA GPU: the paper-scale rows (steps at 160³, data path, validation, evaluation, projection) "
             "need one; measuring the CPU data side at 320³ only, the GPU targets wait for a GPU")
        out(generator_rows(sizes=(320,), repeats=1, device=device))
        out(forward_field_rows(size=160, batch=4, repeats=2, device=device))
    else:
        sizes = dict(iters=2, data_iterations=2, val_maps=1, eval_maps=1, extras=False) if quick else {}
        paper_rows(profile, device, use_monai=use_monai, emit=out, **sizes)


def _budget_spent(out: RowLog, quick: bool) -> bool:
    return quick and out.elapsed() > QUICK_BUDGET_SECONDS


def _train_steps(out: RowLog, profile: str, quick: bool, device: str) -> None:
    """``train_step`` rows of :func:`~qsmrep.bench.plan.step_specs`; ``skipped`` rows for bf16 where it is
    not native and for the cases after the quick budget."""
    if not bf16_usable(device):
        capability = torch.backends.cpu.get_cpu_capability()
        note = (f"bf16 cases skipped: this {device.upper()} has no native bf16 (capability {capability}, no AMX or "
                f"AVX512-BF16); emulated bf16 runs ~50x slower than fp32")
        _log(f"note: {note}")
        out([skipped_row(note, precision="bf16")])
    specs = step_specs(profile, quick, device)
    for i, spec in enumerate(specs, 1):
        if _budget_spent(out, quick):
            out([skipped_row(f"--quick time budget of {QUICK_BUDGET_SECONDS} s reached", variant=spec.variant,
                             patch=spec.patch, precision=spec.precision, memory_format=spec.memory_format)])
            continue
        _log(f"train step {i}/{len(specs)}: {spec.variant} patch {spec.patch} {spec.setting}")
        out([run_step_case(spec)])


def _monai_comparison(out: RowLog, profile: str, quick: bool, device: str) -> None:
    """Our cases at the MONAI patches, the MONAI cases and the ``monai_ratio`` rows."""
    extra = comparison_specs(profile, quick, device, out.rows)
    for i, spec in enumerate(extra, 1):
        _log(f"comparison {i}/{len(extra)}: {spec.model} {spec.variant} patch {spec.patch} {spec.setting}")
        out([run_step_case(spec)])
    out(speed_ratio_rows(out.rows))


def _data_side(out: RowLog, profile: str, quick: bool, device: str) -> None:
    """Generator, forward-field and loader-stall rows."""
    _log("generator")
    out(generator_rows(sizes=(64, 160) if quick else (64, 160, 320), repeats=1 if quick else 3, device=device))
    _log("forward field")
    size = min(160, max(Config.from_profile(profile).patch_size, 64))
    out(forward_field_rows(size=size, batch=4, repeats=2 if quick else 5, device=device))
    stall_profile = profile if profile in STALL_PROFILES else "cpu"
    epochs = 1 if quick else 3
    _log(f"data-loader stall: {stall_profile}-profile training, {epochs} epoch(s)")
    try:
        out(stall_rows(stall_profile, epochs=epochs, device=device, **({"iters_per_epoch": 8} if quick else {})))
    except Exception as err:  # noqa: BLE001 - the other rows stand; this one says what failed
        out([make_row(case="loader_stall", error=f"{type(err).__name__}: {err}")])




def main(args) -> int:
    """Run the benchmark for ``args`` (``profile``, ``quick``, ``json``, ``no_monai``, ``save``); exit code 1 if a case failed."""
    profile, quick = args.profile, bool(args.quick)
    Config.from_profile(profile)  # ValueError on an unknown profile
    device = str(resolve_device("auto"))
    out = RowLog(bool(args.json), save_path(args, card_name(resolve_device(device))))
    _log_machine(profile, device, quick)
    if out.save:
        _log(f"rows are written to {out.save} as they are measured")
    use_monai, breakdown = _monai_wanted(args), bool(getattr(args, "breakdown", False))
    if breakdown:  # the CPU step's breakdown, on a GPU machine too
        for spec in breakdown_specs(profile, "cpu", quick):
            _log(f"profiling {spec.variant} patch {spec.patch} {spec.setting}")
            out(breakdown_rows(spec))
    elif profile == "paper" or getattr(args, "paper_rows", False):
        _paper(out, profile, device, use_monai, bool(getattr(args, "paper_rows", False)), quick)
    else:
        _train_steps(out, profile, quick, device)
        out(default_step_rows(out.rows, profile, device))
        if use_monai and not _budget_spent(out, quick):
            _monai_comparison(out, profile, quick, device)
        _data_side(out, profile, quick, device)
    if not args.json:
        print(breakdown_table(out.rows) if breakdown else summary_table(out.rows))
    failed = [r for r in out.rows if r.get("error")]
    _log(f"done in {out.elapsed():.0f} s, {len(out.rows)} rows, {len(failed)} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- output
def _figure_text(row: dict) -> str:
    if row.get("error"):
        return f"ERROR {row['error']}"
    if not row.get("figure"):
        return "-"
    text = f"{row['figure']} = {_fmt(row.get('value'), '.4g')} {row.get('unit', '')}".rstrip()
    if row.get("meets_target") is not None:
        text += f" (target {'met' if row['meets_target'] else 'missed'})"
    return text


def summary_table(rows: list[dict]) -> str:
    """A plain-text table of ``rows`` (one line per case; the headline figure with its unit last)."""
    header = ["case", "variant", "patch", "precision", "memory_format", "s/iter", "Mvoxel/s", "GFLOP/s", "% peak",
              "peak MiB", "figure"]
    lines = [header]
    for r in rows:
        lines.append([
            str(r.get("case")), _fmt(r.get("variant")), _fmt(r.get("patch")), _fmt(r.get("precision")),
            _fmt(r.get("memory_format")), _fmt(r.get("seconds_per_iter"), ".4g"),
            _fmt(r["voxels_per_s"] / 1e6 if r.get("voxels_per_s") else None, ".4g"), _fmt(r.get("gflops_per_s"), ".4g"),
            _fmt(100 * r["fraction_of_peak"] if r.get("fraction_of_peak") else None, ".2g"),
            _fmt(r.get("peak_mem_mb"), ".0f"), _figure_text(r),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines]
    kinds = sorted({r["peak_mem_kind"] for r in rows if r.get("peak_mem_kind")})
    if kinds:
        out.append(f"peak MiB: {'; '.join(kinds)}. GFLOP/s: network forward+backward FLOPs (FlopCounterMode) / s.")
    bases = sorted({f"{r['precision']}: {r['peak_basis']}" for r in rows if r.get("peak_basis")})
    if bases:
        out.append(f"% peak: of the cores' arithmetic peak ({'; '.join(bases)}; qsmrep.bench.cpu_peak).")
    return "\n".join(out)


def save_path(args, card: str) -> str | None:
    """Where ``--save`` writes: ``<folder>/<card>-<date>.jsonl``, folder ``results/bench`` or the one given;
    None without ``--save``."""
    save = getattr(args, "save", False)
    if not save:
        return None
    folder = project_root() / "results" / "bench" if save is True else Path(save)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return str(folder / f"{slug}-{date}.jsonl")
