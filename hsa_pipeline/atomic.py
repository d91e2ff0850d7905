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
def atomic_dir(path: str | Path, keep_partial: bool = False) -> Iterator[Path]:
    """Yield a fresh `<path>.partial` directory; on success it becomes `path`.

    keep_partial=True keeps an existing partial directory (for stages that resume) and
    leaves it in place on failure; otherwise a failure removes it.
    """
    final = Path(path)
    tmp = partial_path(final)
    if not keep_partial:
        remove(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        if not keep_partial:
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


def read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())
