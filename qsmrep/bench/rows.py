"""The shape of a benchmark row and its JSON form.

Every row is a flat dict. The rows of the step, generator, forward-field and loader-stall cases
carry at least :data:`BASE_KEYS` (``None`` where a key does not apply): ``seconds_per_iter`` (s),
``voxels_per_s`` (voxel/s), ``gflops_per_s`` (GFLOP/s) and ``peak_mem_mb`` (MiB). Each row names its
headline figure: ``figure`` (the key it repeats), ``value`` and ``unit``.
"""

from __future__ import annotations

import json
import math

BASE_KEYS = ("case", "variant", "patch", "precision", "memory_format", "seconds_per_iter", "voxels_per_s",
             "gflops_per_s", "peak_mem_mb")


def make_row(**values) -> dict:
    """A row with every key of :data:`BASE_KEYS` (``None`` unless given) and ``values``."""
    row = {key: None for key in BASE_KEYS}
    row.update(values)
    return row


def clean(row: dict) -> dict:
    """``row`` with non-finite floats replaced by ``None`` (JSON has no NaN or infinity)."""
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value) for key, value in row.items()}


def _json_default(value):
    return str(value)


def to_json(row: dict) -> str:
    """One JSON line of ``row`` (non-finite floats as ``null``, other non-JSON values as strings)."""
    return json.dumps(clean(row), default=_json_default)
