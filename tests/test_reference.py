"""The committed reference results of the cpu profile: both arms present, and the report says what the CSVs say."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pandas as pd
import pytest

from qsmrep import registry
from qsmrep.run.config import Config
from qsmrep.core.metrics import format_mean_sd
from qsmrep.study.claims import evaluate_claims
from qsmrep.study.html import external_references

ROOT = Path(__file__).resolve().parents[1]
RESULTS, FIGURES = ROOT / "results" / "cpu", ROOT / "figures" / "cpu"


@pytest.fixture(scope="module")
def report() -> str:
    path = RESULTS / "report.html"
    assert path.exists(), "the committed cpu reference report is missing"
    return html_lib.unescape(path.read_text(encoding="utf-8"))


def _section(report: str, arm: str) -> str:
    """The report's section of one arm: from its heading to the next arm's (or the test metrics)."""
    start = report.index(f"Arm <code>{arm}</code>")
    ends = [report.find(f"Arm <code>{other}</code>", start + 1) for other in registry.ARMS if other != arm]
    ends = [e for e in ends if e > 0] + [report.index(">Test metrics<", start)]
    return report[start:min(ends)]


def test_reference_files_exist():
    assert list(FIGURES.glob("fig1_*.png"))
    for arm in registry.ARMS:
        for name in ("fig2_convergence", "figS1_dead_units", "fig3_32ch_full", "fig4_16ch_early"):
            for suffix in ("png", "svg"):
                assert (FIGURES / f"{name}_{arm}.{suffix}").exists(), f"{name}_{arm}.{suffix}"
    for name in ("metrics_per_map.csv", "metrics_summary.csv", "histories.csv", "costs.csv", "run_status.csv",
                 "dead_units.csv"):
        assert (RESULTS / name).exists(), name


def test_both_arms_with_every_variant_and_four_seeds():
    histories = pd.read_csv(RESULTS / "histories.csv")
    runs = histories[["arm", "activation", "channels", "seed"]].drop_duplicates()
    for arm in registry.ARMS:
        in_arm = runs[runs.arm == arm]
        assert set(zip(in_arm.activation, in_arm.channels)) == set(registry.PAPER_VARIANTS), arm
        assert in_arm.groupby(["activation", "channels"]).seed.nunique().min() >= 4, arm


def test_report_is_self_contained(report):
    assert external_references(report) == []
    assert report.count("data:image/png;base64") >= 9  # Figure 1 and four figures per arm


def test_report_numbers_match_the_csv_tables(report):
    summary = pd.read_csv(RESULTS / "metrics_summary.csv")
    for row in summary.itertuples():
        assert format_mean_sd(row.nrmse_mean, row.nrmse_sd, 1) in report, row.model
        assert format_mean_sd(row.ssim_mean, row.ssim_sd, 3) in report, row.model


@pytest.mark.parametrize("arm", registry.ARMS)
def test_each_arm_has_verdicts_that_follow_from_the_csv_tables(report, arm):
    config = Config.from_profile("cpu")
    of_arm = lambda t: t[t.arm == arm]  # noqa: E731
    claims = evaluate_claims(of_arm(pd.read_csv(RESULTS / "histories.csv")), of_arm(pd.read_csv(RESULTS / "metrics_per_map.csv")),
                             config.early, config.epochs, of_arm(pd.read_csv(RESULTS / "costs.csv")),
                             of_arm(pd.read_csv(RESULTS / "run_status.csv")))
    section = _section(report, arm)
    assert [f"C{i}" for i in range(1, 9)] == list(claims.id)
    for row in claims.itertuples():
        cell = re.search(rf"<td>{row.id}</td>.*?</tr>", section, flags=re.S)
        assert cell and f"<td>{row.verdict}</td>" in cell.group(0), (arm, row.id)
    for text in (f"Across seeds ({arm})", "95 % CI low", f"Figure S1 ({arm})", f"Figure 2 ({arm})"):
        assert text in section, (arm, text)


def test_report_compares_the_arms_and_states_provenance(report):
    for text in ("What normalisation changes", "Diverged runs", "Accuracy guard of the fast precision", "Provenance",
                 "commit", "wall time", "trained at commit", "Precision / memory format used for training"):
        assert text in report, text
