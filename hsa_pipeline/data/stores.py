"""The read side of the pipeline's stores: what later stages and the deployed policy open.
Writers live with their stages (data/prepare.py, geometry/compute.py, features/extract.py); readers never
import writer code. The prepare stage's JSON manifest is data/manifest.py; the feature
store's shard files are parsed by data/shards.py.

Every store records a `fingerprint` of its CONTENT (or, for the feature store, of every
input its content is a function of), so that anything which resumes or skips work can
key on it: a change upstream means a different fingerprint, never a stale result.

Rows: frame t of episode e is row `offsets[e] + t` of every store.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import StoreError
from .manifest import SCHEMA_VERSIONS, Manifest, check_schema
from .shards import ShardFiles

POLICY_SCHEMA = SCHEMA_VERSIONS["policy"]
POLICY_FILES = ("policy.json", "weights.pt", "hsa.pt")  # hsa.pt only when trained with HSA


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


def _typed(cls, attrs: dict, path: Path, stage: str):
    """A store's attributes as its typed contract; a key missing means another layout."""
    names = [f.name for f in fields(cls)]
    missing = [n for n in names if n not in attrs]
    if missing:
        raise StoreError(f"{path}: attribute(s) {', '.join(missing)} missing (a store from another version of "
                         f"this code); rerun `dvc repro {stage}`")
    return cls(**{n: attrs[n] for n in names})


@dataclass(frozen=True)
class GeometryInfo:
    """geometry.zarr's attributes: what the store holds and what later stages need to know
    about the rig (so they need not read its params)."""

    sensors: list[str]  # tactile sensors, in the order of the store's S axis
    cameras: list[str]
    camera_sizes: dict[str, list[int]]  # camera -> [width, height] calibrated (= recorded, checked)
    camera_mounts: dict[str, str]  # camera -> 'world' or the arm carrying it
    sensor_arms: dict[str, str]  # sensor -> the arm carrying it
    contact_sources: dict[str, str]  # sensor -> touch | kinematics | none (no tactile stream recorded)
    contact_fraction: list[float]  # per sensor: the fraction of frames in contact
    angle_columns: list[int]  # qpos columns that are joint angles (radians)
    column_names: list[str]  # a name per qpos column ('left.j1', 'left.gripper', ...)
    margin_px: float
    limit_violations: list[str]
    visible_fraction: dict[str, list[float]]  # camera -> per sensor
    episodes: list[str]
    offsets: list[int]
    episodes_fingerprint: str
    fingerprint: str  # of every array and attribute: what training keys on
    schema_version: int


@dataclass(frozen=True)
class FeatureInfo:
    """features.zarr's attributes: the encoder, the grid and how images map onto it."""

    model: str
    pretrained: str | None
    block: int
    resize: str
    image_size: int
    patch: int
    grid: int  # G: the grid is G x G tokens
    width: int  # C: token width
    streams: dict[str, str]  # stream -> role (third_person | wrist | tactile)
    mapping: dict[str, dict]  # stream -> cameras.GridMapping fields
    episodes: list[str]
    offsets: list[int]
    shard_frames: int
    episodes_fingerprint: str
    fingerprint: str  # of everything the numbers are a function of
    schema_version: int


class GeometryStore:
    """geometry.zarr, whole arrays in memory (they are small)."""

    ARRAYS = ("box", "depth", "visible", "weight", "next_box", "next_visible", "next_weight")
    # contact (N, S) bool: each sensor in contact, from its touch (or kinematics: contact_sources)

    def __init__(self, path: str | Path):
        path = Path(path)
        root, self.attrs = _open_complete(path, "geometry store", "geometry")
        self.info: GeometryInfo = _typed(GeometryInfo, self.attrs, path, "geometry")
        self.path = path
        self.sensors, self.cameras, self.fingerprint = self.info.sensors, self.info.cameras, self.info.fingerprint
        self.sensor_pose = root["sensor_pose"][...]
        self.contact = root["contact"][...]  # (N, S) bool
        self.next_row = root["next_row"][...]  # (N, S) int64: where each sensor's touch next changes, -1 never
        self.cam = {c: {k: root[f"{c}/{k}"][...] for k in self.ARRAYS} for c in self.cameras}


class FeatureStore:
    """features.zarr: (N, G, G, C) float16 token grids per stream."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.root, self.attrs = _open_complete(path, "feature store", "features")
        self.info: FeatureInfo = _typed(FeatureInfo, self.attrs, path, "features")
        self._arrays: dict = {}
        self._shards: dict[str, ShardFiles | None] = {}
        self.path = path
        self.streams, self.fingerprint = self.info.streams, self.info.fingerprint

    def grid(self, stream: str, row: int) -> np.ndarray:
        return self._array(stream)[row] if self._files(stream) is None else self._files(stream).frame(row)

    def load(self, stream: str) -> np.ndarray:
        return self._array(stream)[...] if self._files(stream) is None else self._files(stream).all()

    def _files(self, stream: str) -> ShardFiles | None:
        if stream not in self._shards:
            self._shards[stream] = ShardFiles.open(self.path / stream)
            if self._shards[stream] is None:
                why = ShardFiles.layout_problem(json.loads((self.path / stream / "zarr.json").read_text()))
                print(f"features: {self.path / stream}: not the features stage's shard layout ({why}); "
                      "zarr reads it (slower)", file=sys.stderr)
        return self._shards[stream]

    def _array(self, stream: str):
        """The stream's array, opened once: `root[stream]` rereads its metadata from disk on
        every call, which halved random frame reads (streamed caches)."""
        if stream not in self._arrays:
            self._arrays[stream] = self.root[stream]
        return self._arrays[stream]


# --------------------------------------------------------------------------- the exported policy
def read_policy_meta(directory: str | Path) -> dict:
    """policy.json of an exported policy directory, its layout version checked."""
    path = Path(directory) / "policy.json"
    if not path.is_file():
        raise StoreError(f"{path}: no exported policy here; run `dvc repro train` (it writes outputs/train/policy)")
    meta = json.loads(path.read_text())
    check_schema(meta, "policy", path, "export it again with this code: `dvc repro train` (the run resumes at its end)")
    return meta
