"""The `prepare` stage: validate every episode, split by episode, normalisation stats
and per-frame contact scores.

Outputs (one directory, written atomically; read through manifest.Manifest):
  episodes.json  episodes (id, file, length, layout, sha256 of the file), skipped episodes
                 with reasons, streams with roles and image shapes, qpos/action widths.
                 The caches (geometry, features) depend on this file only.
  training.json  the split (episode id -> train | val), action_shift
  stats.json     per-dimension mean/std of qpos and action over training frames
                 (std clipped to >= 1e-2 so a still joint cannot produce inf/NaN, as ACT does)
  contact.json   per tactile stream and episode: the contact score and the contact flag
                 of every frame, read from the tactile images (data/contact.py)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import DataConfig
from ..errors import EpisodeError
from ..pipeline.atomic import atomic_dir, write_json
from ..pipeline.hashing import sha256_file
from .contact import THUMB, ContactTrace, doubtful_starts, rest_look, start_look, thumbnail, trace
from .episodes import episode_files, open_episode, resolve_layout
from .lerobot import stream_mapping
from .manifest import CONTACT_FILE, EPISODES_FILE, SCHEMA_VERSIONS, STATS_FILE, TRAINING_FILE

STD_MIN = 1e-2  # ACT clips std at 1e-2 (tonyzhaozh/act utils.get_norm_stats)


@dataclass
class EpisodeInfo:
    id: str
    file: str
    length: int
    layout: str
    sha256: str  # of the file's bytes: the caches downstream are keyed on content, not names
    shapes: dict[str, list[int]]  # stream -> [H, W]
    qpos: np.ndarray
    action: np.ndarray
    contact: dict[str, ContactTrace]  # tactile stream -> its contact score and flag per frame
    start: dict[str, np.ndarray]  # tactile stream -> (32, 32, 3) its look at the episode's start


def read_and_check(path: Path, cfg: DataConfig, chunk_size: int, layout: str,
                   file_digests: dict[str, str] | None = None, rest: dict[str, np.ndarray] | None = None) -> EpisodeInfo:
    """Open one episode and check everything later stages rely on; EpisodeError otherwise.
    `file_digests`: LeRobot files already hashed in this pass (shared by several episodes);
    `rest`: each tactile stream's no-contact look over the dataset (data.contact.reference:
    dataset_start), else each episode's own start is its reference."""
    with open_episode(path, layout, stream_mapping(cfg)) as ep:
        if layout == "lerobot":
            ep.check_timestamps()
        qpos, action = ep.qpos, ep.action
        T = len(qpos)
        if len(action) != T:
            raise EpisodeError(f"{path}: /action has {len(action)} frames but /observations/qpos has {T}")
        need = max(cfg.min_length, chunk_size + cfg.action_shift)
        if T < need:
            raise EpisodeError(f"{path}: {T} frames, shorter than the {need} needed (act.chunk_size {chunk_size} "
                               f"+ data.action_shift {cfg.action_shift}, data.min_length {cfg.min_length})")
        shapes, thumbs = {}, {}
        for name in [*cfg.cameras, *cfg.tactile]:
            stream = ep.stream(name, kind="tactile stream" if name in cfg.tactile else "camera")
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
                    thumbs[name][t] = thumbnail(img)
    digest = ep.sha256(file_digests) if layout == "lerobot" else sha256_file(path)
    # contact from the thumbnails now, so no episode's thumbnails outlive its check
    start = {s: start_look(v, cfg.contact) for s, v in thumbs.items()}
    contact = {s: trace(v, start[s] if rest is None else rest[s], cfg.contact) for s, v in thumbs.items()}
    return EpisodeInfo(path.stem, path.name, T, ep.layout, digest, shapes, qpos, action, contact, start)


def dataset_rest_looks(files: list[Path], cfg: DataConfig, layout: str) -> dict[str, np.ndarray]:
    """data.contact.reference: dataset_start: each tactile stream's rest look, the median
    of every episode's start look (a pass that reads only each episode's first frames)."""
    starts: dict[str, list[np.ndarray]] = {s: [] for s in cfg.tactile}
    for path in tqdm(files, desc="prepare: the sensors' rest looks", unit="ep"):
        try:
            with open_episode(path, layout, stream_mapping(cfg)) as ep:
                for s in cfg.tactile:
                    n = min(cfg.contact.reference_frames, ep.stream_length(s))
                    thumbs = np.stack([thumbnail(ep.frame(s, t, draft=THUMB)) for t in range(n)])
                    starts[s].append(start_look(thumbs, cfg.contact))
        except EpisodeError:
            continue  # the main pass reports (or skips) it
    return {s: rest_look(v) for s, v in starts.items() if v}


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


