"""The read side of the pipeline's stores: what later stages and the deployed policy open.
Writers live with their stages (prepare.py, geometry.py, features.py); readers never
import writer code.

Every store records a `fingerprint` of its CONTENT (or, for the feature store, of every
input its content is a function of), so that anything which resumes or skips work can
key on it: a change upstream means a different fingerprint, never a stale result.

Rows: frame t of episode e is row `offsets[e] + t` of every store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StoreError
from .hashing import sha256_file

# What `prepare` writes. episodes.json is all that geometry and features read, so a new
# split or contact threshold (training.json, stats.json, contact.json) never reruns them.
EPISODES_FILE, TRAINING_FILE, STATS_FILE, CONTACT_FILE = "episodes.json", "training.json", "stats.json", "contact.json"
PREPARE_FILES = (EPISODES_FILE, TRAINING_FILE, STATS_FILE, CONTACT_FILE)


# Layout version of each artefact the stages write ("schema_version" in the file or the
# store's attributes). A reader refuses another version with one line naming both; an
# artefact from before versioning counts as version 1. Raise a number when its layout
# changes in a way old readers would misread.
SCHEMA_VERSIONS = {"manifest": 2, "geometry": 2, "features": 2, "policy": 2}
POLICY_SCHEMA = SCHEMA_VERSIONS["policy"]
POLICY_FILES = ("policy.json", "weights.pt", "hsa.pt")  # hsa.pt only when trained with HSA


def check_schema(found: dict, kind: str, path: str | Path, rerun: str) -> None:
    """`found` (a JSON file's content or a store's attributes) must carry this code's
    layout version of `kind`."""
    expected, got = SCHEMA_VERSIONS[kind], found.get("schema_version", 1)
    if got != expected:
        raise StoreError(f"{path}: {kind} layout version {got}, but this code reads version {expected}; "
                         f"{'it was written by newer code: update this checkout' if got > expected else rerun}")


def read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: {what} not found; run the stage that writes it first (dvc repro)")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- prepare
@dataclass
class Manifest:
    """outputs/prepare as later stages use it: episodes in a fixed order (files, lengths,
    content hashes, streams, widths), global frame indices and, for training, the split.

    fingerprint: sha256 of episodes.json (what the caches are a function of);
    prepare_fingerprint: sha256 of every prepare output (what training is a function of).
    """

    raw: dict  # episodes.json
    training: dict | None  # training.json: split, action_shift, contact_threshold (None if absent)
    fingerprint: str
    prepare_fingerprint: str

    @classmethod
    def load(cls, prepare_dir: str | Path) -> "Manifest":
        d = Path(prepare_dir)
        raw = read_json(d / EPISODES_FILE, f"{EPISODES_FILE} (stage prepare)")
        check_schema(raw, "manifest", d / EPISODES_FILE, "rerun `dvc repro prepare`")
        training = json.loads((d / TRAINING_FILE).read_text()) if (d / TRAINING_FILE).is_file() else None
        h = hashlib.sha256()
        for name in PREPARE_FILES:
            if (d / name).is_file():
                h.update(name.encode() + b"\0" + (d / name).read_bytes())
        return cls(raw, training, sha256_file(d / EPISODES_FILE), h.hexdigest())

    @property
    def episodes(self) -> list[dict]:
        return self.raw["episodes"]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([e["length"] for e in self.episodes])]).astype(np.int64)

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    def path(self, episode: dict) -> Path:
        return Path(self.raw["episodes_dir"]) / episode["file"]

    def open(self, episode: dict):
        """The reader of one episode (HDF5 or LeRobot), as prepare validated it."""
        from .episodes import open_episode

        return open_episode(self.path(episode), episode["layout"], self.raw.get("lerobot"))

    def _training(self, key: str):
        if self.training is None:
            raise StoreError(f"{TRAINING_FILE} (stage prepare) not found beside {EPISODES_FILE}; run `dvc repro prepare`")
        return self.training[key]

    def split(self, name: str) -> list[int]:
        """Indices of the episodes in split `name` ('train' or 'val')."""
        split = self._training("split")
        return [i for i, e in enumerate(self.episodes) if split[e["id"]] == name]

    @property
    def action_shift(self) -> int:
        return int(self._training("action_shift"))

    @property
    def contact_threshold(self) -> float:
        return float(self._training("contact_threshold"))

    @property
    def streams(self) -> dict[str, str]:
        """stream -> role (third_person | wrist | tactile), cameras first."""
        return {**{n: c["role"] for n, c in self.raw["cameras"].items()}, **{n: "tactile" for n in self.raw["tactile"]}}

    def episode_of(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, side="right") - 1)


def load_stats(prepare_dir: str | Path) -> dict:
    return read_json(Path(prepare_dir) / STATS_FILE, f"{STATS_FILE} (stage prepare)")


def load_contact(prepare_dir: str | Path) -> dict:
    return read_json(Path(prepare_dir) / CONTACT_FILE, f"{CONTACT_FILE} (stage prepare)")


# --------------------------------------------------------------------------- zarr stores
def _open_complete(path: Path, what: str, stage: str):
    import zarr

    if not (path / "zarr.json").exists():
        raise StoreError(f"{path}: {what} not found; run `dvc repro {stage}`")
    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    if not attrs.get("complete"):
        raise StoreError(f"{path}: {what} is incomplete (a run was interrupted); rerun `dvc repro {stage}`")
    check_schema(attrs, stage, path, f"rerun `dvc repro {stage}`")
    return root, attrs


def check_rows(attrs: dict, manifest: Manifest, path: Path, stage: str) -> None:
    """A store must have been built for exactly the manifest's episodes."""
    if attrs.get("episodes_fingerprint") != manifest.fingerprint or attrs["offsets"] != manifest.offsets.tolist():
        raise StoreError(f"{path}: built from other episodes or another prepare run than the manifest; "
                         f"rerun `dvc repro {stage}`")


class GeometryStore:
    """geometry.zarr, whole arrays in memory (they are small)."""

    ARRAYS = ("box", "depth", "visible", "weight", "next_box", "next_visible", "next_weight")

    def __init__(self, path: str | Path):
        path = Path(path)
        root, self.attrs = _open_complete(path, "geometry store", "geometry")
        self.path = path
        self.sensors: list[str] = self.attrs["sensors"]
        self.cameras: list[str] = self.attrs["cameras"]
        self.fingerprint: str = self.attrs["fingerprint"]
        self.sensor_pose = root["sensor_pose"][...]
        self.cam = {c: {k: root[f"{c}/{k}"][...] for k in self.ARRAYS} for c in self.cameras}


class FeatureStore:
    """features.zarr: (N, G, G, C) float16 token grids per stream."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.root, self.attrs = _open_complete(path, "feature store", "features")
        self.path = path
        self.streams: dict[str, str] = self.attrs["streams"]
        self.fingerprint: str = self.attrs["fingerprint"]

    def grid(self, stream: str, row: int) -> np.ndarray:
        return self.root[stream][row]

    def load(self, stream: str) -> np.ndarray:
        return self.root[stream][...]


# --------------------------------------------------------------------------- the exported policy
def read_policy_meta(directory: str | Path) -> dict:
    """policy.json of an exported policy directory, its layout version checked."""
    path = Path(directory) / "policy.json"
    if not path.is_file():
        raise StoreError(f"{path}: no exported policy here; run `dvc repro train` (it writes outputs/train/policy)")
    meta = json.loads(path.read_text())
    check_schema(meta, "policy", path, "export it again with this code: `dvc repro train` (the run resumes at its end)")
    return meta
