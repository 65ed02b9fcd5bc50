"""Fault injection through the command line (issue 7): SIGKILL at three moments, bad input.

Every command runs as ``python -m qsmrep`` in a subprocess with ``PYTHONPATH`` set to the
repository root (works from a clean clone without installation) and one CPU thread, on the smoke
profile shrunk to a 4-channel, 3-level U-Net so the whole file takes well under a minute.
"""

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from qsmrep.run.config import Config
from qsmrep.run.runfolder import TIMING_COLUMNS, RunFolder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--profile", "smoke", "--activation", "elu", "--channels", "4", "--set", "depth=3", "--device", "cpu", "--seed", "3"]
TIMING = list(TIMING_COLUMNS)  # machine-dependent columns (timing, memory)
pytestmark = pytest.mark.slow


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "qsmrep", *map(str, args)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_train(out):
    return subprocess.Popen([sys.executable, "-m", "qsmrep", "train", *TINY, "--out", str(out), "--no-progress"],
                            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def history_rows(out) -> int:
    try:
        return max(0, len((Path(out) / "history.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted CLI run of TINY."""
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli("train", *TINY, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "10 epochs" in proc.stdout
    return out


# ------------------------------------------------------------------ SIGKILL and resume
def test_sigkill_three_times_then_identical_to_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(7)
    for target in (2, 5, 8):
        proc = start_train(out)
        deadline = time.monotonic() + 120
        while history_rows(out) < target:
            assert proc.poll() is None, f"run ended before epoch {target}: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))  # somewhere in the next epoch (training, validation or writing)
        assert proc.poll() is None, "run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        # what is on disk after the kill is whole: a readable history of consecutive epochs, a loadable resume point
        epochs = list(pd.read_csv(out / "history.csv")["epoch"])
        assert target <= len(epochs) < 10 and epochs == list(range(1, len(epochs) + 1))
        assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= len(epochs)
        if target == 5:  # what a kill during a write leaves behind: the restart must clean it up
            (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    proc = run_cli("train", *TINY, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    history, ref_history = pd.read_csv(out / "history.csv"), pd.read_csv(reference / "history.csv")
    assert list(history["epoch"]) == list(range(1, 11))  # each epoch exactly once
    pd.testing.assert_frame_equal(history.drop(columns=TIMING), ref_history.drop(columns=TIMING))
    for name in ("last.pt", "epoch_002.pt", "epoch_010.pt"):
        assert_same_weights(out / name, reference / name)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    assert sorted(p.name for p in out.iterdir()) == ["DONE.json", "config.yaml", "epoch_002.pt", "epoch_010.pt", "history.csv",
                                                     "last.pt", "run.json", "train.lock"]


# A kill between the final epoch's writes: after its checkpoint (before last.pt), after last.pt (before the
# history), after the history (before the completion marker). On the old layout, where a run counted as finished
# once epoch_<last>.pt existed, the first two left a run reported finished whose history lacked the last epoch.
KILL_AT = """
import os, signal, sys
from qsmrep.run import files
from qsmrep.cli import main
point = sys.argv[1]
save_torch, write_text = files.save_torch, files.write_text
def killing_save(path, obj):
    if point == "after-checkpoint" and os.path.basename(str(path)) == "last.pt" and obj["epoch"] == 10:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_torch(path, obj)
def killing_write(path, text):
    name = os.path.basename(str(path))
    if (point == "after-last" and name == "history.csv" and text.count(chr(10)) == 11) or \
       (point == "after-history" and name == "DONE.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    return write_text(path, text)
files.save_torch, files.write_text = killing_save, killing_write  # write_json writes through write_text
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point", ["after-checkpoint", "after-last", "after-history"])
def test_sigkill_between_the_last_writes_is_resumed_not_finished(reference, tmp_path, point):
    out = tmp_path / "run"
    script = tmp_path / "kill.py"
    script.write_text(KILL_AT)
    proc = subprocess.run([sys.executable, str(script), point, "train", *TINY, "--out", str(out), "--no-progress"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = RunFolder(out)
    assert folder.status() == "partial" and not folder.is_finished()
    proc = run_cli("train", *TINY, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert folder.is_finished() and folder.status() == "finished"
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == list(range(1, 11))
    pd.testing.assert_frame_equal(history.drop(columns=TIMING), pd.read_csv(reference / "history.csv").drop(columns=TIMING))
    for name in ("last.pt", "epoch_010.pt"):
        assert_same_weights(out / name, reference / name)


def test_finished_run_started_again_does_nothing(reference):
    before = {p.name: p.stat().st_mtime_ns for p in reference.glob("*.pt")}
    history = (reference / "history.csv").read_text()
    proc = run_cli("train", *TINY, "--out", reference, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in reference.glob("*.pt")} == before
    assert (reference / "history.csv").read_text() == history


# ------------------------------------------------------------------ ten kinds of bad input
def assert_one_line_error(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


TRAIN_CONFIG_ERRORS = [
    ("unknown activation", ["--activation", "elux"], ["activation", "elux", "did you mean 'elu'"]),
    ("unknown profile", ["--profile", "smok"], ["profile", "smok", "did you mean 'smoke'"]),
    ("patch larger than map", ["--set", "patch_size=64"], ["patch_size", "64", "map_size"]),
    ("size not divisible", ["--set", "patch_size=24"], ["patch_size", "24", "divisible", "16"]),
    ("negative epochs", ["--epochs", "-1"], ["epochs", "-1"]),
    ("zero B0 vector", ["--set", "b0_dir=[0,0,0]"], ["b0_dir", "zero"]),
    ("non-positive voxel size", ["--set", "voxel_size=[1,0,1]"], ["voxel_size", "> 0"]),
    ("profile as an override", ["--set", "profile=cpu"], ["--profile"]),
    ("missing config file", ["--config", "/nonexistent/c.yaml"], ["config file", "does not exist"]),
    ("non-finite activation parameter", ["--set", "activation_params={alpha: .nan}"], ["alpha", "finite"]),
]


@pytest.mark.parametrize("kind, args, needles", TRAIN_CONFIG_ERRORS, ids=[c[0] for c in TRAIN_CONFIG_ERRORS])
def test_bad_training_input(kind, args, needles, tmp_path):
    # the plain smoke profile (depth 5: patch sizes must be multiples of 16); the bad option comes last
    proc = run_cli("train", "--profile", "smoke", "--device", "cpu", *args, "--out", tmp_path / "run", "--no-progress")
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()  # nothing written


def test_corrupted_checkpoint(reference, tmp_path):
    data = (reference / "epoch_010.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.pt").write_bytes(os.urandom(4096))
    for name in ("truncated.pt", "garbage.pt"):
        proc = run_cli("evaluate", tmp_path / name, "--out", tmp_path / "eval")
        assert_one_line_error(proc, "checkpoint", name, "corrupted")
    assert not (tmp_path / "eval").exists()


def test_wrong_architecture_checkpoint(reference, tmp_path):
    # a run folder trained with 4 channels, continued with 8: refused (config mismatch), folder untouched
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    config = (run / "config.yaml").read_text()
    proc = run_cli("train", *TINY, "--channels", "8", "--epochs", "12", "--out", run, "--no-progress")
    assert_one_line_error(proc, "initial_channels", "4", "8")
    assert (run / "config.yaml").read_text() == config
    # a checkpoint whose tensors do not fit its architecture: evaluate and resume both refuse it
    ckpt = torch.load(reference / "last.pt", weights_only=True)
    ckpt["model"]["encoders.1.0.weight"] = torch.zeros(16, 4, 3, 3, 3)
    torch.save(ckpt, tmp_path / "altered.pt")
    proc = run_cli("evaluate", tmp_path / "altered.pt", "--out", tmp_path / "eval")
    assert_one_line_error(proc, "architecture mismatch", "encoders.1.0.weight", "(16, 4, 3, 3, 3)")
    ckpt["epoch"], ckpt["history"] = 5, ckpt["history"][:5]
    torch.save(ckpt, run / "last.pt")
    proc = run_cli("train", *TINY, "--out", run, "--no-progress")
    assert_one_line_error(proc, "architecture mismatch", "encoders.1.0.weight")


def test_unwritable_output_folder(reference, tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    proc = run_cli("train", *TINY, "--out", tmp_path / "afile" / "sub", "--no-progress")
    assert_one_line_error(proc, "out", "cannot write", "afile")
    proc = run_cli("evaluate", reference / "epoch_010.pt", "--out", tmp_path / "afile" / "sub", "--no-baselines")
    assert_one_line_error(proc, "out", "cannot write", "afile")


def test_argparse_errors_are_one_line_exit_2(tmp_path):
    proc = run_cli("train", "--profile", "smoke", "--channels", "four", "--out", tmp_path)
    assert_one_line_error(proc, "--channels", "four")
    proc = run_cli("train", "--profile", "smoke")
    assert_one_line_error(proc, "--out")


def test_cli_mistakes_outside_training_are_one_line_errors(reference, tmp_path, capsys):
    """Config files, devices, sources and counts that cannot work: one line on stderr, exit 2, no traceback."""
    from qsmrep.cli import main

    (tmp_path / "bad.yaml").write_text("epochs: [3\n")
    cases = [
        (["config", "--config", str(tmp_path / "bad.yaml")], ["bad.yaml", "not valid YAML"]),
        (["config", "--config", str(tmp_path)], ["cannot be read"]),
        (["evaluate", str(reference / "epoch_010.pt"), "--out", str(tmp_path / "e"), "--device", "tpu"], ["device", "tpu"]),
        (["predict", "--checkpoint", str(reference / "epoch_010.pt"), "--field", "f.nii", "--out", str(tmp_path / "c.nii"), "--device", "tpu"],
         ["device", "tpu"]),
        (["offline-html", str(tmp_path / "missing.html"), str(tmp_path / "o.html")], ["cannot read", "missing.html"]),
        (["estimate", "--profile", "smoke", "--seeds", "0"], ["--seeds", "≥ 1"]),
    ]
    for argv, needles in cases:
        with pytest.raises(SystemExit) if argv[0] == "estimate" else contextlib.nullcontext():
            code = main(argv)
            assert code == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and all(n in err[0] for n in needles), (argv, err)


def test_partial_config_file_overrides_only_its_fields(tmp_path, capsys):
    """A config file holding some fields changes those over the chosen profile; the rest stay the profile's."""
    from qsmrep.cli import main

    (tmp_path / "short.yaml").write_text("epochs: 3\n")
    assert main(["config", "--profile", "smoke", "--config", str(tmp_path / "short.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    smoke = Config.from_profile("smoke")
    assert printed["epochs"] == 3 and printed["map_size"] == smoke.map_size and printed["n_train"] == smoke.n_train
    assert printed["early_epoch"] == 1  # the profile's 20 % of the shorter run, not its epoch 2 of 10
    (tmp_path / "saved.yaml").write_text(Config.from_profile("smoke", seed=7).to_yaml())  # a run's config.yaml
    assert main(["config", "--config", str(tmp_path / "saved.yaml")]) == 0
    assert Config.from_dict(yaml.safe_load(capsys.readouterr().out)) == Config.from_profile("smoke", seed=7)


def test_estimate_refuses_only_the_paper_profile_without_a_gpu(capsys, monkeypatch):
    from qsmrep.cli import main

    monkeypatch.delenv("QSMREP_ALLOW_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["estimate", "--profile", "smoke"]) == 0
    assert main(["estimate", "--profile", "paper"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
