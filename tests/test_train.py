"""Tests of qsmrep.run.trainer and qsmrep.run.evaluate on the smoke profile, shrunk to a 4-channel, 3-level U-Net.

One uninterrupted reference run (module fixture) serves the learning, file-layout, idempotence,
resume and evaluation tests; everything runs on one CPU thread (the results of a CPU convolution
depend on the thread count, and the machine is shared).
"""

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
import torch

from qsmrep.run import runfolder as runfolder_mod
from qsmrep.run import runtime
from qsmrep.core.synth import GENERATOR_VERSION
from qsmrep.run import trainer as train_mod
from qsmrep.run.step import clip_and_norm
from qsmrep.run.config import Config
from qsmrep.run.data import SyntheticMaps
from qsmrep.run.evaluate import evaluate_checkpoint, evaluate_runs, load_model
from qsmrep.core.metrics import METRICS
from qsmrep.core.physics import forward_field
from qsmrep.run.runfolder import (
    HISTORY_COLUMNS,
    TIMING_COLUMNS,
    RunFolder,
    checkpoint_name,
    load_checkpoint,
    load_model_state,
)
from qsmrep.run.trainer import train

from helpers import Boom, inject, one_thread

TINY = dict(initial_channels=4, depth=3, device="cpu")


def tiny(**overrides) -> Config:
    return Config.from_profile("smoke", **{**TINY, **overrides})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted smoke run: (config, folder, history)."""
    cfg = tiny()
    out = tmp_path_factory.mktemp("reference")
    history = train(cfg, out, progress=False)
    return cfg, out, history


def read_history(out) -> pd.DataFrame:
    return RunFolder(out).history()


def is_finished(out, cfg) -> bool:
    return RunFolder(out).is_finished(runtime.resolve(cfg))


def _numbers(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=list(TIMING_COLUMNS)).reset_index(drop=True)


def _assert_same_weights(path_a, path_b):
    a, b = load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _stop_after_epoch(monkeypatch, cfg, out, epoch: int) -> None:
    """Train ``cfg`` into ``out`` and crash right after epoch ``epoch`` was fully written."""
    original = RunFolder.write_history

    def write_then_die(self, rows):
        original(self, rows)
        if len(rows) == epoch:
            raise Boom(f"after epoch {epoch}")

    monkeypatch.setattr(RunFolder, "write_history", write_then_die)
    with pytest.raises(Boom):
        train(cfg, out, progress=False)
    monkeypatch.setattr(RunFolder, "write_history", original)


# ------------------------------------------------------------------ learning and files
def test_training_learns(reference):
    cfg, _, history = reference
    first, last = history["val_nrmse"].iloc[0], history["val_nrmse"].iloc[-1]
    print(f"smoke val NRMSE: epoch 1 {first:.1f} %, epoch {cfg.epochs} {last:.1f} %")
    assert last < 0.85 * first
    assert history["val_loss"].iloc[-1] < 0.85 * history["val_loss"].iloc[0]
    assert np.isfinite(history[["train_loss", "val_loss", "val_nrmse"]].to_numpy()).all()
    # dead units by both criteria, recorded every epoch; a dead unit by the slope criterion is also never positive
    # for ELU (its slope is small only for negative inputs), so the slope count cannot exceed the never-positive one
    assert history["zero_gradient_fraction"].between(0, 1).all() and history["dead_fraction"].between(0, 1).all()
    assert (history["zero_gradient_fraction"] <= history["dead_fraction"] + 1e-9).all()


def test_run_folder_layout(reference):
    cfg, out, history = reference
    assert list(history["epoch"]) == list(range(1, cfg.epochs + 1))
    on_disk = pd.read_csv(out / "history.csv")
    for column in ("epoch", "train_loss", "val_loss", "val_nrmse", "seconds"):
        assert column in on_disk.columns
    assert list(on_disk.columns) == HISTORY_COLUMNS
    pd.testing.assert_frame_equal(on_disk, history, check_dtype=False)
    assert Config.load(out / "config.yaml") == runtime.resolve(cfg)  # the resolved configuration
    assert (out / checkpoint_name(cfg.early)).is_file() and cfg.early == 2
    assert (out / checkpoint_name(cfg.epochs)).is_file()
    assert (out / "last.pt").is_file() and json.loads((out / "DONE.json").read_text())["status"] == "finished"
    meta = json.loads((out / "run.json").read_text())
    assert meta["generator"] == GENERATOR_VERSION
    assert meta["machines"] == [runtime.machine_label("cpu")] == RunFolder(out).machines()
    assert meta["machines"][0].startswith(runtime.cpu_name()) and meta["machines"][0].endswith(", 1 thread")
    assert is_finished(out, cfg)
    early = load_checkpoint(out / checkpoint_name(cfg.early))
    assert early["epoch"] == cfg.early and Config.from_dict(early["config"]) == runtime.resolve(cfg)
    assert len(early["history"]) == cfg.early
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():  # atomic writes keep the usual file mode, not mkstemp's 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_second_call_does_nothing(reference, monkeypatch):
    cfg, out, history = reference
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")}
    monkeypatch.setattr(train_mod, "validate", lambda *a, **k: pytest.fail("trained again"))
    again = train(cfg, out, progress=False)
    pd.testing.assert_frame_equal(again, history)
    pd.testing.assert_frame_equal(read_history(out), history, check_dtype=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.pt")} == mtimes


def test_cost_table_names_the_machines_each_variant_was_timed_on(reference, tmp_path):
    """Two seeds of one variant, timed on two machines, and a run from before machines were recorded: the cost
    table joins the first pair's machines and says 'not recorded' for the other, and times the step again here."""
    import shutil

    from qsmrep.study.collect import cost_table

    cfg, out, _ = reference
    (tmp_path / "pyproject.toml").touch()  # a project root (qsmrep.study.plan.project_root)
    (tmp_path / "qsmrep").mkdir()
    runs = tmp_path / "results" / "smoke" / "runs" / cfg.arm
    for seed, machines in ((0, ["B CPU, AVX2, 1 thread"]), (1, ["A CPU, AVX512, 2 threads"]), (2, None)):
        folder = runs / f"{cfg.variant}_s{seed}"
        shutil.copytree(out, folder)
        (folder / "config.yaml").write_text(runtime.resolve(cfg.replace(seed=seed)).to_yaml())
        meta = json.loads((folder / "run.json").read_text())
        meta.update(machines=machines) if machines else meta.pop("machines")
        (folder / "run.json").write_text(json.dumps(meta))
    table = cost_table("smoke", tmp_path, write=False)
    assert len(table) == 1 and table.seeds.iloc[0] == 3
    assert table.machine.iloc[0] == "A CPU, AVX512, 2 threads + B CPU, AVX2, 1 thread + not recorded"
    # timed on several machines: the step is timed again here, and the time to target follows in iterations
    row = table.iloc[0]
    assert row.timed_here_on == runtime.machine_label(runtime.resolve_device("auto"))
    assert 0 < row.seconds_per_iteration_here < 60
    assert 0 < row.iterations_to_target <= cfg.iterations * cfg.epochs and row.iterations_to_target % cfg.iterations == 0
    assert row.seconds_to_target_here == pytest.approx(row.iterations_to_target * row.seconds_per_iteration_here)
    for seed in (0, 1, 2):
        meta_path = runs / f"{cfg.variant}_s{seed}" / "run.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "machines": ["A CPU, AVX512, 2 threads"]}))
    assert "seconds_per_iteration_here" not in cost_table("smoke", tmp_path, write=False)  # one machine: no re-timing
    # epochs of 2 s each, the second paused for 10 min: the pause adds to the plain sum, not to the time to the target
    for seed in (0, 1, 2):
        history_path = runs / f"{cfg.variant}_s{seed}" / "history.csv"
        history = pd.read_csv(history_path).assign(seconds=2.0)
        history.loc[history.epoch == 2, "seconds"] += 600.0
        history.to_csv(history_path, index=False)
    paused = cost_table("smoke", tmp_path, write=False).iloc[0]
    assert paused.train_seconds == pytest.approx(2.0 * cfg.epochs + 600.0)
    assert paused.iterations_to_target >= 2 * cfg.iterations  # the paused epoch is on the way to the target
    assert paused.seconds_to_target == pytest.approx(paused.iterations_to_target * 2.0 / cfg.iterations)


