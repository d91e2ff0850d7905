"""The read side of the pipeline's stores: what later stages and the deployed policy open.
Writers live with their stages (data/prepare.py, geometry/compute.py, features/extract.py); readers never
import writer code.

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
from ..pipeline.hashing import sha256_file, sha256_named_files

# What `prepare` writes. Features read episodes.json only and geometry episodes.json and
# contact.json (where each sensor touches), so a new split (training.json, stats.json)
# reruns neither, and new contact settings rerun geometry (seconds), never features.
EPISODES_FILE, TRAINING_FILE, STATS_FILE, CONTACT_FILE = "episodes.json", "training.json", "stats.json", "contact.json"
PREPARE_FILES = (EPISODES_FILE, TRAINING_FILE, STATS_FILE, CONTACT_FILE)


# Layout version of each artefact the stages write ("schema_version" in the file or the
# store's attributes). A reader refuses another version with one line naming both; an
# artefact from before versioning counts as version 1. Raise a number when its layout
# changes in a way old readers would misread.
SCHEMA_VERSIONS = {"manifest": 3, "geometry": 3, "features": 2, "policy": 3}
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
@dataclass(frozen=True)
class EpisodeEntry:
    """One usable episode in episodes.json."""

    id: str  # the file's stem: the key of the split and of contact.json
    file: str  # relative to episodes_dir (LeRobot: episode_NNNNNN)
    length: int  # frames
    layout: str  # act | xtrainer | lerobot
    sha256: str  # of its content: the caches downstream key on it


@dataclass(frozen=True)
class StreamInfo:
    role: str  # third_person | wrist | tactile
    shape: list[int]  # [H, W] of its recorded frames


@dataclass(frozen=True)
class EpisodesInfo:
    """episodes.json, the prepare stage's contract with everything after it."""

    schema_version: int
    episodes_dir: str
    episodes: list[EpisodeEntry]
    skipped: list[dict]  # {"file", "reason"} of every episode prepare left out
    cameras: dict[str, StreamInfo]
    tactile: dict[str, StreamInfo]
    qpos_dim: int
    action_dim: int
    lerobot: dict | None  # the LeRobot feature of every stream (LeRobot datasets only)

    @classmethod
    def from_json(cls, raw: dict, path: Path) -> "EpisodesInfo":
        try:
            return cls(schema_version=raw["schema_version"], episodes_dir=raw["episodes_dir"],
                       episodes=[EpisodeEntry(**e) for e in raw["episodes"]], skipped=raw["skipped"],
                       cameras={n: StreamInfo(c["role"], c["shape"]) for n, c in raw["cameras"].items()},
                       tactile={n: StreamInfo("tactile", c["shape"]) for n, c in raw["tactile"].items()},
                       qpos_dim=raw["qpos_dim"], action_dim=raw["action_dim"], lerobot=raw.get("lerobot"))
        except (KeyError, TypeError) as e:
            raise StoreError(f"{path}: not the layout this code reads ({type(e).__name__}: {e}); rerun "
                             f"`dvc repro prepare`") from None


@dataclass
class Manifest:
    """outputs/prepare as later stages use it: episodes in a fixed order (files, lengths,
    content hashes, streams, widths), global frame indices and, for training, the split.

    fingerprint: sha256 of episodes.json (what the caches are a function of);
    prepare_fingerprint: sha256 of every prepare output (what training is a function of).
    """

    info: EpisodesInfo  # episodes.json
    training: dict | None  # training.json: split, action_shift (None if absent)
    fingerprint: str
    prepare_fingerprint: str

    @classmethod
    def load(cls, prepare_dir: str | Path) -> "Manifest":
        d = Path(prepare_dir)
        raw = read_json(d / EPISODES_FILE, f"{EPISODES_FILE} (stage prepare)")
        check_schema(raw, "manifest", d / EPISODES_FILE, "rerun `dvc repro prepare`")
        training = json.loads((d / TRAINING_FILE).read_text()) if (d / TRAINING_FILE).is_file() else None
        return cls(EpisodesInfo.from_json(raw, d / EPISODES_FILE), training, sha256_file(d / EPISODES_FILE),
                   sha256_named_files(d, PREPARE_FILES))

    @property
    def episodes(self) -> list[EpisodeEntry]:
        return self.info.episodes

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([e.length for e in self.episodes])]).astype(np.int64)

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    def path(self, episode: EpisodeEntry) -> Path:
        return Path(self.info.episodes_dir) / episode.file

    def open(self, episode: EpisodeEntry):
        """The reader of one episode (HDF5 or LeRobot), as prepare validated it."""
        from .episodes import open_episode

        return open_episode(self.path(episode), episode.layout, self.info.lerobot)

    def _training(self, key: str):
        if self.training is None:
            raise StoreError(f"{TRAINING_FILE} (stage prepare) not found beside {EPISODES_FILE}; run `dvc repro prepare`")
        return self.training[key]

    def split(self, name: str) -> list[int]:
        """Indices of the episodes in split `name` ('train' or 'val')."""
        split = self._training("split")
        return [i for i, e in enumerate(self.episodes) if split[e.id] == name]

    @property
    def action_shift(self) -> int:
        return int(self._training("action_shift"))

    @property
    def streams(self) -> dict[str, str]:
        """stream -> role (third_person | wrist | tactile), cameras first."""
        return {n: c.role for n, c in {**self.info.cameras, **self.info.tactile}.items()}

    def episode_of(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, side="right") - 1)


def load_stats(prepare_dir: str | Path) -> dict:
    return read_json(Path(prepare_dir) / STATS_FILE, f"{STATS_FILE} (stage prepare)")


