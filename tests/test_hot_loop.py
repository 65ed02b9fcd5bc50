"""The training loop without host synchronisation (issue 22), checked on a CPU.

Inside an epoch the trainer must read no value back from the device: every read of a tensor's value
(``.item()``, ``bool()``, ``float()``, ``.tolist()``, ...) is recorded while a run trains, and none may fall
between an epoch's first and last training step, on the cached and on the per-batch (GPU) data path,
while a NaN loss still ends the run as diverged at the right epoch and iteration. The accumulation on the
device equals the host loop it replaced to the bit, and ``nonfinite="skip"`` leaves weights and optimiser
state untouched on the device.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.run.config import Config
from qsmrep.run.step import StepResult, TrainingStep, make_optimizer
from qsmrep.run.trainer import EpochTally, build_model, train

from helpers import inject, one_thread

TINY = dict(initial_channels=4, depth=3, device="cpu")
#: the ways Python code reads a tensor's value back (on a GPU each one waits for the device)
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


class Timeline:
    """The events of a run in order: ``step`` and ``stepped`` around each training step, ``read`` for each read of
    a tensor's value. Reads of the optimiser's step counters are left out: PyTorch keeps them on the host unless
    the optimiser is fused or capturable, so reading them waits for no device."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str]] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        original_step = TrainingStep.__call__

        def step(step_self, field, chi):
            self.optimizers[:] = [step_self.optimizer]
            self.events.append(("step", ""))
            result = original_step(step_self, field, chi)
            self.events.append(("stepped", ""))
            return result

        monkeypatch.setattr(TrainingStep, "__call__", step)
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._recording(name, getattr(torch.Tensor, name)))

    def _host_counters(self) -> set[int]:
        return {id(state["step"]) for opt in self.optimizers for state in opt.state.values() if "step" in state}

    def _recording(self, name, original):
        def read(tensor, *args, **kwargs):
            if id(tensor) not in self._host_counters():
                self.events.append(("read", name))
            return original(tensor, *args, **kwargs)
        return read

    def reads_inside_epochs(self, iterations: int) -> list[list[str]]:
        """Per epoch of ``iterations`` steps, the reads made from its first step's start to its last step's end."""
        inside: dict[int, list[str]] = {}
        started = ended = 0
        for kind, name in self.events:
            if kind == "step":
                started += 1
                inside.setdefault((started - 1) // iterations, [])
            elif kind == "stepped":
                ended += 1
            elif started and ended < ((started - 1) // iterations + 1) * iterations:
                inside[(started - 1) // iterations].append(name)
        return [inside[epoch] for epoch in sorted(inside)]


@pytest.mark.parametrize("cache_maps", [True, False], ids=["cached maps", "maps rendered per batch"])
def test_no_value_is_read_back_inside_an_epoch_and_a_nan_loss_still_stops_the_run(tmp_path, monkeypatch, cache_maps):
    cfg = Config.from_profile("smoke", **TINY, epochs=3, early_epoch=1, cache_maps=cache_maps)
    inject(monkeypatch, cfg.iterations + 3)  # epoch 2, iteration 3
    timeline = Timeline(monkeypatch)
    history = train(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    per_epoch = timeline.reads_inside_epochs(cfg.iterations)
    assert len(per_epoch) == 2 and per_epoch == [[], []], per_epoch  # both epochs ran all their steps, unread
    assert any(kind == "read" for kind, _ in timeline.events)  # the recorder sees reads (the epoch ends' and others)
    done = json.loads((tmp_path / "DONE.json").read_text())
    assert (done["status"], done["epoch"], done["iteration"], done["last_good_epoch"]) == ("diverged", 2, 3, 1)
    assert list(history["epoch"]) == [1] and math.isfinite(done["last_finite_step_loss"])


def test_skipping_reads_nothing_either_and_skips_exactly_the_bad_step(tmp_path, monkeypatch):
    cfg = Config.from_profile("smoke", **TINY, epochs=2, early_epoch=1, nonfinite="skip")
    inject(monkeypatch, cfg.iterations + 2)  # epoch 2, iteration 2
    timeline = Timeline(monkeypatch)
    history = train(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    assert timeline.reads_inside_epochs(cfg.iterations) == [[], []]
    assert list(history["skipped_steps"]) == [0, 1] and list(history["iterations"]) == [cfg.iterations] * 2


def _results(values: list[tuple[float, float, float]], finite: list[bool]) -> list[StepResult]:
    return [StepResult({key: torch.tensor(v, dtype=torch.float32) for key, v in zip(("total", "chi", "field"), row)},
                       torch.tensor(ok)) for row, ok in zip(values, finite)]


@pytest.mark.parametrize("stop", [True, False], ids=["stop", "skip"])
def test_the_device_tally_equals_the_host_loop_it_replaced(stop):
    generator = torch.Generator().manual_seed(0)
    values = [tuple(float(v) for v in torch.rand(3, generator=generator) * 10 ** float(torch.randint(-3, 2, ()))) for _ in range(9)]
    finite = [True, True, False, True, True, True, False, True, True]
    values[2] = (math.nan, 1.0, math.nan)
    tally = EpochTally(torch.device("cpu"), stop)
    for iteration, result in enumerate(_results(values, finite), 1):
        tally.add(result, iteration)
    figures = tally.read()
    sums, steps, last = [0.0, 0.0, 0.0], 0, None  # the loop the trainer ran before: Python floats of .item()
    for row, ok in zip(values, finite):
        if not ok and stop:
            break
        if ok:
            sums = [s + torch.tensor(v, dtype=torch.float32).item() for s, v in zip(sums, row)]
            steps, last = steps + 1, torch.tensor(row[0], dtype=torch.float32).item()
    assert figures["sums"] == sums and figures["steps"] == steps and figures["last_finite"] == last  # to the bit
    assert figures["first_nonfinite"] == 3


def test_a_skipped_step_leaves_weights_moments_and_step_count_as_they_were():
    cfg = Config.from_profile("smoke", **TINY, nonfinite="skip", precision="fp32", memory_format="contiguous")
    model = build_model(cfg)
    loss_fn = PhysicsInformedLoss.from_config(cfg)
    step = TrainingStep.from_config(cfg, model, loss_fn, "cpu")
    assert step.optimizer.defaults["fused"] and step.skip_nonfinite
    generator = torch.Generator().manual_seed(1)
    field, chi = (0.05 * torch.randn(2, 1, 16, 16, 16, generator=generator) for _ in range(2))
    assert bool(step(field, chi).finite)  # one good step: moments and step counts exist
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(step.optimizer.state_dict())
    bad = step(field * float("nan"), chi)
    assert not bool(bad.finite)
    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights if "running" not in k and "num_batches" not in k)
    now = step.optimizer.state_dict()["state"]
    for index, entry in state["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, now[index][key]), (index, key)
    assert bool(step(field, chi).finite)  # and the next good step trains on
    assert all(entry["step"].item() == 2 for entry in step.optimizer.state_dict()["state"].values())


def test_skip_needs_the_fused_optimiser():
    cfg = Config.from_profile("smoke", **TINY)
    model = build_model(cfg)
    with pytest.raises(ValueError, match="fused"):
        TrainingStep(model, PhysicsInformedLoss.from_config(cfg), make_optimizer(cfg, model), skip_nonfinite=True)
