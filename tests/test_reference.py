"""The committed reference results (reference/cpu-long/: issue 23's re-scaled study, both arms, three seeds): every
arm and variant present with its seeds, the report says what the CSVs say, and the batch arm meets issue 23's bar;
runs never write a tracked file, and publish-reference is the one way into reference/<profile>/."""

from __future__ import annotations

import functools
import html as html_lib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qsmrep import registry
from qsmrep.run.config import Config
from qsmrep.core.metrics import REPORT_DIGITS, format_summary
from qsmrep.study.claims import evaluate_claims
from qsmrep.study.curves import BLOWUP_NRMSE
from qsmrep.study.html import external_references
from qsmrep.study.plan import STUDY_CONFIG, study_config
from qsmrep.study.reference import PROVENANCE, REQUIRED, publish

ROOT = Path(__file__).resolve().parents[1]
#: each committed reference: its seeds per variant, and its arms (all of them, or those its PROVENANCE.json names)
PUBLISHED = {"cpu-long": 3}


def arms_of(profile: str) -> list[str]:
    provenance = ROOT / "reference" / profile / PROVENANCE
    return json.loads(provenance.read_text())["arms"] if provenance.exists() else list(registry.ARMS)


PROFILE_ARMS = [(profile, arm) for profile in PUBLISHED for arm in arms_of(profile)]


@pytest.fixture(scope="module", params=list(PUBLISHED))
def published(request) -> str:
    return request.param


@functools.cache
def _report(profile: str) -> str:
    """The committed report of ``profile``, HTML entities unescaped (read once per test process)."""
    path = ROOT / "reference" / profile / "report.html"
    assert path.exists(), f"the committed {profile} reference report is missing"
    return html_lib.unescape(path.read_text(encoding="utf-8"))


def _section(report: str, arm: str) -> str:
    """The report's section of one arm: from its heading to the next arm's (or the test metrics)."""
    start = report.index(f"Arm <code>{arm}</code>")
    ends = [report.find(f"Arm <code>{other}</code>", start + 1) for other in registry.ARMS if other != arm]
    ends = [e for e in ends if e > 0] + [report.index(">Test metrics<", start)]
    return report[start:min(ends)]


def test_reference_files_exist(published):
    results = ROOT / "reference" / published
    figures = results / "figures"
    assert list(figures.glob("fig1_*.png"))
    for arm in arms_of(published):
        for name in ("fig2_convergence", "figS1_dead_units", "fig3_32ch_full", "fig4_16ch_early"):
            for suffix in ("png", "svg"):
                assert (figures / f"{name}_{arm}.{suffix}").exists(), f"{name}_{arm}.{suffix}"
    for name in ("metrics_per_map.csv", "metrics_summary.csv", "histories.csv", "costs.csv", "run_status.csv",
                 "dead_units.csv"):
        assert (results / name).exists(), name


def test_every_arm_with_every_variant_and_its_seeds(published):
    histories = pd.read_csv(ROOT / "reference" / published / "histories.csv")
    runs = histories[["arm", "activation", "channels", "seed"]].drop_duplicates()
    assert sorted(set(runs.arm)) == sorted(arms_of(published))
    for arm in arms_of(published):
        in_arm = runs[runs.arm == arm]
        assert set(zip(in_arm.activation, in_arm.channels)) == set(registry.PAPER_VARIANTS), arm
        assert in_arm.groupby(["activation", "channels"]).seed.nunique().min() >= PUBLISHED[published], arm


def test_report_is_self_contained(published):
    report = _report(published)
    assert external_references(report) == []
    assert report.count("data:image/png;base64") >= 1 + 4 * len(arms_of(published))  # Figure 1, four per arm


def test_report_numbers_match_the_csv_tables(published):
    report = _report(published)
    summary = pd.read_csv(ROOT / "reference" / published / "metrics_summary.csv")
    for name in REPORT_DIGITS:
        for model, cell in zip(summary.model, format_summary(summary, name)):
            assert cell in report, (model, name)


@pytest.mark.parametrize("profile, arm", PROFILE_ARMS)
def test_each_arm_has_verdicts_that_follow_from_the_csv_tables(profile, arm):
    results = ROOT / "reference" / profile
    config = Config.load(results / "study_config.yaml")  # the reference's own scale, whatever the profile is now
    assert config.epochs == pd.read_csv(results / "histories.csv").epoch.max()
    of_arm = lambda t: t[t.arm == arm]  # noqa: E731
    claims = evaluate_claims(of_arm(pd.read_csv(results / "histories.csv")), of_arm(pd.read_csv(results / "metrics_per_map.csv")),
                             config.early, config.epochs, of_arm(pd.read_csv(results / "costs.csv")),
                             of_arm(pd.read_csv(results / "run_status.csv")))
    section = _section(_report(profile), arm)
    assert [f"C{i}" for i in range(1, 9)] == list(claims.id)
    for row in claims.itertuples():
        cell = re.search(rf"<td>{row.id}</td>.*?</tr>", section, flags=re.S)
        assert cell and f"<td>{row.verdict}</td>" in cell.group(0), (arm, row.id)
    for text in (f"Across seeds ({arm})", "95 % CI low", f"Figure S1 ({arm})", f"Figure 2 ({arm})"):
        assert text in section, (arm, text)