def run_prepare(cfg: DataConfig, chunk_size: int, out_dir: str | Path) -> dict:
    layout = resolve_layout(cfg.episodes_dir, cfg.layout)
    files = episode_files(cfg.episodes_dir, layout)
    infos: list[EpisodeInfo] = []
    skipped = []
    file_digests: dict[str, str] = {}  # this pass only: a file edited later is hashed again next time
    rest = dataset_rest_looks(files, cfg, layout) if cfg.tactile and cfg.contact.reference == "dataset_start" else None
    for path in tqdm(files, desc="prepare: checking episodes", unit="ep"):
        try:
            infos.append(read_and_check(path, cfg, chunk_size, layout, file_digests, rest))
        except EpisodeError as e:
            if cfg.on_bad_episode == "error":
                raise
            skipped.append({"file": path.name, "reason": str(e)})
            tqdm.write(f"skipping {e}", file=sys.stderr)
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
    n_val = sum(s == "val" for s in split.values())
    if n_val == 0 and cfg.train_ratio < 1.0:
        # asked for validation but none is left (too few usable episodes): stop here, not in evaluate
        raise EpisodeError(f"{cfg.episodes_dir}: no validation episode is left: {len(infos)} usable episode(s), "
                           f"{len(skipped)} skipped (reasons in the lines above); record more episodes, fix the "
                           f"skipped ones, or set data.train_ratio: 1.0 to train without validation")
    if n_val == 0:
        tqdm.write(f"warning: no validation episodes (data.train_ratio is 1.0; {len(skipped)} skipped): training "
                   f"runs without validation and `evaluate` has nothing held out to score", file=sys.stderr)
    train = [i for i in infos if split[i.id] == "train"]
    stats = {"qpos": norm_stats([i.qpos for i in train]), "action": norm_stats([i.action for i in train]),
             "frames": int(sum(i.length for i in train))}
    contact = {name: {i.id: {"score": np.round(i.contact[name].score, 5).tolist(),
                             "contact": i.contact[name].contact.astype(int).tolist()} for i in infos}
               for name in cfg.tactile}
    report_contact(cfg, infos)
    episodes = {
        "schema_version": SCHEMA_VERSIONS["manifest"],
        "episodes_dir": str(cfg.episodes_dir),
        "episodes": [{"id": i.id, "file": i.file, "length": i.length, "layout": i.layout, "sha256": i.sha256}
                     for i in infos],
        "skipped": skipped,
        "cameras": {n: {"role": r, "shape": ref.shapes[n]} for n, r in cfg.cameras.items()},
        "tactile": {n: {"shape": ref.shapes[n]} for n in cfg.tactile},
        "qpos_dim": int(ref.qpos.shape[1]),
        "action_dim": int(ref.action.shape[1]),
        **({"lerobot": stream_mapping(cfg)} if layout == "lerobot" else {}),
    }
    training = {"split": split, "action_shift": cfg.action_shift}
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / EPISODES_FILE, episodes)
        write_json(tmp / TRAINING_FILE, training)
        write_json(tmp / STATS_FILE, stats)
        write_json(tmp / CONTACT_FILE, contact)
    return {**episodes, "split": split, "n_val": n_val}


def report_contact(cfg: DataConfig, infos: list[EpisodeInfo]) -> None:
    """One line per tactile stream: how much of the data is in contact, how many episodes
    never touch (they get no next-contact positive), and episodes that may start in contact."""
    for name in cfg.tactile:
        flags = [i.contact[name].contact for i in infos]
        frac = float(np.concatenate(flags).mean())
        untouched = sum(not f.any() for f in flags)
        line = (f"prepare: {name}: in contact in {frac:.0%} of the frames; {untouched} of {len(infos)} episodes "
                f"without contact")
        doubtful = doubtful_starts({i.id: i.start[name] for i in infos}, cfg.contact) if len(infos) > 2 else []
        if doubtful:
            line += (f"; {len(doubtful)} episode(s) start unlike the others (in contact already?), e.g. "
                     f"{', '.join(doubtful[:3])}: see data.contact.reference")
        tqdm.write(line, file=sys.stderr)
