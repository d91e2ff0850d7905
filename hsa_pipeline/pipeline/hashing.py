"""Content hashes: what every resume, skip and store fingerprint keys on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_named_files(directory: str | Path, names: tuple[str, ...] | list[str]) -> str:
    """sha256 over the files `names` of `directory`, each with its name; a missing file is
    left out (so it counts, by its absence)."""
    h = hashlib.sha256()
    for name in names:
        path = Path(directory) / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
