"""Outputs that are complete or absent: a stage writes into `<out>.partial` and renames
it into place only when everything succeeded, so a failed or killed run never leaves an
output that looks complete (and DVC never caches a half-written one)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp` (the old output survives until the new one is whole)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(final.name + ".old")
        remove(old)
        final.rename(old)
        tmp.rename(final)
        remove(old)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh `<path>.partial` directory; on success it becomes `path`, on failure it
    is removed. (The feature stage, which resumes, manages its partial store itself.)"""
    final = Path(path)
    tmp = partial_path(final)
    remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    commit(tmp, final)


def write_json(path: str | Path, obj) -> None:
    """Write JSON through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
