"""One training run on disk: its configuration, history, checkpoints and completion marker.

Layout of a run folder::

    config.yaml    the resolved configuration (written first; a different config is refused)
    run.json       generator version, torch version and commit that started the run; the machines it trained on;
                   the epoch, commit and time of each resume
    history.csv    one row per finished epoch (epoch, train_loss, …, val_loss, val_nrmse, seconds, …)
    last.pt        model + optimiser + history after the last finished epoch (the resume point)
    epoch_EEE.pt   checkpoints at the early epoch (20 % of the budget) and the last epoch
    scores_EEE.*   their test scores, written by the evaluation (qsmrep.run.scores): what stands for a checkpoint
                   whose weights are gone (a run restored from reference/<profile>/trained/)
    DONE.json      the completion marker: status ``finished`` or ``diverged`` (a non-finite loss or
                   gradient stopped training: a result, with the epoch and the last finite values)
    train.lock     held (``flock``) by the one process training here; released by the kernel when it dies

Per epoch the files are written in the order epoch checkpoint → ``last.pt`` → ``history.csv``, each
atomically; ``DONE.json`` is written last of all. A run is finished exactly when ``DONE.json``
exists: a process killed at any moment before it (SIGKILL included) leaves a run that resumes from
``last.pt``, and a run whose ``last.pt`` already holds the final epoch just completes its files.
The workflow declares ``DONE.json`` as the training step's output, never the folder, so the
engine's clean-up of a failed job cannot touch the resume state.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import itertools
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from qsmrep.run import files
from qsmrep.run.config import EXECUTION_FIELDS, Config
from qsmrep.run.gitinfo import code_commit

HISTORY_COLUMNS = [
    "epoch", "iterations", "train_loss", "train_chi", "train_field", "val_loss", "val_nrmse", "dead_fraction",
    "skipped_steps", "seconds", "data_seconds", "val_seconds", "peak_mem_mb", "zero_gradient_fraction",
]
#: ``dead_fraction``: channels never positive on validation map 0 (qsmrep.run.units); ``zero_gradient_fraction``
#: (added 2026-12-03, empty in older runs): channels dead by the slope criterion of their activation
#: machine-dependent history columns (timing, memory)
TIMING_COLUMNS = ("seconds", "data_seconds", "val_seconds", "peak_mem_mb")
FINISHED, DIVERGED = "finished", "diverged"


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); ValueError if it is not a readable qsmrep checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: no such file {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupted/truncated files raise many kinds of errors
        raise ValueError(f"checkpoint: {str(path)!r} is corrupted or not a checkpoint ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "epoch"} <= set(ckpt):
        raise ValueError(f"checkpoint: {str(path)!r} is not a qsmrep checkpoint (missing model/config/epoch)")
    return ckpt


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Load ``state`` into ``model``; ValueError naming the first mismatching tensor."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise ValueError(f"{source}: architecture mismatch: parameter {name} missing")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(f"{source}: architecture mismatch: {name} has shape {tuple(state[name].shape)}, "
                             f"the model expects {tuple(tensor.shape)}")
    extra = sorted(set(state) - set(own))
    if extra:
        raise ValueError(f"{source}: architecture mismatch: unexpected parameter {extra[0]}")
    model.load_state_dict(state)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunFolder:
    """The files of one training run (see the module docstring); every write is atomic."""

    CONFIG, META, HISTORY, LAST, DONE, LOCK = "config.yaml", "run.json", "history.csv", "last.pt", "DONE.json", "train.lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def checkpoint(self, epoch: int) -> Path:
        return self.path / checkpoint_name(epoch)

    # ------------------------------------------------------------------ state
    def config(self) -> Config | None:
        """The saved configuration, or None before a run started here."""
        path = self.file(self.CONFIG)
        if not path.exists():
            return None
        try:
            return Config.load(path)
        except Exception as err:  # noqa: BLE001 - any unreadable config is reported the same way
            raise ValueError(f"out: {path} is unreadable ({err}); remove it or choose another folder") from None

    def meta(self) -> dict:
        path = self.file(self.META)
        return json.loads(path.read_text()) if path.exists() else {}

    def done(self) -> dict | None:
        """The completion marker's content, or None while the run is not complete."""
        path = self.file(self.DONE)
        return json.loads(path.read_text()) if path.exists() else None

    def status(self) -> str:
        """``finished``, ``diverged``, ``partial`` (epochs done, not complete) or ``empty``."""
        done = self.done()
        if done is not None:
            return done["status"]
        return "partial" if self.file(self.LAST).exists() else "empty"

    def is_finished(self, config: Config | None = None) -> bool:
        """True when the run is complete (finished or diverged) and, if given, holds ``config``'s run."""
        if self.done() is None:
            return False
        return config is None or not self.differences(config)

    def differences(self, config: Config) -> list[str]:
        """Fields in which the saved configuration differs from ``config`` (execution fields aside, and the fields
        ``config`` leaves ``"auto"``: a run saves them as resolved when it started)."""
        saved = self.config()
        if saved is None:
            return []
        a, b = saved.to_dict(), config.to_dict()
        return [k for k in b if k not in EXECUTION_FIELDS and b[k] != "auto" and a.get(k) != b[k]]

    def history(self) -> pd.DataFrame:
        """The history table (empty frame with the columns if there is none)."""
        path = self.file(self.HISTORY)
        return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=HISTORY_COLUMNS)

    def resume_state(self, map_location="cpu") -> dict | None:
        """``last.pt`` (model, optimiser, epoch, history), or None before the first finished epoch."""
        path = self.file(self.LAST)
        return load_checkpoint(path, map_location=map_location) if path.exists() else None

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def lock(self, wait_seconds: float = 30.0):
        """Hold the folder's exclusive training lock (``train.lock``, a kernel ``flock``, released when the holder
        dies); waits up to ``wait_seconds`` for another holder, then raises ValueError."""
        files.check_writable_dir(self.path)
        deadline = time.monotonic() + wait_seconds
        with open(self.file(self.LOCK), "w") as handle:
            for attempt in itertools.count():
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 0 and wait_seconds >= 2:
                        print(f"waiting up to {wait_seconds:.0f} s for the process training in {self.path}", file=sys.stderr)
                    if time.monotonic() > deadline:
                        raise ValueError(f"out: another process is training in {self.path} (lock {self.file(self.LOCK)}); "
                                         "wait for it to finish") from None
                    time.sleep(0.5)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def prepare(self, config: Config, generator: str, force: bool = False) -> None:
        """Make the folder ready for ``config``'s run: refuse another configuration or generator, write config and meta.

        ``force`` discards whatever run the folder holds."""
        files.check_writable_dir(self.path)
        files.remove_temporaries(self.path)
        if force:
            for path in [*(self.file(n) for n in (self.CONFIG, self.META, self.HISTORY, self.LAST, self.DONE)),
                         *self.path.glob("epoch_*.pt"), *self.path.glob("scores_*.*")]:
                path.unlink(missing_ok=True)
        differing = self.differences(config)
        if differing:
            k = differing[0]
            raise ValueError(f"out: {self.path} holds a run with a different config ({k}: {self.config().to_dict().get(k)!r} "
                             f"there, {config.to_dict()[k]!r} now); use another folder or --force")
        meta = self.meta()
        if meta and meta.get("generator") != generator:
            raise ValueError(f"out: {self.path} holds a run whose maps came from generator {meta.get('generator')!r}, "
                             f"this qsmrep renders {generator!r}; a run cannot mix them: use another folder or --force")
        files.write_text(self.file(self.CONFIG), config.to_yaml())
        if not meta:
            files.write_json(self.file(self.META), {"generator": generator, "torch": torch.__version__,
                                                  "commit": code_commit(), "started": _now(), "machines": []})

    def add_machine(self, machine: str) -> None:
        """Note in the meta that the run trains (or resumes) on ``machine`` (:func:`qsmrep.run.runtime.machine_label`),
        so that its seconds are never compared with another machine's unseen."""
        meta = self.meta()
        if machine not in meta.setdefault("machines", []):
            meta["machines"].append(machine)
            files.write_json(self.file(self.META), meta)

    def note_resume(self, epoch: int) -> None:
        """Note in the meta that the run resumes at ``epoch`` with this checkout's code, so that a run trained across
        several sittings names every commit it trained at (:meth:`commits`)."""
        meta = self.meta()
        meta.setdefault("resumes", []).append({"epoch": int(epoch), "commit": code_commit(), "at": _now()})
        files.write_json(self.file(self.META), meta)

    def commits(self) -> list[str]:
        """The commits the run trained at, in order, each once: where it started, where it resumed
        (:meth:`note_resume`), where it finished (``DONE.json``)."""
        meta = self.meta()
        found = [meta.get("commit"), *(r.get("commit") for r in meta.get("resumes", [])), (self.done() or {}).get("commit")]
        return list(dict.fromkeys(str(c) for c in found if c))

    def machines(self) -> list[str]:
        """The machines the run trained on (:meth:`add_machine`); empty for a run started before 2026-12-06."""
        return list(self.meta().get("machines", []))

    def save_epoch(self, state: dict, optimizer_state: dict, rows: list[dict], keep_checkpoint: bool) -> None:
        """After an epoch: its checkpoint (if kept), the resume point, then the history, in that order."""
        if keep_checkpoint:
            files.save_torch(self.checkpoint(state["epoch"]), state)
        files.save_torch(self.file(self.LAST), {**state, "optimizer": optimizer_state})
        self.write_history(rows)

    def write_history(self, rows: list[dict]) -> None:
        files.write_text(self.file(self.HISTORY), pd.DataFrame(rows, columns=HISTORY_COLUMNS).to_csv(index=False))

    def mark(self, status: str, **info) -> None:
        """Write the completion marker, last of all the run's files."""
        if status not in (FINISHED, DIVERGED):
            raise ValueError(f"status: {status!r} is not one of {[FINISHED, DIVERGED]}")
        files.write_json(self.file(self.DONE), {"status": status, "completed": _now(), "commit": code_commit(), **info})


__all__ = ["RunFolder", "load_checkpoint", "load_model_state", "checkpoint_name", "HISTORY_COLUMNS",
           "TIMING_COLUMNS", "FINISHED", "DIVERGED"]
