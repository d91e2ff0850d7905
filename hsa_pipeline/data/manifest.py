"""What the `prepare` stage writes (episodes.json, training.json, stats.json, contact.json)
and how later stages read it (`Manifest`), and the layout version of every artefact the
stages write, checked by every reader.

Rows: frame t of episode e is row `offsets[e] + t` of every store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
