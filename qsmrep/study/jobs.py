"""The steps of ``workflow/Snakefile`` that need more than one shell line: a training job.

A training job (``python -m qsmrep job train <key>``) runs ``notebooks/10_train.ipynb`` with
papermill for one run of the study, named by its key (:meth:`qsmrep.study.plan.RunSpec.from_key`; the
notebook builds the run's configuration and folder from the same key), logs to
``results/<profile>/notebooks/``, and succeeds only when the run folder holds its completion
marker. With ``gpus`` > 0 it first takes a GPU of its own: GPU k is held by an exclusive ``flock``
on ``results/<profile>/.gpu/gpu<k>.lock`` for the whole job, and the notebook sees only that GPU
(``CUDA_VISIBLE_DEVICES``). Snakemake's ``gpu`` resource keeps the number of concurrent trainings at
most the number of GPUs; the locks decide which GPU each one gets, so no two share one. Locks of a
killed job are released by the kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from qsmrep.run.runfolder import RunFolder
from qsmrep.study.plan import RunSpec, project_root, results_dir


@contextlib.contextmanager
def gpu_slot(lock_dir: Path, gpus: int, poll_seconds: float = 2.0):
    """Hold the first free GPU of ``gpus`` (its index) for the duration of the block; None when ``gpus`` is 0."""
    if gpus <= 0:
        yield None
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for k in range(gpus):
            handle = open(lock_dir / f"gpu{k}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield k
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_seconds)


#: seconds between the progress lines of a training in the workflow's console output
PROGRESS_SECONDS = 60.0


def _say(message: str) -> None:
    print(f"    {message}", flush=True)


def _wait_reporting(process: subprocess.Popen, key: str, folder: RunFolder, epochs: int,
                    every_seconds: float = PROGRESS_SECONDS) -> int:
    """Wait for a training process, printing its newest finished epoch every ``every_seconds`` when it moved on;
    its exit code. An interrupt waits for the process (which got the same signal) before it is passed on."""
    reported = 0
    try:
        while True:
            try:
                return process.wait(timeout=every_seconds)
            except subprocess.TimeoutExpired:
                history = folder.history()
                if len(history) > reported:
                    reported = len(history)
                    _say(f"train {key}: epoch {reported}/{epochs}, val NRMSE {history['val_nrmse'].iloc[-1]:.1f} %")
    except BaseException:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def train_job(profile: str, key: str, force: bool = False, gpus: int = 0) -> int:
    """Train run ``key`` of ``profile`` through ``notebooks/10_train.ipynb``; 0 when its folder is complete."""
    spec = RunSpec.from_key(profile, key)
    root = project_root()
    notebooks = results_dir(profile) / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    stem = key.replace("/", "_")
    log = notebooks / f"train_{stem}.log"
    command = [sys.executable, "-m", "papermill", str(root / "notebooks" / "10_train.ipynb"),
               str(notebooks / f"10_train_{stem}.ipynb"), "-k", "qsmrep", "--cwd", str(root), "--log-output",
               "--no-progress-bar", "-p", "profile", profile, "-p", "key", spec.key, "-p", "force", str(force)]
    started = time.monotonic()
    with gpu_slot(results_dir(profile) / ".gpu", gpus) as gpu:
        env = dict(os.environ)
        where = ""
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
            where = f" on GPU {gpu}"
        _say(f"train {key}: started{where} (log: {os.path.relpath(log, root)})")
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            code = _wait_reporting(process, key, RunFolder(spec.folder()), spec.config().epochs)
    seconds = time.monotonic() - started
    folder = RunFolder(spec.folder())
    if code == 0 and folder.done() is not None:
        _say(f"train {key}: {folder.status()} in {seconds:.0f} s")
        return 0
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-5:]
    print(f"!!  train {key}: failed after {seconds:.0f} s; last lines of {log}:", *lines, sep="\n", file=sys.stderr)
    return 1
