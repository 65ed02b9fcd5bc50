"""Classical baselines with their parameter chosen on the validation maps, and the noisy test set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qsmrep.core.metrics import nrmse
from qsmrep.core.physics import DipolePhysics
from qsmrep.run import data as data_module
from qsmrep.run import evaluate as evaluate_module
from qsmrep.run.baselines import GRIDS, invert, search, tune
from qsmrep.run.config import Config
from qsmrep.run.noise import NoisyMaps, add_field_noise

CONFIG = Config.from_profile("smoke", n_val=3, n_test=2)


def _maps(split: str, n: int = 3):
    return data_module.SyntheticMaps.from_config(CONFIG, split, device="cpu", cache=True, n=n)


def test_the_search_picks_the_grid_value_with_the_lowest_validation_nrmse():
    maps, physics = _maps("val"), DipolePhysics.from_config(CONFIG)
    table = search("TKD", maps, physics)
    assert list(table.parameter) == list(GRIDS["TKD"])
    for row in table.itertuples():  # each row is the mean NRMSE of that threshold, recomputed here
        expected = np.mean([nrmse(physics.tkd(maps[i]["field"][0], threshold=row.parameter), maps[i]["chi"][0],
                                  maps[i]["mask"][0]) for i in range(len(maps))])
        assert row.val_nrmse == pytest.approx(expected, rel=1e-6)
    assert table.loc[table.chosen, "val_nrmse"].item() == table.val_nrmse.min()


def test_field_noise_has_the_stated_snr_inside_the_mask_and_none_outside():
    sample = _maps("test", 1)[0]
    field, mask = sample["field"], sample["mask"]
    noisy = add_field_noise(field, mask, 10.0, torch.Generator().manual_seed(0))
    noise = (noisy - field)[mask]
    assert float(field[mask].pow(2).mean().sqrt() / noise.std()) == pytest.approx(10.0, rel=0.05)
    assert torch.equal(noisy[~mask], field[~mask])
    again = NoisyMaps([sample])[0]["field"]
    assert torch.equal(again, NoisyMaps([sample])[0]["field"])  # the same noise on every call


def test_noise_moves_the_chosen_parameters_towards_more_regularisation():
    maps, physics = _maps("val"), DipolePhysics.from_config(CONFIG)
    clean, _ = tune(maps, physics)
    noisy, _ = tune(NoisyMaps(maps, 10.0), physics)
    assert noisy["TKD"] > clean["TKD"] and noisy["Tikhonov"] > clean["Tikhonov"]


def test_evaluation_takes_the_parameters_from_the_validation_maps_not_the_test_maps(tmp_path, monkeypatch):
    """Replacing the validation maps by noisy ones changes the chosen parameters and with them the baselines'
    test NRMSE; the test maps themselves stay what they were."""
    evaluate_module.evaluate_runs({}, tmp_path / "a", CONFIG, device="cpu", snr=None)
    original = data_module.SyntheticMaps.from_config

    def noisy_validation(config, split, *args, **kwargs):
        maps = original(config, split, *args, **kwargs)
        return NoisyMaps(maps, 5.0) if split == "val" else maps

    monkeypatch.setattr(data_module.SyntheticMaps, "from_config", staticmethod(noisy_validation))
    evaluate_module.evaluate_runs({}, tmp_path / "b", CONFIG, device="cpu", snr=None)
    chosen = [pd.read_csv(tmp_path / d / "baselines.csv").query("chosen").set_index("method").parameter for d in "ab"]
    assert (chosen[1] > chosen[0]).all()
    tests = [pd.read_csv(tmp_path / d / "metrics_per_map.csv").set_index(["model", "map"]).nrmse for d in "ab"]
    assert (tests[1] > tests[0]).all()  # a cruder parameter is worse on the clean test maps
    arrays = [np.load(tmp_path / d / "arrays.npz") for d in "ab"]
    assert np.array_equal(arrays[0]["chi_0"], arrays[1]["chi_0"]) and np.array_equal(arrays[0]["field_0"], arrays[1]["field_0"])
    recomputed = nrmse(invert("TKD", torch.from_numpy(arrays[1]["field_0"]), DipolePhysics.from_config(CONFIG),
                              chosen[1]["TKD"]), arrays[1]["chi_0"], arrays[1]["mask_0"])
    assert tests[1].loc[("TKD", 0)] == pytest.approx(recomputed, rel=1e-6)


def test_the_noisy_test_set_is_written_beside_the_noise_free_one(tmp_path):
    evaluate_module.evaluate_runs({}, tmp_path, CONFIG, device="cpu", snr=10.0)
    clean, noisy = pd.read_csv(tmp_path / "metrics_per_map.csv"), pd.read_csv(tmp_path / "metrics_noisy.csv")
    assert set(noisy.test_set) == {"SNR 10"} and len(noisy) == len(clean)
    assert (noisy.set_index(["model", "map"]).nrmse > clean.set_index(["model", "map"]).nrmse).all()
    search_table = pd.read_csv(tmp_path / "baselines.csv")
    assert set(search_table.test_set) == {"noise-free", "SNR 10"} and search_table.chosen.sum() == 4


def test_rescoring_replaces_only_the_baselines_rows(tmp_path):
    """The committed reference has tables, not checkpoints: its baselines are redone from the generator alone."""
    from qsmrep.study.rescore import rescore_baselines

    evaluate_module.evaluate_runs({}, tmp_path / "fresh", CONFIG, device="cpu", snr=10.0)
    old = tmp_path / "old"
    old.mkdir()
    network = {"model": "elu16", "arm": "batch", "activation": "elu", "channels": 16, "seed": 0, "epoch": 10, "map": 0,
               "nrmse": 40.0, "label": "batch/elu16_s0@10"}
    stale = {"model": "TKD", "arm": "", "activation": "", "channels": 0, "seed": 0, "epoch": 0, "map": 0, "nrmse": 99.0,
             "label": "TKD"}
    pd.DataFrame([network, stale]).to_csv(old / "metrics_per_map.csv", index=False)
    pd.DataFrame([{**network, "label": "batch/elu16_s0@10"}, stale]).drop(columns="map").to_csv(
        old / "metrics_phantom.csv", index=False)
    chosen = rescore_baselines(old, CONFIG, snr=10.0)
    per_map = pd.read_csv(old / "metrics_per_map.csv")
    assert per_map[per_map.model == "elu16"].nrmse.tolist() == [40.0]
    fresh = pd.read_csv(tmp_path / "fresh" / "metrics_per_map.csv").set_index(["model", "map"]).nrmse
    again = per_map[per_map.model.isin(["TKD", "Tikhonov"])].set_index(["model", "map"]).nrmse
    pd.testing.assert_series_equal(again.sort_index(), fresh.sort_index())  # as a full evaluation scores them
    search = pd.read_csv(tmp_path / "fresh" / "baselines.csv").query("chosen")
    assert chosen["noise-free"] == dict(zip(search[search.test_set == "noise-free"].method,
                                           search[search.test_set == "noise-free"].parameter))
    assert set(pd.read_csv(old / "metrics_noisy.csv").model) == {"TKD", "Tikhonov"}
    phantom = pd.read_csv(old / "metrics_phantom.csv")
    assert 99.0 not in phantom.nrmse.tolist() and set(phantom.model) == {"elu16", "TKD", "Tikhonov"}
