"""The `prepare` stage: validate every episode, split by episode, normalisation stats
and per-frame contact scores.

Outputs (one directory, written atomically):
  manifest.json  episodes (id, file, length, split), skipped episodes with reasons,
                 streams with roles and image shapes, qpos/action widths, action_shift
  stats.json     per-dimension mean/std of qpos and action over training frames
                 (std clipped to >= 1e-2 so a still joint cannot produce inf/NaN)
  contact.json   per tactile stream and episode: the contact score of every frame
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .atomic import atomic_dir, read_json, write_json
from .config import DataConfig
from .episodes import Episode, EpisodeError, episode_files

STD_MIN = 1e-2
THUMB = (32, 32)  # contact scores compare small thumbnails: cheap and robust to noise


@dataclass
class EpisodeInfo:
    id: str
    file: str
    length: int
    layout: str
    shapes: dict[str, list[int]]  # stream -> [H, W]
    qpos: np.ndarray
    action: np.ndarray
    thumbs: dict[str, np.ndarray]  # tactile stream -> (T, 32, 32, 3) float32


def _thumb(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(THUMB, Image.Resampling.BILINEAR), dtype=np.float32)


def read_and_check(path: Path, cfg: DataConfig, chunk_size: int) -> EpisodeInfo:
    """Open one episode and check everything later stages rely on; EpisodeError otherwise."""
    with Episode(path, cfg.layout) as ep:
        qpos, action = ep.qpos, ep.action
        T = len(qpos)
        if len(action) != T:
            raise EpisodeError(f"{path}: /action has {len(action)} frames but /observations/qpos has {T}")
        need = max(cfg.min_length, chunk_size + cfg.action_shift)
        if T < need:
            raise EpisodeError(f"{path}: {T} frames, shorter than the {need} needed "
                               f"(act.chunk_size {chunk_size} + data.action_shift {cfg.action_shift}, data.min_length {cfg.min_length})")
        shapes, thumbs = {}, {}
        for name in [*cfg.cameras, *cfg.tactile]:
            stream = ep.stream(name)
            n = ep.stream_length(name)
            if n != T:
                raise EpisodeError(f"{path}: /{stream.key} has {n} frames, qpos has {T}")
            first = ep.frame(name, 0, stream=stream)
            shapes[name] = list(first.shape[:2])
            is_tactile = name in cfg.tactile
            if is_tactile:
                thumbs[name] = np.empty((T, *THUMB, 3), dtype=np.float32)
            # Decode every frame (downscaled in the DCT domain for JPEG: the entropy data is still
            # fully parsed), so a corrupt frame is reported here, not hours into feature extraction.
            draft = THUMB if is_tactile else (max(8, first.shape[1] // 8), max(8, first.shape[0] // 8))
            for t in range(T):
                img = ep.frame(name, t, draft=draft, stream=stream)
                if not stream.compressed and img.shape[:2] != first.shape[:2]:
                    raise EpisodeError(f"{path}: /{stream.key} frame {t} has shape {img.shape}")
                if is_tactile:
                    thumbs[name][t] = _thumb(img)
        return EpisodeInfo(path.stem, path.name, T, ep.layout, shapes, qpos, action, thumbs)


def split_episodes(ids: list[str], train_ratio: float, seed: int) -> dict[str, str]:
    """Episode id -> 'train' | 'val'. Keeps at least one validation episode when
    train_ratio < 1 and there are two or more episodes."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(train_ratio * len(ids)))
    if train_ratio < 1.0 and len(ids) > 1:
        n_train = min(n_train, len(ids) - 1)
    n_train = max(n_train, 1)
    return {ids[i]: ("train" if rank < n_train else "val") for rank, i in enumerate(order)}


def norm_stats(arrays: list[np.ndarray]) -> dict[str, list[float]]:
    x = np.concatenate(arrays, axis=0)
    return {"mean": x.mean(axis=0).tolist(), "std": np.maximum(x.std(axis=0), STD_MIN).tolist()}


