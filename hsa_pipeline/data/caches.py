"""Training samples from the caches only (no JPEG decoding, no image encoder).

A sample is one frame t of one episode; `Batch` (below) is B of them, the typed contract
between data and model:

  qpos       (Dq,)            normalised
  actions    (chunk, Da)      normalised action[t - shift : t - shift + chunk] (ActionCodec), zero-padded
  is_pad     (chunk,)         True where the episode ended before the chunk did
  tokens     {stream: (G, G, C)} cached CLIP grids (float32)
  box        {pair: (G, G)}   tokens inside the sensor box, per (camera, sensor) pair
  visible    {pair: ()}       sensor visible in that camera
  weight     {pair: ()}       fraction of the box inside the image (alpha)
  contact    {sensor: ()}     the sensor in contact (geometry store: from its touch)
  row        ()               global frame index

Caches are held in RAM when they fit `train.memory_budget_gb`, otherwise read from Zarr
per sample (DataLoader workers), so memory does not grow with the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from ..errors import StoreError
from .codec import ActionCodec, normalise_qpos
from .grid import GridMapping, box_token_mask
from .manifest import Manifest, load_stats
from .stores import FeatureStore, GeometryInfo, GeometryStore, check_rows


@dataclass(frozen=True)
class SensorCameras:
    """One tactile sensor and the cameras that can see where IT is going: HSA aligns its
    touch with them, and its touch map marks them. A (camera, sensor) pair's key names its
    boxes in a `Batch`."""

    sensor: str  # tactile stream = sensor name
    wrist: str | None  # the (first) wrist camera on the same arm
    third_persons: tuple[str, ...]  # every third-person camera

    @property
    def cameras(self) -> list[str]:
        """Every camera of this sensor: its wrist camera first."""
        return ([self.wrist] if self.wrist else []) + list(self.third_persons)

    def key(self, camera: str) -> str:
        """The (camera, sensor) pair's key in a Batch's box, visible and weight dicts."""
        return f"{camera}/{self.sensor}"


def chunk_window(row: int, start: int, end: int, chunk: int, shift: int) -> tuple[int, int]:
    """The recorded actions that frame `row` of the episode [start, end) is trained to
    predict: action[a0 : a0 + n], a0 = row - shift (observation t pairs with action
    t - shift onward, clipped at the episode start), n <= chunk (fewer at the episode end)."""
    a0 = max(start, row - shift)
    return a0, min(chunk, end - a0)


def sensor_cameras(manifest: Manifest, geometry: GeometryInfo) -> list[SensorCameras]:
    """For each tactile sensor: the wrist camera on its arm and every third-person camera."""
    cams = manifest.info.cameras
    camera_mounts, sensor_arms = geometry.camera_mounts, geometry.sensor_arms
    third_persons = tuple(c for c, v in cams.items() if v.role == "third_person")
    groups = []
    for sensor in manifest.info.tactile:
        if sensor not in geometry.sensors:
            continue
        arm = sensor_arms.get(sensor)
        wrist = next((c for c, v in cams.items() if v.role == "wrist" and camera_mounts.get(c) == arm), None)
        groups.append(SensorCameras(sensor, wrist, third_persons))
    return groups


class RowTokens:
    """One stream's token grids for some rows only, indexed by global row like the whole
    (N, G, G, C) array: an int, a slice or an array of rows; a row not held is an error."""

    def __init__(self, store: FeatureStore, stream: str, rows: np.ndarray, n_frames: int):
        self.stream, self.rows = stream, np.unique(np.asarray(rows, dtype=np.int64))
        self.local = np.full(n_frames, -1, np.int64)
        self.local[self.rows] = np.arange(len(self.rows))
        self.data = np.stack([store.grid(stream, int(r)) for r in self.rows]) if len(self.rows) else None

    def __getitem__(self, index):
        rows = np.arange(len(self.local))[index] if isinstance(index, slice) else np.asarray(index)
        local = self.local[rows]
        if (local < 0).any():
            raise StoreError(f"{self.stream}: frame {int(np.asarray(rows).flat[np.argmax(np.ravel(local) < 0)])} "
                             "is not among the rows held (Caches.load_rows)")
        return self.data[local]


class StreamedTokens:
    """One stream's token grids read from the feature store as they are indexed (an int, a
    slice or an array of rows, like the whole (N, G, G, C) array): memory grows with what one
    index asks for, not with the rows that can be asked for."""

    def __init__(self, store: FeatureStore, stream: str, n_frames: int):
        self.store, self.stream, self.n_frames = store, stream, n_frames

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.store.grid(self.stream, int(index))
        rows = np.arange(self.n_frames)[index] if isinstance(index, slice) else np.asarray(index)
        grids = np.stack([self.store.grid(self.stream, int(r)) for r in rows.ravel()])  # (R, G, G, C)
        return grids.reshape(rows.shape + grids.shape[1:])


class Caches:
    """Everything training and evaluation read, opened once: the prepare outputs, the
    geometry store (as box -> token masks) and the feature store."""

    def __init__(self, prepare_dir: Path, geometry_path: Path, features_path: Path, memory_budget_gb: float,
                 positives: str = "now"):
        self.manifest = Manifest.load(prepare_dir)
        self.stats = load_stats(prepare_dir)
        self.features_path = Path(features_path)
        store = FeatureStore(features_path)
        check_rows(store.attrs, self.manifest, self.features_path, "features")
        geo = GeometryStore(geometry_path)
        check_rows(geo.attrs, self.manifest, Path(geometry_path), "geometry")
        self.feature_info, self.geometry_info = store.info, geo.info
        # what a result trained on these caches is a function of (the resume key uses it)
        self.fingerprint = {"prepare": self.manifest.prepare_fingerprint, "geometry": geo.fingerprint,
                            "features": store.fingerprint}
        self.streams: dict[str, str] = store.info.streams
        self.grid, self.width = store.info.grid, store.info.width
        self.sensor_cameras = sensor_cameras(self.manifest, geo.info)
        N = self.manifest.n_frames
        # each tactile sensor in contact, as the geometry stage decided it (from its touch)
        self.contact = {s: geo.contact[:, geo.sensors.index(s)] for s in self.manifest.info.tactile
                        if s in geo.sensors}
        # where each sensor's touch next changes (a row, -1: never again): evaluation groups by it
        self.next_row = {s: geo.next_row[:, geo.sensors.index(s)] for s in self.contact}
        self._geo, self._mapping = geo, store.info.mapping
        # what the HSA loss trains on: the sensor's box now, or where its touch next changes
        self.box, self.visible, self.weight = self.token_boxes(positives)
        self.boxes_px = {c: geo.cam[c]["box"] for c in geo.cameras}  # where each sensor is
        self.next_boxes_px = {c: geo.cam[c]["next_box"] for c in geo.cameras}  # where its touch next changes
        # qpos / actions for every frame, normalised, in memory (small)
        q, a = [], []
        for e in self.manifest.episodes:
            with self.manifest.open(e) as ep:
                q.append(ep.qpos)
                a.append(ep.action)
        self.qpos_raw, self.action_raw = np.concatenate(q), np.concatenate(a)
        self.qpos = normalise_qpos(self.qpos_raw, self.stats)
        self.row_bytes = len(self.streams) * self.grid * self.grid * self.width * 2  # one frame's grids, float16
        nbytes = N * self.row_bytes
        self.in_memory = nbytes <= memory_budget_gb * 2**30
        self.tokens = {s: store.load(s) for s in self.streams} if self.in_memory else None
        self.cache_bytes = nbytes

    def load_rows(self, rows: np.ndarray, memory_budget_gb: float = float("inf")) -> int:
        """Hold the token grids of `rows` only (evaluation: the validation frames and their
        swap donors), indexed by global row as the whole arrays are; memory grows with the
        rows asked for, not the dataset. Over `memory_budget_gb`, hold none: each index reads
        its rows from the store. Returns the bytes held."""
        store = FeatureStore(self.features_path)
        n = self.manifest.n_frames
        if len(np.unique(rows)) * self.row_bytes > memory_budget_gb * 2**30:
            self.tokens = {s: StreamedTokens(store, s, n) for s in self.streams}
            return 0
        self.tokens = {s: RowTokens(store, s, rows, n) for s in self.streams}
        return sum(t.data.nbytes for t in self.tokens.values())

    def token_boxes(self, positives: str) -> tuple[dict, dict, dict]:
        """Box -> token masks (N, G, G) for every frame and (camera, sensor) pair, with the
        feature store's exact image -> grid mapping, and each box's visibility and weight:
        positives 'now' = where the sensor is; 'next_contact' = where its touch next changes."""
        pre = "next_" if positives == "next_contact" else ""
        box, visible, weight = {}, {}, {}
        for p in self.sensor_cameras:
            s = self._geo.sensors.index(p.sensor)
            for cam in p.cameras:
                mapping = GridMapping(**self._mapping[cam])
                vis = self._geo.cam[cam][pre + "visible"][:, s]
                box[p.key(cam)] = box_token_mask(self._geo.cam[cam][pre + "box"][:, s], mapping) & vis[:, None, None]
                visible[p.key(cam)] = vis
                weight[p.key(cam)] = self._geo.cam[cam][pre + "weight"][:, s]
        return box, visible, weight

    def episode_of(self, row: int) -> int:
        return self.manifest.episode_of(row)

    def sensor_boxes_px(self, camera: str, sensor: str, positives: str = "now") -> np.ndarray:
        """(N, 4) pixel box of `sensor` in `camera` for every frame: where it is ('now'), or
        where its touch next changes ('next_contact', HSA's positives of that name)."""
        boxes = self.next_boxes_px if positives == "next_contact" else self.boxes_px
        return boxes[camera][:, self.geometry_info.sensors.index(sensor)]

    def rows(self, split: str) -> np.ndarray:
        """All global frame indices of the episodes in a split."""
        offs = self.manifest.offsets
        return np.concatenate([np.arange(offs[e], offs[e + 1]) for e in self.manifest.split(split)] or [np.zeros(0, int)])


@dataclass(frozen=True)
class Batch:
    """The training contract between the data and the model: B samples. Per-sensor keys
    are 'camera/sensor' (SensorCameras.key); `contact` is keyed by sensor. Normalised = z-scored
    with the prepare stage's stats (ActionCodec for actions)."""

    row: torch.Tensor  # (B,) global frame index (row of every store)
    qpos: torch.Tensor  # (B, Dq) float32, normalised
    actions: torch.Tensor  # (B, k, Da) float32, normalised; 0 where padded
    is_pad: torch.Tensor  # (B, k) bool: past the episode's end
    tokens: dict[str, torch.Tensor]  # stream -> (B, G, G, C) float32 feature grid
    box: dict[str, torch.Tensor]  # 'camera/sensor' -> (B, G, G) bool: tokens inside the sensor's box
    visible: dict[str, torch.Tensor]  # 'camera/sensor' -> (B,) bool: the box is in the image
    weight: dict[str, torch.Tensor]  # 'camera/sensor' -> (B,) float32: how much of the sensor the box shows
    contact: dict[str, torch.Tensor]  # sensor -> (B,) bool: in contact (geometry store, from its touch)

    @classmethod
    def collate(cls, samples: list[dict]) -> "Batch":
        """ChunkSamples items (one sample each, the same fields unbatched) -> a Batch."""
        return cls(**default_collate(samples))

    def to(self, device: torch.device) -> "Batch":
        move = lambda v: v.to(device, non_blocking=True)  # noqa: E731
        return Batch(**{f.name: ({k: move(t) for k, t in getattr(self, f.name).items()}
                                 if isinstance(getattr(self, f.name), dict) else move(getattr(self, f.name)))
                        for f in fields(self)})

    def float_tokens(self) -> "Batch":
        return replace(self, tokens={s: v.float() for s, v in self.tokens.items()})


class ChunkSamples(Dataset):
    """One training sample per row, read from the caches (or streamed from Zarr): the
    per-sample reference of the contract (Batch's fields, unbatched)."""

    def __init__(self, caches: Caches, rows: np.ndarray, chunk_size: int, codec: ActionCodec):
        self.c, self.rows, self.chunk, self.codec = caches, np.asarray(rows), chunk_size, codec
        self.shift = caches.manifest.action_shift
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
        a0, n = chunk_window(row, start, end, self.chunk, self.shift)
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


class FrameBatches:
    """Batches of the sample contract above, gathered by tensor indexing from caches held
    as tensors (no per-sample Python, no host-side float16 -> float32 conversion): what
    training uses when the caches fit `train.memory_budget_gb`. The tables live on `cache_device`:
    the training device when they fit there (a GPU: training/sampling.cache_device), else the host, each
    batch then gathered there and copied over. ChunkSamples is the per-sample reference
    (and the streaming path); tests check that both give the same batches."""

    def __init__(self, caches: Caches, chunk_size: int, codec: ActionCodec, device: torch.device,
                 cache_device: torch.device | None = None):
        if caches.tokens is None:
            raise ValueError("FrameBatches needs the caches in memory (Caches(..., memory_budget_gb) too small)")
        self.device, self.cache_device = device, cache_device or device
        t = lambda a, dtype=None: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.cache_device)  # noqa: E731
        m = caches.manifest
        rows = np.arange(m.n_frames)
        ep = np.searchsorted(m.offsets, rows, side="right") - 1
        start, end = m.offsets[ep], m.offsets[ep + 1]
        a0 = np.maximum(start, rows - m.action_shift)  # chunk_window, for every row at once
        n = np.minimum(chunk_size, end - a0)
        steps = np.arange(chunk_size)
        self.is_pad = t(steps[None] >= n[:, None])  # (N, k)
        self.action_index = t(np.minimum(a0[:, None] + steps[None], end[:, None] - 1))  # (N, k), pads repeat the last
        self.action = t(caches.action_raw, torch.float32)  # (N, Da) raw units
        self.qpos_raw = t(caches.qpos_raw, torch.float32)  # (N, Dq)
        self.qpos = t(caches.qpos)  # (N, Dq) normalised
        self.mean, self.std, self.relative = t(codec.mean, torch.float32), t(codec.std, torch.float32), codec.relative
        self.tokens = {s: t(caches.tokens[s]) for s in caches.streams}  # (N, G, G, C) float16
        self.box = {k: t(v) for k, v in caches.box.items()}
        self.visible = {k: t(v) for k, v in caches.visible.items()}
        self.weight = {k: t(v, torch.float32) for k, v in caches.weight.items()}
        self.contact = {k: t(v) for k, v in caches.contact.items()}

    def batch(self, rows: torch.Tensor) -> Batch:
        """rows (B,) global frame indices on `cache_device` -> the sample contract, batched, on the device."""
        is_pad = self.is_pad[rows]  # (B, k)
        ref = self.qpos_raw[rows][:, None] if self.relative else self.mean  # (B, 1, Da) or (Da,)
        actions = (self.action[self.action_index[rows]] - ref) / self.std  # (B, k, Da)
        batch = Batch(
            row=rows,
            qpos=self.qpos[rows],
            actions=actions.masked_fill(is_pad[..., None], 0.0),
            is_pad=is_pad,
            tokens={s: v[rows] for s, v in self.tokens.items()},  # (B, G, G, C) float16
            box={k: v[rows] for k, v in self.box.items()},
            visible={k: v[rows] for k, v in self.visible.items()},
            weight={k: v[rows] for k, v in self.weight.items()},
            contact={k: v[rows] for k, v in self.contact.items()},
        )
        if self.cache_device != self.device:  # held on the host: copied as float16, half the bytes of float32
            batch = batch.to(self.device)
        return batch.float_tokens()

    @staticmethod
    def nbytes(caches: Caches) -> int:
        """What the tables take wherever they are held: the token grids and box masks."""
        return caches.cache_bytes + sum(v.nbytes for v in caches.box.values())