def test_different_config_in_same_folder_is_refused(reference):
    cfg, out, _ = reference
    before = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match="initial_channels"):
        train(cfg.replace(initial_channels=8), out, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(cfg.replace(lr=5e-4), out, progress=False)
    assert (out / "config.yaml").read_text() == before


def test_interrupted_and_resumed_run_is_identical(reference, tmp_path, monkeypatch):
    cfg, ref_out, ref_history = reference
    # 1) stop right after epoch 3 was fully written
    _stop_after_epoch(monkeypatch, cfg, tmp_path, 3)
    assert len(read_history(tmp_path)) == 3
    # 2) resume at another commit and crash in the middle of epoch 6 (iteration 2 of 4): epochs 4, 5 are kept
    monkeypatch.setattr(runfolder_mod, "code_commit", lambda: "resumed2")
    inject(monkeypatch, at_call=2 * cfg.iterations + 2, kind="raise")
    with pytest.raises(Boom):
        train(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    assert len(read_history(tmp_path)) == 5
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    # 3) finish, on another machine and at a third commit: the run names both machines and every commit
    monkeypatch.setattr(runtime, "machine_label", lambda device: "Other CPU, AVX2, 2 threads")
    monkeypatch.setattr(runfolder_mod, "code_commit", lambda: "finished3")
    history = train(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    resumed = RunFolder(tmp_path)
    assert resumed.machines() == [RunFolder(ref_out).machines()[0], "Other CPU, AVX2, 2 threads"]
    assert resumed.commits() == [RunFolder(ref_out).commits()[0], "resumed2", "finished3"]
    assert [r["epoch"] for r in resumed.meta()["resumes"]] == [4, 6]
    assert RunFolder(ref_out).commits() == [runfolder_mod.code_commit()]  # started and finished at one commit
    pd.testing.assert_frame_equal(_numbers(history), _numbers(ref_history))
    pd.testing.assert_frame_equal(_numbers(read_history(tmp_path)), _numbers(read_history(ref_out)))
    for name in ("last.pt", checkpoint_name(cfg.epochs), checkpoint_name(cfg.early)):
        _assert_same_weights(tmp_path / name, ref_out / name)


# ------------------------------------------------------------------ resume refuses what would mix
def test_resume_refuses_other_precision_device_generator_or_generator_settings(reference, tmp_path):
    import shutil

    cfg, out, _ = reference
    run = tmp_path / "run"
    shutil.copytree(out, run)
    saved = runtime.resolve(cfg)
    other = "fp32" if saved.precision == "bf16" else "bf16"
    with pytest.raises(ValueError, match=f"precision: '{saved.precision}' there, '{other}' now"):
        train(cfg.replace(precision=other), run, progress=False)
    with pytest.raises(ValueError, match="synth"):  # the generator's settings are part of the saved config
        train(cfg.replace(synth={"n_spheres": 10}), run, progress=False)
    text = (run / "config.yaml").read_text()
    saved_config = Config.load(run / "config.yaml")
    for name in ("device", "data_device"):  # a run made on (or with maps from) a GPU is not continued on the CPU
        (run / "config.yaml").write_text(saved_config.replace(**{name: "cuda"}).to_yaml())
        with pytest.raises(ValueError, match=rf"\({name}: 'cuda' there, 'cpu' now\)"):
            train(cfg, run, progress=False)
    (run / "config.yaml").write_text(text)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "generator": "numpy-0"}))
    with pytest.raises(ValueError, match="generator 'numpy-0'"):
        train(cfg, run, progress=False)
    assert "n_spheres: 80" in (out / "config.yaml").read_text()


