"""The GPU path of issue 22: where the validation maps are kept, what ``estimate`` counts, and (on CUDA only,
run by ``scripts/gpu_check.sh tests``) that training iterations queue work without one host synchronisation,
validation from pinned host memory equals validation from GPU memory, and the device metrics on CUDA equal
the numpy ones."""

from __future__ import annotations

import pytest
import torch

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.run.config import Config
from qsmrep.run.data import SyntheticMaps, epoch_plan, map_bytes, patch_batches
from qsmrep.run.sources import VALIDATION_GPU_FRACTION, validation_bytes, validation_on_host
from qsmrep.study import estimate as estimate_module

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TINY = dict(initial_channels=4, depth=3)


def test_the_paper_validation_maps_stay_on_a_141_gb_card_and_go_to_host_memory_on_80_gb():
    paper = Config.from_profile("paper")
    assert validation_bytes(paper) == 100 * 9 * 320**3 == 100 * map_bytes(320)  # 29.5 GB: χ, field (float32), mask
    assert not validation_on_host(paper, "cuda", card_bytes=141e9)  # 21 % of an H200
    assert validation_on_host(paper, "cuda", card_bytes=80e9)  # 37 % of an H100 or A100 80GB
    assert validation_bytes(paper) / 141e9 <= VALIDATION_GPU_FRACTION < validation_bytes(paper) / 80e9
    assert not validation_on_host(paper, "cpu")
    with pytest.raises(ValueError, match="pinned"):
        SyntheticMaps.from_config(Config.from_profile("smoke"), "val", "cpu", cache=True, pinned=True)


def test_estimate_counts_the_validation_maps_and_names_the_smallest_card(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines, problems = estimate_module.estimate("paper")
    text = "\n".join(lines)
    assert "validation maps: ~27.5 GiB (100 maps of 320³" in text
    step = max(estimate_module.training_memory_bytes(Config.from_profile("paper", initial_channels=c)) for c in (16, 32))
    paper = Config.from_profile("paper", initial_channels=32)
    for name, gb in estimate_module.CARD_MEMORY_GB:  # the first card whose memory holds it all, counted here by hand
        on_host = paper.n_val * 9 * 320**3 > 0.25 * gb * 1e9
        need = step + 4 * 24 * 320**3 + (0 if on_host else paper.n_val * 9 * 320**3)
        if need <= 0.9 * gb * 1e9:
            break
    assert f"smallest card: {name} ({gb} GB)" in text and ("pinned host memory" if on_host else "GPU memory") in text
    # the 40 GB A100 of the paper holds the run only with the validation maps in host memory
    assert estimate_module.gpu_memory_bytes(paper, step, 40e9) < 0.9 * 40e9
    assert step + 4 * 24 * 320**3 + validation_bytes(paper) > 0.9 * 40e9
    assert any("no CUDA GPU" in p for p in problems)


# ------------------------------------------------------------------ CUDA only (scripts/gpu_check.sh tests)
@cuda
def test_cuda_training_iterations_queue_without_a_host_synchronisation():
    """Getting a batch rendered on the side stream, the step and the device tally of an iteration, under
    torch.cuda's sync debug mode set to raise: any synchronising call fails the test."""
    from qsmrep.run.step import TrainingStep
    from qsmrep.run.trainer import EpochTally, build_model

    for nonfinite in ("stop", "skip"):
        config = Config.from_profile("smoke", **TINY, device="cuda", data_device="cuda", cache_maps=False,
                                     nonfinite=nonfinite, precision="bf16", memory_format="channels_last")
        model = build_model(config, "cuda")
        step = TrainingStep.from_config(config, model, PhysicsInformedLoss.from_config(config), "cuda")
        maps = SyntheticMaps.from_config(config, "train", "cuda", cache=False)
        plan = epoch_plan(0, 1, config.n_train, config.map_size, config.patch_size, config.batch_size, 6)
        batches = iter(patch_batches(maps, config.patch_size, plan))
        tally = EpochTally(torch.device("cuda"), nonfinite == "stop")
        tally.add(step(*next(batches)), 1)  # the first iteration warms up (kernels, allocator, optimiser state)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for iteration in range(2, 7):
                tally.add(step(*next(batches)), iteration)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        figures = tally.read()
        assert figures["steps"] == 6 and figures["first_nonfinite"] == 0


@cuda
def test_cuda_validation_from_pinned_host_memory_equals_validation_from_gpu_memory():
    from qsmrep.run.trainer import build_model
    from qsmrep.run.validation import validate

    config = Config.from_profile("smoke", **TINY, device="cuda", precision="fp32", memory_format="contiguous")
    model = build_model(config, "cuda")
    loss_fn = PhysicsInformedLoss.from_config(config)
    on_gpu = SyntheticMaps.from_config(config, "val", "cuda", cache=True)
    pinned = SyntheticMaps.from_config(config, "val", "cuda", cache=True, pinned=True)
    assert pinned[0]["field"].is_pinned() and on_gpu[0]["field"].is_cuda
    a, b = (validate(model, maps, loss_fn, torch.device("cuda")) for maps in (on_gpu, pinned))
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6) and a["val_nrmse"] == pytest.approx(b["val_nrmse"], rel=1e-6)


@cuda
def test_cuda_device_metrics_equal_the_numpy_metrics():
    from qsmrep.core.metrics import compute_metrics
    from qsmrep.core.metrics_torch import METRICS_TORCH, compute_metrics_torch
    from qsmrep.core.synth import render_maps

    maps = render_maps(40, [21, 22], device="cuda")
    for i in range(2):
        chi, mask = maps["chi"][i], maps["mask"][i]
        pred = 0.8 * chi + 0.02 * torch.randn(chi.shape, device="cuda")
        got = dict(zip(METRICS_TORCH, compute_metrics_torch(pred, chi, mask).tolist()))
        for name, value in compute_metrics(pred, chi, mask).items():
            assert got[name] == pytest.approx(value, rel=1e-4), name
