"""Finished runs kept in git without their weights, ``reference/<profile>/trained/``, so that a study longer than one
sitting is trained over several on machines that keep nothing but the repository.

:func:`shelve` (``python -m qsmrep shelve --profile P``) copies every finished run of ``results/<profile>/`` into
``reference/<profile>/trained/<kind>/<arm>/<name>/``: ``config.yaml``, ``run.json``, ``history.csv``, ``DONE.json``, its
training step's benchmark (``benchmark.tsv``, where the workflow wrote one) and the scores records of its early and
final checkpoints (:mod:`qsmrep.run.scores`; scored here with the study's test maps where the evaluation has not
written them, and the final checkpoint's crop check added), never the weights (22 MB a 16-channel checkpoint, 90 MB a
32-channel one, three per run). :func:`unshelve` (``./run_all.sh`` calls it) copies those files back for every run of
the study that has no folder in ``results/<profile>/``: the workflow then takes the run as finished and the evaluation
reads its records. A restored run cannot be scored anew, continued or applied to a user's field (no weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qsmrep.run.config import Config
from qsmrep.run.runfolder import RunFolder
from qsmrep.run.scores import record_path
from qsmrep.study.collect import list_runs
from qsmrep.study.plan import KINDS, RunSpec, reference_dir, results_dir

SHELF = "trained"
BENCHMARK = "benchmark.tsv"
RUN_FILES = (RunFolder.CONFIG, RunFolder.META, RunFolder.HISTORY, RunFolder.DONE)


def shelf_dir(profile: str, root: str | Path | None = None) -> Path:
    return reference_dir(profile, root) / SHELF


def _benchmark(profile: str, key: str, root) -> Path:
    """The training step's benchmark the workflow writes (``benchmarks/train/<kind>_<arm>_<name>.tsv``)."""
    return results_dir(profile, root) / "benchmarks" / "train" / f"{key.replace('/', '_')}.tsv"


def _records(config: Config, folder: RunFolder) -> list[Path]:
    return [record_path(folder.checkpoint(epoch)) for epoch in sorted({config.early, config.epochs})]


def _score_missing(profile: str, runs: list[tuple[str, Config, RunFolder]], device: str, say) -> None:
    """Write the scores records (with the final checkpoint's crop check) that ``runs`` lack, from their weights."""
    from qsmrep.run import scores
    from qsmrep.run.evaluate import crop_check, record_scores

    todo = {}
    for key, config, folder in runs:
        for epoch in sorted({config.early, config.epochs}):
            checkpoint = folder.checkpoint(epoch)
            record = record_path(checkpoint)
            if checkpoint.exists() and (not record.exists() or record.stat().st_mtime < checkpoint.stat().st_mtime):
                todo[f"{key}@{epoch}"] = checkpoint
    if todo:
        say(f"shelve: scoring {len(todo)} checkpoints that have no scores record yet")
        record_scores(todo, Config.from_profile(profile), device)
    for key, config, folder in runs:
        final = folder.checkpoint(config.epochs)
        if final.exists() and scores.crop_check(record_path(final)) is None:
            scores.add_crop_check(record_path(final), crop_check(final, device=device))


def shelve(profile: str, root: str | Path | None = None, device: str = "auto", say=print) -> list[str]:
    """Copy every finished run of ``results/<profile>/`` into the shelf (module docstring), replacing what the shelf
    held for it; the keys kept. ValueError where a finished run has neither a checkpoint nor a scores record."""
    Config.from_profile(profile)
    runs = [(f"{kind}/{config.arm}/{folder.path.name}", config, folder)
            for kind in KINDS for config, folder in list_runs(profile, root, kind) if folder.done() is not None]
    _score_missing(profile, runs, device, say)
    kept = []
    for key, config, folder in runs:
        missing = [p.name for p in _records(config, folder) if not p.exists()]
        if missing:
            raise ValueError(f"shelve: {folder.path} has no {missing[0]} and no weights to score; evaluate it first")
        target = shelf_dir(profile, root) / key
        staging = target.with_name(f".{target.name}.shelving")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        records = [path for record in _records(config, folder) for path in (record, record.with_suffix(".npz"))]
        for path in [folder.file(name) for name in RUN_FILES] + records:
            if path.exists():
                shutil.copy2(path, staging / path.name)
        if _benchmark(profile, key, root).is_file():
            shutil.copy2(_benchmark(profile, key, root), staging / BENCHMARK)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        kept.append(key)
    return kept


def shelved(profile: str, root: str | Path | None = None) -> list[str]:
    """Keys of the runs on the shelf of ``profile``."""
    shelf = shelf_dir(profile, root)
    return sorted(str(p.parent.relative_to(shelf)) for p in shelf.glob(f"*/*/*/{RunFolder.DONE}"))


def unshelve(profile: str, specs: list[RunSpec], root: str | Path | None = None, dry_run: bool = False) -> list[str]:
    """Copy the shelved runs among ``specs`` that have no folder in ``results/<profile>/`` back there (module
    docstring); their keys. A shelved run made with another configuration than its spec's is left on the shelf
    (ValueError: the study's scale changed since it was trained)."""
    restored = []
    on_shelf = set(shelved(profile, root))
    for spec in specs:
        if spec.key not in on_shelf or spec.folder(root).exists():
            continue
        source = RunFolder(shelf_dir(profile, root) / spec.key)
        differing = source.differences(spec.config())
        if differing:
            raise ValueError(f"unshelve: {source.path} was trained with another {differing[0]} than the study's "
                             f"{spec.key}; move it away or retrain")
        restored.append(spec.key)
        if dry_run:
            continue
        target = spec.folder(root)
        staging = target.with_name(f".{target.name}.unshelving")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in sorted(source.path.iterdir()):
            if path.name == BENCHMARK:
                _benchmark(profile, spec.key, root).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, _benchmark(profile, spec.key, root))
            elif path.name != RunFolder.DONE:
                shutil.copyfile(path, staging / path.name)
        shutil.copyfile(source.file(RunFolder.DONE), staging / RunFolder.DONE)  # the marker last, as the trainer does
        staging.rename(target)
    return restored