def load_contact(prepare_dir: str | Path) -> dict:
    """contact.json: tactile stream -> episode id -> {"score": [...], "contact": [0/1, ...]}."""
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


class ShardFiles:
    """The frames of one stream of the feature store read straight from its shard files.

    The features stage writes each stream as a Zarr v3 array of one-frame chunks inside
    shards, uncompressed: a shard file is its frames' bytes followed by an index of
    (offset, length) uint64 pairs, one per frame, and the index's crc32c (the Zarr v3
    sharding format). zarr decodes a shard's chunks one at a time, which read the store at
    half the speed of one file per frame (benchmarks/bench_remote.py); this reads a shard's
    frames in one go, and one frame with one read. `open` returns None for any other layout
    (zarr reads those)."""

    def __init__(self, array_dir: Path, shape: tuple, dtype: np.dtype, shard_frames: int, fill):
        self.dir, self.shape, self.dtype, self.shard, self.fill = array_dir, shape, dtype, shard_frames, fill
        self.frame_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        self._index: dict[int, np.ndarray] = {}

    @classmethod
    def open(cls, array_dir: Path) -> "ShardFiles | None":
        """The reader for the features stage's layout, or None (zarr reads any other)."""
        meta = json.loads((array_dir / "zarr.json").read_text())
        if cls.layout_problem(meta) is not None:
            return None
        dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        return cls(array_dir, tuple(meta["shape"]), dtype, meta["chunk_grid"]["configuration"]["chunk_shape"][0],
                   meta["fill_value"])

    @staticmethod
    def layout_problem(meta: dict) -> str | None:
        """Why an array's metadata (zarr.json) is not the layout this reads, or None."""
        try:
            (codec,) = meta["codecs"]
            conf = codec["configuration"]
            frame = meta["shape"][1:]
            checks = {
                "not sharded": codec["name"] == "sharding_indexed",
                "chunks are not one frame": conf["chunk_shape"] == [1, *frame],
                "chunks are compressed or not little-endian":
                    conf["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}],
                "the shard index is not little-endian with crc32c":
                    conf["index_codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}},
                                             {"name": "crc32c"}],
                "the shard index is not at the end": conf.get("index_location", "end") == "end",
                "shards split a frame": meta["chunk_grid"]["configuration"]["chunk_shape"][1:] == frame,
                "chunk keys are not 'default' with '/'":
                    meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}},
            }
        except (KeyError, TypeError, ValueError) as e:
            return f"metadata without {e}"
        return next((why for why, ok in checks.items() if not ok), None)

    def _path(self, shard: int) -> Path:
        return self.dir.joinpath("c", str(shard), *["0"] * (len(self.shape) - 1))

    def index(self, shard: int) -> np.ndarray:
        """(shard_frames, 2) offset, length of each frame in the shard file (checked)."""
        if shard not in self._index:
            import google_crc32c

            path, size = self._path(shard), 16 * self.shard + 4
            if not path.is_file():  # zarr would return the fill value: for a cache, data lost
                raise StoreError(f"{path}: shard file missing (frames {shard * self.shard}-"
                                 f"{min(self.shape[0], (shard + 1) * self.shard) - 1}); rerun `dvc repro features`")
            file_size = path.stat().st_size
            if file_size < size:
                raise StoreError(f"{path}: truncated ({file_size} bytes, shorter than its {size}-byte index); "
                                 "rerun `dvc repro features`")
            with open(path, "rb") as f:
                f.seek(-size, 2)
                raw = f.read(size)
            if google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise StoreError(f"{path}: the shard index fails its checksum; rerun `dvc repro features`")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.shard, 2)
            written = index[:, 0] != 2**64 - 1
            ends = index[written, 0] + index[written, 1]
            if (index[written, 1] != self.frame_bytes).any() or (ends > file_size - size).any():
                raise StoreError(f"{path}: the shard index points past its frames or at frames of another size "
                                 f"(expected {self.frame_bytes} bytes each in {file_size - size}); "
                                 "rerun `dvc repro features`")
            self._index[shard] = index
        return self._index[shard]

    def frame(self, row: int) -> np.ndarray:
        if not 0 <= row < self.shape[0]:
            raise StoreError(f"{self.dir}: frame {row} asked for, the store holds frames 0-{self.shape[0] - 1}")
        shard, i = divmod(row, self.shard)
        offset, length = self.index(shard)[i]
        if offset == 2**64 - 1:  # never written: the fill value
            return np.full(self.shape[1:], self.fill, self.dtype)
        data = np.fromfile(self._path(shard), dtype=self.dtype, count=self.frame_bytes // self.dtype.itemsize,
                           offset=int(offset))
        return data.reshape(self.shape[1:])

    def all(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        for shard in range(-(-self.shape[0] // self.shard)):
            a, b = shard * self.shard, min(self.shape[0], (shard + 1) * self.shard)
            index = self.index(shard)[: b - a]
            data = np.fromfile(self._path(shard), dtype=np.uint8)
            if (index[:, 0] == np.arange(b - a) * self.frame_bytes).all():  # frames in order, back to back
                out[a:b] = data[: (b - a) * self.frame_bytes].view(self.dtype).reshape(b - a, *self.shape[1:])
                continue
            for j, (offset, _) in enumerate(index):
                out[a + j] = (np.full(self.shape[1:], self.fill, self.dtype) if offset == 2**64 - 1 else
                              data[int(offset): int(offset) + self.frame_bytes].view(self.dtype).reshape(self.shape[1:]))
        return out


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
