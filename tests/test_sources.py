"""The trainer takes its data: a data source handed to it (here patches and maps held in memory) is what
it trains and validates on, it learns from it, and a run folder refuses to resume with another source."""

from __future__ import annotations

import json

import pytest
import torch

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.synth import render_maps
from qsmrep.run import data as data_module
from qsmrep.run.config import Config
from qsmrep.run.sources import SyntheticSource, TensorSource
from qsmrep.run.trainer import train
from qsmrep.run.validation import validate

SIZE, PATCH = 24, 16


def _maps(seeds):
    maps = render_maps(SIZE, seeds)
    return {key: value.unsqueeze(1) for key, value in maps.items()}  # (N, 1, S, S, S)


def _source(n_patches=16, batch_size=4, seed=0, identity="memory-test") -> TensorSource:
    """Patches cropped at fixed corners from 8 training maps, and two validation maps (other seeds)."""
    train_maps = _maps(range(8))
    corners = [(i % 3 * 4, i // 3 % 3 * 4, (i * 5) % 9) for i in range(n_patches)]
    index = [i % 8 for i in range(n_patches)]
    crop = lambda v, c: v[..., c[0]:c[0] + PATCH, c[1]:c[1] + PATCH, c[2]:c[2] + PATCH]  # noqa: E731
    field = torch.stack([crop(train_maps["field"][k], c) for k, c in zip(index, corners)])
    chi = torch.stack([crop(train_maps["chi"][k], c) for k, c in zip(index, corners)])
    val = _maps([1000, 1001])
    validation = [{key: val[key][i] for key in ("chi", "field", "mask")} for i in range(2)]
    return TensorSource(field, chi, validation, batch_size, seed=seed, identity=identity)


def _config(**overrides) -> Config:
    return Config.from_profile("smoke", **{"initial_channels": 4, "depth": 3, "device": "cpu", "epochs": 6,
                                           "early_epoch": 2, **overrides})


def test_trainer_learns_from_an_in_memory_source_and_validates_on_its_maps(tmp_path, monkeypatch):
    def no_generator(*args, **kwargs):
        raise AssertionError("the trainer rendered synthetic maps although it was handed its data")

    monkeypatch.setattr(data_module.SyntheticMaps, "__init__", no_generator)
    source, models = _source(), []
    history = train(_config(), tmp_path, progress=False, data=source, on_finish=models.append)
    assert list(history["epoch"]) == list(range(1, 7)) and (history["iterations"] == source.iterations).all()
    assert history["train_loss"].iloc[-1] < 0.8 * history["train_loss"].iloc[0]
    assert history["val_nrmse"].iloc[-1] < history["val_nrmse"].iloc[0]
    config = Config.load(tmp_path / "config.yaml")
    again = validate(models[0], source.validation, PhysicsInformedLoss.from_config(config), torch.device("cpu"),
                     config.precision, config.memory_format)
    assert again["val_nrmse"] == pytest.approx(history["val_nrmse"].iloc[-1], rel=1e-5)
    assert json.loads((tmp_path / "run.json").read_text())["generator"] == "memory-test"


def test_a_run_is_not_resumed_with_another_source(tmp_path):
    config = _config(epochs=2, early_epoch=1)
    train(config, tmp_path, progress=False, data=_source())
    with pytest.raises(ValueError, match="generator 'memory-test'"):
        train(config, tmp_path, progress=False, data=_source(identity="other"))
    with pytest.raises(ValueError, match="generator 'memory-test'"):
        train(config, tmp_path, progress=False)  # the default source: the synthetic generator


def test_tensor_source_batches_are_a_function_of_the_epoch():
    source = _source(n_patches=10, batch_size=4)
    assert source.iterations == 2
    first = [b[0] for b in source.batches(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, [b[0] for b in source.batches(3)]))
    assert not all(torch.equal(a, b) for a, b in zip(first, [b[0] for b in source.batches(4)]))
    halves = [f for f, _ in source.batches(3, shard=lambda items: items[::2])]
    assert [len(h) for h in halves] == [2, 2]


def test_tensor_source_refuses_bad_input():
    field = torch.zeros(4, 1, 8, 8, 8)
    maps = [{"chi": torch.zeros(1, 8, 8, 8), "field": torch.zeros(1, 8, 8, 8), "mask": torch.ones(1, 8, 8, 8, dtype=bool)}]
    with pytest.raises(ValueError, match="field and chi"):
        TensorSource(field, torch.zeros(4, 8, 8, 8), maps, 2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorSource(field, field, maps, 5)
    with pytest.raises(ValueError, match="validation"):
        TensorSource(field, field, [], 2)


def test_the_default_source_is_the_config_generator():
    config = _config()
    source = SyntheticSource(config, "cpu")
    assert source.iterations == config.iterations and len(source.validation) == config.n_val
    field, chi = next(iter(source.batches(1)))
    assert field.shape == chi.shape == (config.batch_size, 1, config.patch_size, config.patch_size, config.patch_size)
