"""Data-parallel training with torchrun: two CPU processes (Gloo) end with identical weights, equal to
one process training on the same batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from qsmrep.run.config import Config
from qsmrep.run.trainer import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, sys, torch
from qsmrep.run.config import Config
from qsmrep.run.trainer import train
config = Config.from_profile("smoke", initial_channels=4, depth=3, epochs=2, early_epoch=1, device="cpu", norm=sys.argv[2],
                             precision="fp32")
def dump(model):
    torch.save(model.state_dict(), os.path.join(sys.argv[1], f"rank{os.environ.get('RANK', '0')}.weights"))
train(config, sys.argv[1], progress=False, on_finish=dump)
"""


def _torchrun(tmp_path, norm):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"run_{norm}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(out), norm], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(out / "rank0.weights", weights_only=True)
    rank1 = torch.load(out / "rank1.weights", weights_only=True)
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)  # parameters and buffers
    assert pd.read_csv(out / "history.csv").epoch.tolist() == [1, 2]
    return rank0


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(tmp_path):
    _torchrun(tmp_path, "batch")  # on CPUs each rank normalises its own share of the batch
    rank0 = _torchrun(tmp_path, "none")
    # without batch statistics, one process on the same four patches per iteration reaches the same
    # weights (up to summation order)
    torch.set_num_threads(1)
    single = {}
    config = Config.from_profile("smoke", initial_channels=4, depth=3, epochs=2, early_epoch=1, device="cpu", norm="none",
                                 precision="fp32")  # the comparison is about data parallelism, not precision
    train(config, tmp_path / "single", progress=False, on_finish=lambda m: single.update(m.state_dict()))
    for name, tensor in rank0.items():
        assert torch.allclose(tensor, single[name], rtol=1e-3, atol=1e-4), name


def test_uneven_batch_split_is_refused():
    from qsmrep.run.distributed import Context, shard

    assert shard([0, 1, 2, 3], Context(rank=1, world=2)) == [1, 3]
    with pytest.raises(ValueError, match="batch_size"):
        shard([0, 1, 2], Context(rank=0, world=2))