def test_device_data_path_matches_cached_maps(reference, tmp_path, monkeypatch):
    """Maps rendered per batch on the training device (the GPU data path, here on the CPU), interrupted and
    resumed, train exactly like maps cached once: same history, same weights."""
    cfg, out, ref_history = reference
    per_batch = cfg.replace(cache_maps=False, num_workers=0)
    _stop_after_epoch(monkeypatch, per_batch, tmp_path, 4)
    history = train(per_batch, tmp_path, progress=False)
    pd.testing.assert_frame_equal(_numbers(history), _numbers(ref_history))
    for name in ("last.pt", checkpoint_name(cfg.early)):
        _assert_same_weights(tmp_path / name, out / name)


def test_worker_data_path_matches_cached_maps(reference, tmp_path):
    """Maps rendered ahead by CPU DataLoader workers (the paper profile's path on a CPU) give the cached maps'
    patches, batch by batch, and train like them (one map at a time is not bit-identical to a batch of maps)."""
    from qsmrep.run.data import epoch_plan, patch_batches

    cfg, out, ref_history = reference
    plan = epoch_plan(cfg.seed, 1, cfg.n_train, cfg.map_size, cfg.patch_size, cfg.batch_size, cfg.iterations)
    cached = SyntheticMaps.from_config(cfg, "train", "cpu", cache=True)
    uncached = SyntheticMaps.from_config(cfg, "train", "cpu", cache=False)
    pairs = list(zip(patch_batches(uncached, cfg.patch_size, plan, num_workers=2),
                     patch_batches(cached, cfg.patch_size, plan)))
    assert len(pairs) == cfg.iterations
    for (field, chi), (ref_field, ref_chi) in pairs:
        torch.testing.assert_close(chi, ref_chi, rtol=0, atol=1e-6 * float(ref_chi.abs().max()))
        torch.testing.assert_close(field, ref_field, rtol=0, atol=1e-5 * float(ref_field.abs().max()))
    # training through the workers: float-level differences of the maps grow through AdamW (measured: 4e-5 in the
    # first epoch's train loss, 1-3 % in validation), so the curve is compared loosely; the batches above are the check
    history = train(cfg.replace(cache_maps=False, num_workers=2, data_device="cpu"), tmp_path, progress=False)
    curves = [c for c in ("train_loss", "val_loss", "val_nrmse") if c in ref_history]
    assert len(curves) == 3
    pd.testing.assert_frame_equal(_numbers(history)[curves], _numbers(ref_history)[curves], check_exact=False, rtol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_path_matches_cached_maps(tmp_path):
    """On a GPU, the maps of each iteration rendered on a side stream (DeviceBatches) are the cached maps'
    patches, and a short training through them follows the cached run (run by scripts/gpu_check.sh tests)."""
    from qsmrep.run.data import epoch_plan, patch_batches

    cfg = tiny(device="cuda", data_device="cuda", epochs=4, early_epoch=2)
    plan = epoch_plan(cfg.seed, 1, cfg.n_train, cfg.map_size, cfg.patch_size, cfg.batch_size, cfg.iterations)
    cached = SyntheticMaps.from_config(cfg, "train", "cuda", cache=True)
    uncached = SyntheticMaps.from_config(cfg, "train", "cuda", cache=False)
    batches = list(patch_batches(uncached, cfg.patch_size, plan))
    torch.cuda.synchronize()
    for (field, chi), (ref_field, ref_chi) in zip(batches, patch_batches(cached, cfg.patch_size, plan), strict=True):
        assert field.is_cuda and chi.is_cuda
        torch.testing.assert_close(chi, ref_chi, rtol=0, atol=1e-6 * float(ref_chi.abs().max()))
        torch.testing.assert_close(field, ref_field, rtol=0, atol=1e-5 * float(ref_field.abs().max()))
    per_batch = train(cfg.replace(cache_maps=False), tmp_path / "per_batch", progress=False)
    once = train(cfg, tmp_path / "cached", progress=False)
    curves = ["train_loss", "val_loss", "val_nrmse"]
    pd.testing.assert_frame_equal(per_batch[curves], once[curves], check_exact=False, rtol=5e-2)


def test_geometry_reaches_the_generator():
    cfg = tiny(b0_dir=(1.0, 0.0, 0.0), voxel_size=(1.0, 1.0, 1.5))
    maps = SyntheticMaps.from_config(cfg, "val", "cpu")
    sample = maps[0]
    torch.testing.assert_close(sample["field"][0], forward_field(sample["chi"][0], (1.0, 1.0, 1.5), (1.0, 0.0, 0.0)))
    default = SyntheticMaps.from_config(tiny(), "val", "cpu")[0]
    torch.testing.assert_close(sample["chi"], default["chi"])  # same picture, other field
    assert not torch.allclose(sample["field"], default["field"])


def test_gradient_clipping_caps_the_global_norm():
    model = torch.nn.Linear(4, 3)
    model(torch.randn(5, 4) * 100).square().sum().backward()
    before = clip_and_norm(model, 0.0)  # 0: the norm, nothing clipped
    assert before > 1.0
    assert clip_and_norm(model, 0.0) == pytest.approx(before.item())
    clip_and_norm(model, 1.0)
    after = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters()))
    assert after.item() == pytest.approx(1.0, rel=1e-5)
    assert tiny(grad_clip=0.5).grad_clip == 0.5


