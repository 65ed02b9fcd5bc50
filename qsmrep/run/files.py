"""Crash-safe file output: every file is written to a temporary name in the same folder,
flushed and fsynced, then renamed over the target (``os.replace`` is atomic on POSIX), so a
reader never sees a half-written file, even after SIGKILL."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)
# mkstemp creates files with mode 0600; finished files get the usual mode (0666 minus the umask).
_FILE_MODE = 0o666 & ~_UMASK
TEMP_SUFFIX = ".tmp"


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return _atomic_write(path, lambda h: h.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (tensors, dicts of plain Python values)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """Atomically write numpy ``arrays`` as a compressed ``.npz``."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


_UNDATED = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


def save_figure(fig, path_without_suffix: str | os.PathLike, formats=("png", "svg"), dpi: int = 150) -> list[Path]:
    """Atomically save a matplotlib figure in each of ``formats``; returns the paths written.

    The files carry no date and SVG ids come from a fixed salt, so an unchanged figure is byte-identical
    on every re-render and committed figures change only when their content does."""
    import matplotlib

    written = []
    for fmt in formats:
        buffer = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": "qsmrep"}):
            fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight", metadata=_UNDATED.get(fmt))
        written.append(write_bytes(Path(f"{path_without_suffix}.{fmt}"), buffer.getvalue()))
    return written


def check_writable_dir(path: str | os.PathLike, name: str = "out") -> Path:
    """Create ``path`` if needed and check that files can be created in it; ValueError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=TEMP_SUFFIX, dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"{name}: cannot write to folder {str(path)!r} ({err.strerror or err})") from None
    return path


def remove_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the hidden ``.<name>.<random>.tmp`` files that a writer killed mid-write (SIGKILL) left in
    folder ``path``; the targets themselves are whole, old or new. Returns the paths removed."""
    removed = []
    for tmp in Path(path).glob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
