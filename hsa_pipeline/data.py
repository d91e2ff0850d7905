"""Training samples from the caches only (no JPEG decoding, no image encoder).

A sample is one frame t of one episode (the typed contract between data and model):

  qpos       (Dq,)            normalised
  actions    (chunk, Da)      normalised action[t - shift : t - shift + chunk] (ActionCodec), zero-padded
  is_pad     (chunk,)         True where the episode ended before the chunk did
  tokens     {stream: (G, G, C)} cached CLIP grids (float32)
  box        {pair: (G, G)}   tokens inside the sensor box, per (camera, sensor) pair
  visible    {pair: ()}       sensor visible in that camera
  weight     {pair: ()}       fraction of the box inside the image (alpha)
  contact    {sensor: ()}     tactile contact score above data.contact_threshold
  row        ()               global frame index

Caches are held in RAM when they fit `train.memory_budget_gb`, otherwise read from Zarr
per sample (DataLoader workers), so memory does not grow with the dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .cameras import GridMapping, box_token_mask
from .features import FeatureStore
from .geometry import GeometryStore
from .prepare import Manifest


@dataclass
class ActionCodec:
    """How action chunks are normalised for the model, and back: per-dimension z-score of
    the action, either absolute (ACT) or relative to the current qpos."""

    mean: np.ndarray  # (Da,)
    std: np.ndarray  # (Da,)
    relative: bool

    @classmethod
    def from_stats(cls, stats: dict, relative: bool, qpos_dim: int | None = None) -> "ActionCodec":
        mean, std = np.asarray(stats["action"]["mean"]), np.asarray(stats["action"]["std"])
        if relative and qpos_dim is not None and qpos_dim != len(mean):
            raise ValueError(f"act.relative_actions needs actions in qpos space, but qpos has {qpos_dim} "
                             f"dimensions and actions {len(mean)}")
        return cls(mean, std, relative)

    def encode(self, actions: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """(..., k, Da) raw actions, (..., Dq) raw qpos -> normalised."""
        ref = qpos[..., None, :] if self.relative else self.mean
        return ((actions - ref) / self.std).astype(np.float32)

    def decode(self, pred: np.ndarray, qpos: np.ndarray) -> np.ndarray:
        """(..., k, Da) model output, (..., Dq) raw qpos -> raw actions."""
        ref = qpos[..., None, :] if self.relative else self.mean
        return pred * self.std + ref


@dataclass(frozen=True)
class HsaPair:
    """Which streams HSA aligns for one tactile sensor."""

    sensor: str  # tactile stream = sensor name
    wrist: str | None  # wrist camera on the same arm
    third_person: str | None

    def key(self, camera: str) -> str:
        return f"{camera}/{self.sensor}"


def hsa_pairs(manifest: Manifest, geometry_attrs: dict) -> list[HsaPair]:
    """For each tactile sensor: the wrist camera on its arm and the (first) third-person camera."""
    cams = manifest.raw["cameras"]
    camera_mounts, sensor_arms = geometry_attrs["camera_mounts"], geometry_attrs["sensor_arms"]
    pairs = []
    for sensor in manifest.raw["tactile"]:
        if sensor not in geometry_attrs["sensors"]:
            continue
        arm = sensor_arms.get(sensor)
        wrist = next((c for c, v in cams.items() if v["role"] == "wrist" and camera_mounts.get(c) == arm), None)
        tp = next((c for c, v in cams.items() if v["role"] == "third_person"), None)
        pairs.append(HsaPair(sensor, wrist, tp))
    return pairs


class Caches:
    """Everything training reads, opened once."""

    def __init__(self, prepare_dir: Path, geometry_path: Path, features_path: Path, memory_budget_gb: float):
        self.manifest = Manifest.load(prepare_dir)
        self.stats = json.loads((Path(prepare_dir) / "stats.json").read_text())
        contact = json.loads((Path(prepare_dir) / "contact.json").read_text())
        self.features_path = Path(features_path)
        store = FeatureStore(features_path)  # checks that the store exists and is complete
        self.feat_attrs = store.attrs
        if self.feat_attrs["offsets"] != self.manifest.offsets.tolist():
            raise ValueError(f"{features_path}: built for other episodes than {prepare_dir}/manifest.json; rerun `dvc repro`")
        geo = GeometryStore(geometry_path)
        if geo.attrs["offsets"] != self.manifest.offsets.tolist():
            raise ValueError(f"{geometry_path}: built for other episodes than the manifest; rerun `dvc repro`")
        self.streams: dict[str, str] = self.feat_attrs["streams"]
        self.grid, self.width = self.feat_attrs["grid"], self.feat_attrs["width"]
        self.geo_attrs = geo.attrs
        self.pairs = hsa_pairs(self.manifest, geo.attrs)
        N = self.manifest.n_frames
        threshold = self.manifest.raw["contact_threshold"]
        self.contact = {s: np.concatenate([np.asarray(contact[s][e["id"]]) for e in self.manifest.episodes]) > threshold
                        for s in contact}
        # box -> token masks for every frame, with the feature store's exact image -> grid mapping
        self.box, self.visible, self.weight = {}, {}, {}
        for p in self.pairs:
            s = geo.sensors.index(p.sensor)
            for cam in (p.wrist, p.third_person):
                if cam is None:
                    continue
                mapping = GridMapping(**self.feat_attrs["mapping"][cam])
                vis = geo.cam[cam]["visible"][:, s]
                self.box[p.key(cam)] = box_token_mask(geo.cam[cam]["box"][:, s], mapping) & vis[:, None, None]
                self.visible[p.key(cam)] = vis
                self.weight[p.key(cam)] = geo.cam[cam]["weight"][:, s]
        self.boxes_px = {c: geo.cam[c]["box"] for c in geo.cameras}
        # qpos / actions for every frame, normalised, in memory (small)
        q, a = [], []
        from .episodes import Episode

        for e in self.manifest.episodes:
            with Episode(self.manifest.path(e), e["layout"]) as ep:
                q.append(ep.qpos)
                a.append(ep.action)
        self.qpos_raw, self.action_raw = np.concatenate(q), np.concatenate(a)
        self.qpos = ((self.qpos_raw - self.stats["qpos"]["mean"]) / self.stats["qpos"]["std"]).astype(np.float32)
        nbytes = N * len(self.streams) * self.grid * self.grid * self.width * 2
        self.in_memory = nbytes <= memory_budget_gb * 2**30
        self.tokens = {s: store.load(s) for s in self.streams} if self.in_memory else None
        self.cache_bytes = nbytes

    def episode_of(self, row: int) -> int:
        return int(np.searchsorted(self.manifest.offsets, row, side="right") - 1)

    def rows(self, split: str) -> np.ndarray:
        """All global frame indices of the episodes in a split."""
        offs = self.manifest.offsets
        return np.concatenate([np.arange(offs[e], offs[e + 1]) for e in self.manifest.split(split)] or [np.zeros(0, int)])


class ChunkSamples(Dataset):
    def __init__(self, caches: Caches, rows: np.ndarray, chunk_size: int, codec: ActionCodec):
        self.c, self.rows, self.chunk, self.codec = caches, np.asarray(rows), chunk_size, codec
        self.shift = caches.manifest.raw["action_shift"]
        self._store: FeatureStore | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _tokens(self, stream: str, row: int) -> np.ndarray:
        if self.c.tokens is not None:
            return self.c.tokens[stream][row]
        if self._store is None:  # opened lazily in each worker process
            self._store = FeatureStore(self.c.features_path)
        return self._store.grid(stream, row)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        e = self.c.episode_of(row)
        start, end = int(self.c.manifest.offsets[e]), int(self.c.manifest.offsets[e + 1])
        a0 = max(start, row - self.shift)  # observation t pairs with action t - shift onward
        n = min(self.chunk, end - a0)
        actions = np.zeros((self.chunk, self.c.action_raw.shape[1]), np.float32)
        actions[:n] = self.codec.encode(self.c.action_raw[a0: a0 + n], self.c.qpos_raw[row])
        is_pad = np.arange(self.chunk) >= n
        return {
            "row": torch.tensor(row),
            "qpos": torch.from_numpy(self.c.qpos[row]),
            "actions": torch.from_numpy(actions),
            "is_pad": torch.from_numpy(is_pad),
            "tokens": {s: torch.from_numpy(self._tokens(s, row).astype(np.float32)) for s in self.c.streams},
            "box": {k: torch.from_numpy(v[row]) for k, v in self.c.box.items()},
            "visible": {k: torch.tensor(bool(v[row])) for k, v in self.c.visible.items()},
            "weight": {k: torch.tensor(float(v[row])) for k, v in self.c.weight.items()},
            "contact": {k: torch.tensor(bool(v[row])) for k, v in self.c.contact.items()},
        }