# ------------------------------------------------------------------ non-finite numbers: a diverged run is a result
def test_nan_loss_ends_the_run_as_diverged(tmp_path, monkeypatch):
    cfg = tiny(epochs=4, early_epoch=1)
    inject(monkeypatch, at_call=2 * cfg.iterations + 2, kind="loss")  # epoch 3, iteration 2
    history = train(cfg, tmp_path, progress=False)
    assert list(history["epoch"]) == [1, 2]
    done = json.loads((tmp_path / "DONE.json").read_text())
    assert (done["status"], done["epoch"], done["iteration"], done["last_good_epoch"]) == ("diverged", 3, 2, 2)
    assert done["last_finite"]["val_nrmse"] == pytest.approx(history["val_nrmse"].iloc[-1])
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert list(read_history(tmp_path)["epoch"]) == [1, 2]
    assert is_finished(tmp_path, cfg) and RunFolder(tmp_path).status() == "diverged"
    assert (tmp_path / checkpoint_name(1)).exists() and not (tmp_path / checkpoint_name(4)).exists()
    # a complete (diverged) run started again is returned as it is; force starts it from scratch
    monkeypatch.undo()
    assert list(train(cfg, tmp_path, progress=False)["epoch"]) == [1, 2]
    assert list(train(cfg, tmp_path, progress=False, force=True)["epoch"]) == [1, 2, 3, 4]
    assert RunFolder(tmp_path).status() == "finished"


