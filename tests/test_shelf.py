"""Runs kept without their weights (qsmrep.study.shelf, qsmrep.run.scores): shelved, restored into a clean results
folder and evaluated from their records, they give the tables the weights gave."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from qsmrep.run.config import Config
from qsmrep.run.evaluate import crop_check, evaluate_runs
from qsmrep.run.runfolder import RunFolder
from qsmrep.run.scores import identity, load, record_path, save
from qsmrep.run.trainer import train
from qsmrep.study.collect import checkpoints_for_evaluation
from qsmrep.study.plan import RunSpec
from qsmrep.study.shelf import shelf_dir, shelve, unshelve

from helpers import one_thread

KEY = "runs/batch/elu16_s0"


def project(root):
    """``root`` made a project root (qsmrep.study.plan.project_root), so that results/ and reference/ are its own."""
    (root / "qsmrep").mkdir()
    (root / "pyproject.toml").write_text("")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A project root with one finished smoke run of the study, evaluated once from its weights, then shelved:
    (root, spec, that evaluation's per-map table, its arrays, the final checkpoint's crop check, the keys kept)."""
    root = project(tmp_path_factory.mktemp("project"))
    spec = RunSpec.from_key("smoke", KEY)
    with one_thread():
        train(spec.config(device="cpu"), spec.folder(root), progress=False)
        checkpoints = checkpoints_for_evaluation("smoke", root)
        assert all(path.suffix == ".pt" for path in checkpoints.values())
        table = evaluate_runs(checkpoints, root / "first", Config.from_profile("smoke"), device="cpu", baselines=False)
        crop = crop_check(spec.folder(root) / "epoch_010.pt", device="cpu")
        kept = shelve("smoke", root, device="cpu", say=lambda _: None)
    with np.load(root / "first" / "arrays.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    return root, spec, table, arrays, crop, kept


def fresh_machine(root, tmp_path):
    """A project root holding only the reference/ of ``root`` (a fresh clone: no results, no weights)."""
    shutil.copytree(root / "reference", project(tmp_path) / "reference")
    return tmp_path


def test_a_run_restored_without_weights_is_evaluated_as_its_weights_were(trained, tmp_path):
    root, spec, table, arrays, crop, kept = trained
    first = root / "first"
    assert kept == [KEY]
    names = {p.name for p in (shelf_dir("smoke", root) / KEY).iterdir()}
    assert not [n for n in names if n.endswith(".pt")]
    assert {"config.yaml", "run.json", "history.csv", "DONE.json", "scores_002.json", "scores_002.npz",
            "scores_010.json", "scores_010.npz"} <= names
    trained_at = spec.folder(root)
    root = fresh_machine(root, tmp_path)
    assert unshelve("smoke", [spec], root, dry_run=True) == [KEY] and not spec.folder(root).exists()
    assert unshelve("smoke", [spec], root) == [KEY]
    for name in ("config.yaml", "run.json", "history.csv", "DONE.json"):
        assert (spec.folder(root) / name).read_bytes() == (trained_at / name).read_bytes(), name
    assert RunFolder(spec.folder(root)).is_finished(spec.config()) and not list(spec.folder(root).glob("*.pt"))
    assert unshelve("smoke", [spec], root) == []  # a run that has a folder is left alone

    records = checkpoints_for_evaluation("smoke", root)
    assert sorted(records) == sorted(set(table.label)) and all(path.suffix == ".json" for path in records.values())
    again = evaluate_runs(records, root / "second", Config.from_profile("smoke"), device="cpu", baselines=False)
    pd.testing.assert_frame_equal(again, table)
    with np.load(root / "second" / "arrays.npz") as restored:
        assert sorted(restored.files) == sorted(arrays)
        for key in arrays:
            np.testing.assert_allclose(restored[key], arrays[key], rtol=2 ** -10, atol=1e-6, err_msg=key)
    assert crop_check(records["batch/elu16_s0@10"]) == crop
    for name in ("metrics_phantom.csv", "dead_units.csv", "metrics_noisy.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(root / "second" / name), pd.read_csv(first / name))


def test_a_record_is_refused_by_an_evaluation_it_cannot_stand_for(trained):
    root, *_ = trained
    records = {label: record_path(path) for label, path in checkpoints_for_evaluation("smoke", root).items()}
    with pytest.raises(ValueError, match="n_test 2, this evaluation uses 1"):
        evaluate_runs(records, root / "fewer", Config.from_profile("smoke", n_test=1), device="cpu", baselines=False)
    with pytest.raises(ValueError, match="snr 10.0, this evaluation uses 20.0"):
        evaluate_runs(records, root / "noisier", Config.from_profile("smoke"), device="cpu", baselines=False, snr=20.0)


def test_a_shelved_run_of_another_scale_is_not_restored(trained, tmp_path):
    root, spec, *_ = trained
    other = fresh_machine(root, tmp_path)
    config = shelf_dir("smoke", other) / KEY / "config.yaml"
    config.write_text(Config.load(config).replace(epochs=12).to_yaml())
    with pytest.raises(ValueError, match="another epochs"):
        unshelve("smoke", [spec], other)
    assert not spec.folder(other).exists()


def test_a_diverged_models_kept_predictions_saturate_at_the_float16_range(tmp_path):
    config = Config.from_profile("smoke")
    evaluation = identity(config, None, 1)
    big = np.array([[3.5e5, -2.0e6, 1.25, np.inf], [-np.inf, 0.0, 65504.0, -0.5]], dtype=np.float32)
    path = save(tmp_path / "epoch_010.pt", config, 10, evaluation, {}, {"pred_0": big})
    with np.load(path.with_suffix(".npz")) as stored:
        assert stored["pred_0"].dtype == np.float16 and np.isfinite(stored["pred_0"]).all()
    *_, arrays = load(path, evaluation)
    np.testing.assert_array_equal(arrays["pred_0"], np.clip(big, -65504.0, 65504.0))
    # a record written before the rule, with float16 infinities in it, reads the same
    with np.errstate(over="ignore"):
        np.savez_compressed(path.with_suffix(".npz"), pred_0=big.astype(np.float16))
    *_, arrays = load(path, evaluation)
    np.testing.assert_array_equal(arrays["pred_0"], np.clip(big, -65504.0, 65504.0))