def test_report_compares_the_arms_and_states_provenance(published):
    report = _report(published)
    for text in ("What normalisation changes", "Diverged runs", "Accuracy guard of the fast precision", "Provenance",
                 "commit", "wall time", "trained at commit", "Precision / memory format used for training"):
        assert text in report, text


def test_the_cpu_long_batch_arm_levels_off_and_learns_the_inversion():
    """Issue 23's bar on the committed cpu-long reference, from its CSV tables with C1's rule written out here: per
    run, with w = epochs // 5, the median of the last w validation NRMSEs is below half the first and within 15 % of
    the median of the w before; every variant levels off in at least two of its seeds, and the report names each run
    that does not. The best variant's mean test NRMSE on the noise-free test maps (final epoch) is ≤ 20 %, every
    variant's ≤ 30 %, and the report states the classical baselines' NRMSE beside them."""
    results = ROOT / "reference" / "cpu-long"
    config = Config.load(results / STUDY_CONFIG)
    histories = pd.read_csv(results / "histories.csv")
    report = _report("cpu-long")
    section = _section(report, "batch")
    levelled = {}
    for (activation, channels, seed), run in histories[histories.arm == "batch"].groupby(
            ["activation", "channels", "seed"]):
        curve = run.sort_values("epoch").val_nrmse.to_numpy()
        assert len(curve) == config.epochs
        w = max(1, len(curve) // 5)
        end, before = np.median(curve[-w:]), np.median(curve[-2 * w:-w])
        levelled[f"{activation}{channels} seed {seed}"] = bool(
            np.isfinite(curve).all() and end < curve[0] / 2 and abs(end - before) < 0.15 * before)
    per_variant = pd.Series(levelled).groupby(lambda run: run.split()[0]).agg(["sum", "count"])
    assert (per_variant["sum"] >= 2).all() and (per_variant["count"] >= 3).all(), per_variant
    named = re.search(r"Did not: (.*?)\.</td>", section)
    assert set(named.group(1).split(", ") if named else []) == {run for run, ok in levelled.items() if not ok}
    assert (named is None) == ("Every run levelled off." in section)

    scores = pd.read_csv(results / "metrics_per_map.csv")
    final = scores[(scores.arm == "batch") & (scores.epoch == config.epochs)]
    means = final.groupby("model").nrmse.mean()
    assert len(means) == len(registry.PAPER_VARIANTS) and means.min() <= 20.0 and means.max() <= 30.0, means
    # the report's summary compares the networks of both arms (blown-up ones aside) with the baselines
    networks = scores[(scores.epoch == config.epochs) & scores.arm.notna()].groupby(["arm", "model"]).nrmse.mean()
    (best_arm, best_model), sound = networks.idxmin(), networks[networks <= BLOWUP_NRMSE]
    baselines = ", ".join(f"{m} {scores[scores.model == m].nrmse.mean():.1f} %" for m in ("TKD", "Tikhonov"))
    assert f"the best network, {best_model} ({best_arm}), reaches {networks.min():.1f} % test NRMSE" in report
    assert f"the networks range from {sound.min():.1f} to {sound.max():.1f} %" in report
    assert f"reach {baselines}: the best network's error is" in report


def _git(*args) -> list[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_runs_write_only_git_ignored_folders_and_the_reference_is_tracked():
    written = [f"results/{p}/{name}" for p in registry.PROFILE_NAMES
               for name in ("report.html", "metrics_summary.csv", "benchmarks/data.tsv", "runs/batch/elu16_s0/last.pt")]
    written += [f"figures/{p}/fig1_activations.png" for p in registry.PROFILE_NAMES] + ["models/elu16/epoch_050.pt"]
    ignored = _git("check-ignore", "--no-index", *written, "reference/cpu-long/report.html", "results/bench/card.jsonl")
    assert sorted(ignored) == sorted(written)  # every run output ignored; the reference and the GPU rows are not
    tracked = [name for name in _git("ls-files", "results", "figures") if (ROOT / name).exists()]  # a clean clone's
    assert all(name.startswith("results/bench/") for name in tracked), tracked[:3]


def _finished_study(root: Path, profile: str = "smoke") -> None:
    """A project root holding the outputs of a finished study (files with known contents)."""
    (root / "qsmrep").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    results, figures = root / "results" / profile, root / "figures" / profile
    (results / "benchmarks" / "train").mkdir(parents=True)
    figures.mkdir(parents=True)
    for name in REQUIRED[1:]:
        (results / name).write_text("arm,status\nbatch,finished\n" if name == "run_status.csv" else f"{name}\n")
    (results / "benchmarks" / "train" / "runs_batch_elu16_s0.tsv").write_text("s\n1\n")
    (results / "runs").mkdir()
    (figures / "fig1_activations.png").write_bytes(b"png")
    (results / "report.html").write_text("<html>report</html>")
    (results / STUDY_CONFIG).write_text(Config.from_profile("smoke", epochs=7).to_yaml())


def test_publish_copies_a_finished_study_with_its_provenance_and_replaces_the_old_reference(tmp_path):
    _finished_study(tmp_path)
    stale = tmp_path / "reference" / "smoke" / "figures" / "fig9_gone.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    target = publish("smoke", tmp_path)
    assert target == tmp_path / "reference" / "smoke" and not stale.exists()
    assert (target / "report.html").read_text() == "<html>report</html>"
    assert (target / "figures" / "fig1_activations.png").read_bytes() == b"png"
    assert (target / "benchmarks" / "train" / "runs_batch_elu16_s0.tsv").exists()
    provenance = json.loads((target / PROVENANCE).read_text())
    assert provenance["runs"] == {"finished": 1} and provenance["arms"] == ["batch"]
    import hashlib

    for name, digest in provenance["sha256"].items():
        assert hashlib.sha256((target / name).read_bytes()).hexdigest() == digest, name
    assert set(provenance["sha256"]) == {str(p.relative_to(target)) for p in target.rglob("*")
                                         if p.is_file() and p.name != PROVENANCE}
    assert not list((tmp_path / "reference").glob(".smoke.*"))  # no staging or old copy left
    assert Config.load(target / STUDY_CONFIG).epochs == 7  # the tables' own scale travels with them


def test_tables_are_read_at_the_scale_they_were_made_at(tmp_path):
    (tmp_path / "qsmrep").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    assert study_config("cpu", tmp_path) == Config.from_profile("cpu")  # no record: the profile as it is now
    made_at = Config.from_profile("cpu", epochs=25, early_epoch=5, n_train=64, synth={"sigma": (0.5 / 320, 3 / 320)})
    (tmp_path / "results" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "cpu" / STUDY_CONFIG).write_text(made_at.to_yaml())
    assert study_config("cpu", tmp_path) == made_at


def test_publish_refuses_an_unfinished_study(tmp_path):
    _finished_study(tmp_path)
    report = tmp_path / "results" / "smoke" / "report.html"
    table = tmp_path / "results" / "smoke" / "metrics_summary.csv"
    os.utime(report, (1_000_000, 1_000_000))  # the report older than a table: it does not show that table
    with pytest.raises(ValueError, match=r"\w+\.csv is newer than report\.html"):
        publish("smoke", tmp_path)
    table.unlink()
    with pytest.raises(ValueError, match="metrics_summary.csv is missing"):
        publish("smoke", tmp_path)
    assert not (tmp_path / "reference").exists()


def test_what_the_tables_know_about_a_checkpoint(tmp_path):
    from qsmrep.study.plan import RunSpec
    from qsmrep.study.reference import known_test_metrics

    (tmp_path / "qsmrep").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    spec = RunSpec("cpu", "runs", "batch", "elu", 16, 0)
    checkpoint = spec.folder(tmp_path) / "epoch_025.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    os.utime(checkpoint, (1_000_000, 1_000_000))  # written before the evaluation
    own = pd.DataFrame({"label": ["batch/elu16_s0@25"] * 2 + ["batch/elu16_s0@5"], "nrmse": [40.0, 44.0, 70.0]})
    own.to_csv(tmp_path / "results" / "cpu" / "metrics_per_map.csv", index=False)
    reference = pd.DataFrame({"arm": ["batch"] * 4 + [""], "model": ["elu16"] * 4 + ["TKD"], "epoch": [25] * 4 + [0],
                              "seed": [0, 1, 2, 3, 0], "nrmse": [41.0, 42.0, 43.0, 44.0, 20.0]})
    (tmp_path / "reference" / "cpu").mkdir(parents=True)
    reference.to_csv(tmp_path / "reference" / "cpu" / "metrics_per_map.csv", index=False)
    notes = known_test_metrics(checkpoint, spec.config(), 25, tmp_path)
    assert notes["test_nrmse_percent"] == pytest.approx(42.0)
    assert notes["reference_test_nrmse_percent"] == pytest.approx(42.5) and notes["reference_seeds"] == 4
    changed = known_test_metrics(checkpoint, spec.config(lr=1e-2), 25, tmp_path)
    assert "reference_test_nrmse_percent" not in changed  # not trained as the reference was
    # a reference trained at an older scale of the profile (its study_config.yaml) describes models of that scale only
    older = dict(epochs=25, iters_per_epoch=16, n_train=64)
    (tmp_path / "reference" / "cpu" / STUDY_CONFIG).write_text(Config.from_profile("cpu", **older).to_yaml())
    assert "reference_test_nrmse_percent" not in known_test_metrics(checkpoint, spec.config(), 25, tmp_path)
    assert known_test_metrics(checkpoint, spec.config(**older), 25, tmp_path)["reference_seeds"] == 4
    os.utime(checkpoint)  # newer than the evaluation: its table is about an older checkpoint
    assert "test_nrmse_percent" not in known_test_metrics(checkpoint, spec.config(), 25, tmp_path)


def test_every_relative_link_of_the_readme_exists():
    links = re.findall(r"\]\(([^)#]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert "reference/cpu-long/report.html" in local
    assert [link for link in local if not (ROOT / link).exists()] == []