def test_nan_gradient_in_the_first_epoch(tmp_path, monkeypatch):
    cfg = tiny(epochs=2, early_epoch=1)
    inject(monkeypatch, at_call=3, kind="grad")  # epoch 1, iteration 3
    history = train(cfg, tmp_path, progress=False)
    assert len(history) == 0
    done = json.loads((tmp_path / "DONE.json").read_text())
    assert (done["status"], done["epoch"], done["iteration"], done["last_good_epoch"]) == ("diverged", 1, 3, None)
    assert not (tmp_path / "last.pt").exists()


def test_nonfinite_skip_records_skipped_steps(tmp_path, monkeypatch):
    cfg = tiny(epochs=2, early_epoch=1, nonfinite="skip")
    inject(monkeypatch, at_call=cfg.iterations + 3, kind="grad")  # epoch 2, iteration 3
    history = train(cfg, tmp_path, progress=False)
    assert list(history["skipped_steps"]) == [0, 1]
    assert RunFolder(tmp_path).status() == "finished"
    weights = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()


# ------------------------------------------------------------------ evaluation and loading
def test_evaluate_checkpoint(reference):
    cfg, out, _ = reference
    table, arrays = evaluate_checkpoint(out / checkpoint_name(cfg.epochs), n_test=1, device="cpu")
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["model"], row["arm"], row["activation"], row["channels"], row["epoch"], row["map"]) == \
        ("elu4", cfg.arm, "elu", 4, cfg.epochs, 0)
    for metric in METRICS:
        assert np.isfinite(row[metric]), metric
    assert arrays["pred_0"].shape == (cfg.map_size,) * 3


def test_evaluate_runs_with_baselines(reference, tmp_path):
    cfg, out, _ = reference
    checkpoints = {"elu4@2": out / checkpoint_name(cfg.early), "elu4@10": out / checkpoint_name(cfg.epochs)}
    per_map = evaluate_runs(checkpoints, tmp_path, cfg.replace(n_test=1), device="cpu")
    assert set(per_map["model"]) == {"elu4", "TKD", "Tikhonov"}
    assert set(per_map["label"]) == {"elu4@2", "elu4@10", "TKD", "Tikhonov"}
    for metric in METRICS:
        assert metric in per_map.columns and np.isfinite(per_map[metric]).all()
    summary = pd.read_csv(tmp_path / "metrics_summary.csv")
    assert len(summary) == 4
    assert any(c.startswith("nrmse") for c in summary.columns)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "metrics_per_map.csv", keep_default_na=False), per_map, check_dtype=False,
                                  check_exact=False)
    with np.load(tmp_path / "arrays.npz") as arrays:
        for key in ("chi_0", "field_0", "mask_0", "elu4@10/pred_0", "TKD/pred_0", "Tikhonov/pred_0"):
            assert arrays[key].shape == (cfg.map_size,) * 3, key
    # the trained model beats its early checkpoint
    nrmse = per_map.groupby("label")["nrmse"].mean()
    assert nrmse["elu4@10"] < nrmse["elu4@2"]
    # checkpoints trained on other data than the test maps are refused, naming the field
    with pytest.raises(ValueError, match="data_seed"):
        evaluate_runs(checkpoints, tmp_path / "other", cfg.replace(data_seed=7), device="cpu")


