"""The commit of the code that produced a result, and whether that code had uncommitted changes.

Changes under ``results/``, ``figures/`` and ``reference/`` do not count: they are outputs (runs rewrite the first
two, ``publish-reference`` the third, which is committed after it)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

#: the package's own checkout
_ROOT = Path(__file__).resolve().parents[2]


def git(root: str | Path | None, *args: str) -> str:
    """Output of ``git <args>`` in ``root`` (default: the package's checkout), or ``""`` when git fails."""
    try:
        return subprocess.run(["git", *args], cwd=root or _ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_changes(root: str | Path | None = None) -> str:
    """``git status`` lines of tracked files with uncommitted changes, the run's own outputs aside."""
    return git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", ":(exclude)figures",
               ":(exclude)reference")


def code_commit(root: str | Path | None = None) -> str:
    """Short commit of the checkout (``+changes`` when its code differs from it), or ``unknown``.

    For the package's own checkout (``root`` None) it is read once per process: a training that runs for hours
    records the commit of the code it loaded at its start, also in its completion marker, even where the checkout
    was pulled on meanwhile (its modules are not reloaded)."""
    return _loaded_commit() if root is None else _commit(root)


@functools.lru_cache(maxsize=1)
def _loaded_commit() -> str:
    return _commit(None)


def _commit(root: str | Path | None) -> str:
    commit = git(root, "rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+changes" if code_changes(root) else "")