def contact_scores(thumbs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Episode -> (T,) scores: mean absolute difference (0..1) from the stream's no-contact
    reference, the per-pixel median over all frames (contact is the exception, not the rule)."""
    stacked = np.concatenate(list(thumbs.values()), axis=0)
    ref = np.median(stacked, axis=0)  # (32, 32, 3)
    return {k: np.abs(v - ref).mean(axis=(1, 2, 3)) / 255.0 for k, v in thumbs.items()}, ref


def run_prepare(cfg: DataConfig, chunk_size: int, out_dir: str | Path) -> dict:
    files = episode_files(cfg.episodes_dir)
    infos: list[EpisodeInfo] = []
    skipped = []
    for path in tqdm(files, desc="prepare: checking episodes", unit="ep"):
        try:
            infos.append(read_and_check(path, cfg, chunk_size))
        except EpisodeError as e:
            if cfg.on_bad_episode == "error":
                raise
            skipped.append({"file": path.name, "reason": str(e)})
            tqdm.write(f"skipping {e}")
    if not infos:
        raise EpisodeError(f"{cfg.episodes_dir}: no usable episodes ({len(skipped)} skipped)")
    ref = infos[0]
    for info in infos[1:]:
        for name, shape in ref.shapes.items():
            if info.shapes[name] != shape:
                raise EpisodeError(f"{cfg.episodes_dir}/{info.file}: stream '{name}' is {info.shapes[name]}, "
                                   f"other episodes are {shape}")
        for key in ("qpos", "action"):
            if getattr(info, key).shape[1] != getattr(ref, key).shape[1]:
                raise EpisodeError(f"{cfg.episodes_dir}/{info.file}: /{key} has width {getattr(info, key).shape[1]}, "
                                   f"other episodes have {getattr(ref, key).shape[1]}")

    split = split_episodes([i.id for i in infos], cfg.train_ratio, cfg.split_seed)
    train = [i for i in infos if split[i.id] == "train"]
    stats = {"qpos": norm_stats([i.qpos for i in train]), "action": norm_stats([i.action for i in train]),
             "frames": int(sum(i.length for i in train))}
    contact = {}
    for name in cfg.tactile:
        scores, _ = contact_scores({i.id: i.thumbs[name] for i in infos})
        contact[name] = {k: np.round(v, 5).tolist() for k, v in scores.items()}
    manifest = {
        "episodes_dir": str(cfg.episodes_dir),
        "episodes": [{"id": i.id, "file": i.file, "length": i.length, "layout": i.layout, "split": split[i.id]}
                     for i in infos],
        "skipped": skipped,
        "cameras": {n: {"role": r, "shape": ref.shapes[n]} for n, r in cfg.cameras.items()},
        "tactile": {n: {"shape": ref.shapes[n]} for n in cfg.tactile},
        "qpos_dim": int(ref.qpos.shape[1]),
        "action_dim": int(ref.action.shape[1]),
        "action_shift": cfg.action_shift,
        "contact_threshold": cfg.contact_threshold,
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "manifest.json", manifest)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "contact.json", contact)
    return manifest


@dataclass
class Manifest:
    """The manifest as later stages use it: episodes in a fixed order and global frame
    indices (frame t of episode e is row offsets[e] + t of every cache)."""

    raw: dict

    @classmethod
    def load(cls, prepare_dir: str | Path) -> "Manifest":
        return cls(read_json(Path(prepare_dir) / "manifest.json", "manifest.json (stage prepare)"))

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

    def split(self, name: str) -> list[int]:
        return [i for i, e in enumerate(self.episodes) if e["split"] == name]

    @property
    def streams(self) -> dict[str, str]:
        """stream -> role (third_person | wrist | tactile), cameras first."""
        return {**{n: c["role"] for n, c in self.raw["cameras"].items()}, **{n: "tactile" for n in self.raw["tactile"]}}
