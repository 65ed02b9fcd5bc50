"""A checkpoint's test scores, kept beside it, so that a run whose weights are gone still enters the study's tables.

The evaluation (:func:`qsmrep.run.evaluate.evaluate_runs`) writes, next to each checkpoint ``epoch_EEE.pt`` it
scores, ``scores_EEE.json``: that checkpoint's rows of ``metrics_per_map``, ``metrics_noisy``, ``metrics_phantom`` and
``dead_units``, its configuration, the identity of the evaluation (the test maps' data fields, the noise SNR, how
many predictions were kept), the commit that scored it and, once :mod:`qsmrep.study.shelf` has computed it for a final
checkpoint, its crop check; and ``scores_EEE.npz``: its predictions for ``arrays.npz`` (the images of Figures 3 and 4),
stored as float16 (relative rounding ≤ 2⁻¹¹; the tables' numbers were computed from the float32 predictions). float16
has no finite value beyond ±65504 (ppm here): a diverged model's predictions beyond it are stored saturated at ±65504,
so that its figures draw them at the colour scale's ends (an infinity would be drawn as a masked, blank voxel, in the
error maps the colour of no error); :func:`load` reads infinities in records written before this rule the same way.

A record replaces its checkpoint only where the checkpoint is absent (a run restored from
``reference/<profile>/trained/``, which keeps no weights): a checkpoint that is there is always scored anew, since the
code that scores may have changed. A record made by an evaluation of other test maps, noise or kept predictions is
refused with a message: without the weights it cannot be scored anew.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qsmrep.run import files
from qsmrep.run.config import Config
from qsmrep.run.gitinfo import code_commit

#: the tables a record holds, each a list of rows (dicts)
TABLES = ("clean", "noisy", "phantom", "dead")
#: the largest finite float16 (65504): kept predictions are saturated at ± this
FLOAT16_MAX = float(np.finfo(np.float16).max)


def record_path(checkpoint: str | Path) -> Path:
    """``…/scores_EEE.json`` beside ``…/epoch_EEE.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.replace("epoch_", "scores_", 1)).with_suffix(".json")


def is_record(path: str | Path) -> bool:
    """True for a scores record (``scores_EEE.json``), False for a checkpoint."""
    return Path(path).suffix == ".json"


def identity(config: Config, snr: float | None, keep_arrays: int) -> dict:
    """What makes two evaluations score a checkpoint alike: the test maps (``config``'s data fields), the SNR of the
    noisy test set (None: none) and the number of test maps whose predictions are kept; JSON-normalised."""
    return json.loads(json.dumps({"data": config.data_identity(), "snr": snr, "keep_arrays": int(keep_arrays)}))


def save(checkpoint: str | Path, config: Config, epoch: int, evaluation: dict, tables: dict[str, list[dict]],
         arrays: dict[str, np.ndarray]) -> Path:
    """Write the record of ``checkpoint`` (module docstring); its path."""
    path = record_path(checkpoint)
    files.save_npz(path.with_suffix(".npz"), **{k: _saturated(v).astype(np.float16) for k, v in arrays.items()})
    files.write_text(path, json.dumps({
        "epoch": int(epoch), "config": config.to_dict(), "evaluation": evaluation, "scored_at_commit": code_commit(),
        "tables": {name: tables.get(name, []) for name in TABLES}}, indent=1, default=_plain) + "\n")
    return path


def _saturated(values) -> np.ndarray:
    """``values`` as float32 clipped to ±:data:`FLOAT16_MAX` (infinities included; NaN stays NaN)."""
    return np.clip(np.asarray(values, dtype=np.float32), -FLOAT16_MAX, FLOAT16_MAX)


def _plain(value):
    """numpy scalars in a table row → Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else str(value)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"evaluate: scores record {str(path)!r} is unreadable ({err})") from None


def load(path: str | Path, evaluation: dict) -> tuple[Config, int, dict[str, list[dict]], dict[str, np.ndarray]]:
    """(config, epoch, tables, arrays as float32) of the record at ``path``; ValueError when it was made by another
    evaluation than ``evaluation`` (:func:`identity`)."""
    path = Path(path)
    record = _read(path)
    made = record.get("evaluation", {})
    for part in ("data", "snr", "keep_arrays"):
        if made.get(part) != evaluation.get(part):
            have, want = made.get(part), evaluation.get(part)
            if part == "data":
                key = next(k for k in want if have is None or have.get(k) != want[k])
                part, have, want = key, (have or {}).get(key), want[key]
            raise ValueError(f"evaluate: {path} was scored with {part} {have!r}, this evaluation uses {want!r}; the run's "
                             "weights are gone, so it cannot be scored anew (retrain it, or evaluate as it was scored)")
    with np.load(path.with_suffix(".npz")) as stored:
        arrays = {key: _saturated(stored[key]) for key in stored.files}
    return Config.from_dict(record["config"]), int(record["epoch"]), record["tables"], arrays


def crop_check(path: str | Path) -> dict | None:
    """The crop check kept in the record at ``path`` (:func:`qsmrep.run.evaluate.crop_check`), or None."""
    return _read(Path(path)).get("crop_check")


def add_crop_check(path: str | Path, crop: dict) -> None:
    """Keep ``crop`` (a row of :func:`qsmrep.run.evaluate.crop_check`) in the record at ``path``."""
    path = Path(path)
    record = _read(path)
    record["crop_check"] = crop
    files.write_text(path, json.dumps(record, indent=1, default=_plain) + "\n")