def test_evaluation_loads_each_checkpoint_once_and_scores_as_the_numpy_metrics(reference, tmp_path, monkeypatch):
    """One load per checkpoint (the test maps, noisy ones and the phantom in the same pass); the torch metrics
    that score on a GPU, here on the CPU, equal the numpy metrics of the predictions the table saved."""
    from qsmrep.core.metrics import compute_metrics
    from qsmrep.run import evaluate as evaluate_module

    cfg, out, _ = reference
    checkpoints = {"elu4@2": out / checkpoint_name(cfg.early), "elu4@10": out / checkpoint_name(cfg.epochs)}
    loads = []
    original = evaluate_module.load_checkpoint
    monkeypatch.setattr(evaluate_module, "load_checkpoint", lambda path, **kw: loads.append(path) or original(path, **kw))
    monkeypatch.setattr(evaluate_module, "TORCH_METRICS_ON_CPU", True)  # the GPU's scoring path, here on the CPU
    per_map = evaluate_runs(checkpoints, tmp_path, cfg.replace(n_test=2), device="cpu", baselines=False)
    assert sorted(map(str, loads)) == sorted(map(str, checkpoints.values()))
    with np.load(tmp_path / "arrays.npz") as arrays:
        for label in checkpoints:
            row = per_map[(per_map.label == label) & (per_map["map"] == 0)].iloc[0]
            expected = compute_metrics(arrays[f"{label}/pred_0"], arrays["chi_0"], arrays["mask_0"])
            for metric, value in expected.items():
                assert row[metric] == pytest.approx(value, rel=1e-9), (label, metric)


def test_crop_check_scores_full_maps_and_patch_sized_crops(reference):
    from qsmrep.run.evaluate import crop_check

    cfg, out, history = reference
    row = crop_check(out / checkpoint_name(cfg.epochs), n_maps=2, device="cpu")
    assert (row["arm"], row["channels"], row["epoch"], row["maps"]) == (cfg.arm, 4, cfg.epochs, 2)
    assert row["val_nrmse_full_maps"] == pytest.approx(history["val_nrmse"].iloc[-1], rel=1e-3)  # validation's own number
    assert 0 < row[f"val_nrmse_centre_crops_{cfg.patch_size}"] < 1000


def test_load_refuses_other_architecture(reference, tmp_path):
    cfg, out, _ = reference
    path = out / checkpoint_name(cfg.epochs)
    with pytest.raises(ValueError, match="initial_channels"):
        load_model(path, expect=cfg.replace(initial_channels=8))
    ckpt = load_checkpoint(path)
    ckpt["model"]["head.weight"] = torch.zeros(1, 8, 1, 1, 1)
    torch.save(ckpt, tmp_path / "altered.pt")
    with pytest.raises(ValueError, match=r"architecture mismatch: head\.weight has shape \(1, 8, 1, 1, 1\)"):
        load_model(tmp_path / "altered.pt")
    del ckpt["model"]["head.bias"]
    model = train_mod.build_model(cfg)
    with pytest.raises(ValueError, match="head"):
        load_model_state(model, ckpt["model"])


def test_load_refuses_corrupted_checkpoints(reference, tmp_path):
    cfg, out, _ = reference
    data = (out / checkpoint_name(cfg.epochs)).read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 10)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for name, needle in (("truncated.pt", "corrupted"), ("garbage.pt", "corrupted"), ("foreign.pt", "not a qsmrep"),
                         ("missing.pt", "no such file")):
        with pytest.raises(ValueError, match=needle):
            load_checkpoint(tmp_path / name)


def test_unwritable_output_folder(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="out: cannot write"):
        train(tiny(), tmp_path / "afile" / "sub", progress=False)


def test_one_process_trains_in_a_folder_at_a_time(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():
        with pytest.raises(ValueError, match="another process is training"):
            with RunFolder(tmp_path / "run").lock(wait_seconds=0.2):
                pass
    with RunFolder(tmp_path / "run").lock(wait_seconds=0.2):  # released when the holder leaves
        pass


@pytest.mark.slow
def test_compiled_training_step_learns_records_dead_units_and_resumes(tmp_path, monkeypatch):
    """compile=on (torch.compile of the training step): the run learns, the dead-unit recorder (hooks on the
    uncompiled model that validation uses) still records, and an interrupted run resumes."""
    cfg = tiny(compile="on", epochs=4, early_epoch=1, precision="fp32")
    _stop_after_epoch(monkeypatch, cfg, tmp_path, 2)
    history = train(cfg, tmp_path, progress=False)
    assert list(history["epoch"]) == [1, 2, 3, 4] and RunFolder(tmp_path).status() == "finished"
    assert history["val_nrmse"].iloc[-1] < history["val_nrmse"].iloc[0]
    assert history["dead_fraction"].notna().all()
    assert Config.load(tmp_path / "config.yaml").compile == "on"
