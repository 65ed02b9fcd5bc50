"""The committed reference results of the cpu profile: present, and the report says what the CSVs say."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pandas as pd
import pytest

from qsmrep.config import Config
from qsmrep.metrics import format_mean_sd
from qsmrep.report import evaluate_claims, external_references

ROOT = Path(__file__).resolve().parents[1]
RESULTS, FIGURES = ROOT / "results" / "cpu", ROOT / "figures" / "cpu"


@pytest.fixture(scope="module")
def report() -> str:
    path = RESULTS / "report.html"
    assert path.exists(), "the committed cpu reference report is missing"
    return html_lib.unescape(path.read_text(encoding="utf-8"))


def test_reference_files_exist():
    for n in (1, 2, 3, 4):
        assert list(FIGURES.glob(f"fig{n}_*.png")) and list(FIGURES.glob(f"fig{n}_*.svg"))
    for name in ("metrics_per_map.csv", "metrics_summary.csv", "histories.csv", "costs.csv"):
        assert (RESULTS / name).exists(), name


def test_report_is_self_contained(report):
    assert external_references(report) == []
    assert report.count("data:image/png;base64") >= 5


def test_report_numbers_match_the_csv_tables(report):
    summary = pd.read_csv(RESULTS / "metrics_summary.csv")
    for row in summary.itertuples():
        assert format_mean_sd(row.nrmse_mean, row.nrmse_sd, 1) in report, row.model
        assert format_mean_sd(row.ssim_mean, row.ssim_sd, 3) in report, row.model


def test_report_verdicts_follow_from_the_csv_tables(report):
    config = Config.from_profile("cpu")
    claims = evaluate_claims(pd.read_csv(RESULTS / "histories.csv"), pd.read_csv(RESULTS / "metrics_per_map.csv"),
                             config.early, config.epochs, pd.read_csv(RESULTS / "costs.csv"))
    for row in claims.itertuples():
        cell = re.search(rf"<td>{row.id}</td>.*?</tr>", report, flags=re.S)
        assert cell and f"<td>{row.verdict}</td>" in cell.group(0), row.id


def test_report_states_provenance(report):
    for text in ("Provenance", "commit", "cpu", "wall time"):
        assert text in report
