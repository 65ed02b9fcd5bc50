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

Every notebook step runs in the Jupyter kernel :data:`KERNEL` of the workflow's own interpreter
(:func:`use_own_kernel`), and every step asks a cluster scheduler for what it needs: host memory
(:func:`training_memory_mb`, :func:`evaluation_memory_mb`, :data:`NOTEBOOK_MB`) and a wall-time limit
(:func:`runtime_minutes`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from qsmrep.run.config import Config
from qsmrep.run.data import map_bytes
from qsmrep.run.runfolder import RunFolder
from qsmrep.study.estimate import training_memory_bytes
from qsmrep.study.plan import RunSpec, project_root, results_dir

#: the Jupyter kernel of every notebook step (scripts/ensure_env.sh registers it for the workflow's interpreter)
KERNEL = "qsmrep"
MB = 10**6
#: host memory of a step's processes before its arrays (MB; SLURM reads it as MiB): on a cluster node the job's own
#: Snakemake, then papermill, the kernel and, for a training, the job itself, each with torch loaded. sacct's MaxRSS
#: (batch step + job step) at the smoke profile, arrays of ~0.1 GB: 16-channel trainings 1664–1730 MiB, evaluation
#: 1408, the other notebooks 941–1130 (two runs)
PROCESS_MB = 2000
#: what a notebook step without large arrays asks for (data, figures, report, sweep: MB)
NOTEBOOK_MB = 2000
#: host memory a CUDA context adds to a training on a GPU (MB; the CUDA, cuDNN and cuBLAS libraries; not measured here)
CUDA_HOST_MB = 3000
#: factor on the arrays: the 32-channel smoke trainings (2296–2405 MiB) held 2.2× the estimate's difference to the
#: 16-channel ones above them (oneDNN buffers, allocator caches; the estimate itself claims ±30 %)
ARRAY_MARGIN = 2.5
#: wall-time limits (minutes) per profile: (a training, any other step). Measured on the 2-core Xeon with AMX: smoke
#: trainings ~1 min; cpu trainings (3200 iterations, bf16) 7–23 min, evaluation 8 min; cpu-long (6400 iterations)
#: twice that, and up to 80 min for 32 channels on one thread (--jobs 2: 0.74 s/iteration); on an AVX2-only CPU
#: (fp32) the 32-channel step is 1.1 s on 2 threads: cpu 59 min, cpu-long about 2 h
RUNTIME_MINUTES = {"smoke": (20, 20), "cpu": (90, 60), "cpu-long": (240, 60), "gpu": (60, 60), "paper": (720, 240)}


def training_memory_mb(config: Config, on_gpu: bool = False) -> int:
    """Host memory (MB) a training of ``config`` asks for: :data:`PROCESS_MB` + :data:`ARRAY_MARGIN` × arrays.

    On a CPU the arrays are the training step (:func:`qsmrep.study.estimate.training_memory_bytes` in fp32, the
    larger of the two precisions), the cached training maps and the validation maps (``map_bytes`` each); on a GPU
    these live on the card, and the host holds the CUDA context (:data:`CUDA_HOST_MB`) and, at most, the
    validation maps (pinned, where they would take over a quarter of the card)."""
    maps = config.n_val * map_bytes(config.map_size)
    if on_gpu:
        return int(PROCESS_MB + CUDA_HOST_MB + ARRAY_MARGIN * maps / MB)
    cached = config.n_train * map_bytes(config.map_size) if config.cache_maps else 0
    step = training_memory_bytes(config.replace(precision="fp32"))
    return int(PROCESS_MB + ARRAY_MARGIN * (step + cached + maps) / MB)


def inference_bytes(config: Config) -> int:
    """Bytes of one forward pass without autograd on a full map (batch 1, fp32): four times its widest tensor, the
    top level's concatenation of 2C channels (there the skip tensor C, the upsampled C, their concatenation 2C and
    a convolution's output C coexist, 2.5 × the widest; the deeper levels add an eighth each)."""
    return 4 * 2 * config.initial_channels * config.map_size**3 * 4


def evaluation_memory_mb(configs: list[Config]) -> int:
    """Host memory (MB) of the evaluation of ``configs`` (the study's runs, one profile): :data:`PROCESS_MB` +
    :data:`ARRAY_MARGIN` × (the widest model's forward pass on a full map, :func:`inference_bytes`, plus the
    validation maps the baselines are tuned on and the clean and noisy test maps, ``map_bytes`` each)."""
    config = max(configs, key=lambda c: c.initial_channels)
    maps = (config.n_val + 2 * config.n_test) * map_bytes(config.map_size)
    return int(PROCESS_MB + ARRAY_MARGIN * (inference_bytes(config) + maps) / MB)


def runtime_minutes(profile: str, training: bool) -> int:
    """The wall-time limit (minutes) a step of ``profile`` asks for: :data:`RUNTIME_MINUTES`."""
    return RUNTIME_MINUTES[profile][0 if training else 1]


def _kernel_python(argv0: str) -> Path:
    """An interpreter's path with its folder resolved and its own name kept (a venv's python is a symlink to the
    base interpreter: resolving it whole would make every venv of that interpreter look the same)."""
    path = Path(argv0)
    return path.parent.resolve() / path.name


def use_own_kernel(python: str = sys.executable, prefix: str = sys.prefix) -> Path:
    """Make the notebook steps of this process and its children run in kernel :data:`KERNEL` of ``python``.

    Puts ``<prefix>/share/jupyter`` (where ``ipykernel install --sys-prefix`` registers a venv's kernel) first on
    ``JUPYTER_PATH``, ahead of the user's own kernels, then checks that the kernel found starts ``python``; its
    folder. ValueError when it is missing or starts another interpreter (on a cluster node: the step would fail,
    or run in another environment)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    own = os.path.join(prefix, "share", "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != own]
    os.environ["JUPYTER_PATH"] = os.pathsep.join([own, *paths])
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise ValueError(f"no Jupyter kernel {KERNEL!r} here for {python}: source scripts/ensure_env.sh "
                         f"(it registers one)") from None
    if _kernel_python(spec.argv[0]) != _kernel_python(python):
        raise ValueError(f"Jupyter kernel {KERNEL!r} ({spec.resource_dir}) starts {spec.argv[0]}, the workflow runs "
                         f"{python}: source scripts/ensure_env.sh with the same interpreter")
    return Path(spec.resource_dir)


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
               str(notebooks / f"10_train_{stem}.ipynb"), "-k", KERNEL, "--cwd", str(root), "--log-output",
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
