"""HDF5 episodes in the layouts users already have, read frame by frame.

ACT / ALOHA:  /observations/qpos (T, D), /action (T, D), /observations/images/<cam> (T, H, W, 3) uint8
X-Trainer:    same keys; attrs compress=True; /observations/images/<cam> (T, padded) uint8, one
              JPEG per row padded with zeros; /compress_len (n_cams, T) real byte lengths
Tactile streams live under /observations/images/<name> or /observations/<name>, raw or JPEG.

Frames are always read one at a time: h5py reads an index list from a chunked dataset
about 60x slower than frame by frame (measured on this project's machine with h5py 3.x).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from ..errors import EpisodeError
from .arrays import checked_matrix


def decode_jpeg(buf: np.ndarray | bytes, where: str, draft: tuple[int, int] | None = None) -> np.ndarray:
    """JPEG bytes (trailing zero padding allowed) -> (H, W, 3) uint8 RGB."""
    data = bytes(buf)
    if data[:2] != b"\xff\xd8":
        raise EpisodeError(f"{where}: not a JPEG (no start-of-image marker)")
    try:
        img = Image.open(io.BytesIO(data))
        if draft is not None:
            img.draft("RGB", draft)  # DCT-domain downscale: still parses every coefficient
        return np.asarray(img.convert("RGB"))
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...
        raise EpisodeError(f"{where}: JPEG does not decode: {e}") from None


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass
class Stream:
    name: str
    key: str  # HDF5 path
    compressed: bool
    length_row: int | None  # row of /compress_len, when known


class Episode:
    """An open episode file. Use as a context manager; `frame(name, t)` decodes one image."""

    def __init__(self, path: str | Path, layout: str = "auto"):
        self.path = Path(path)
        try:
            self.h5 = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            raise EpisodeError(f"{self.path}: cannot open as HDF5 (unreadable or truncated): {e}") from None
        self.compressed = bool(self.h5.attrs.get("compress", False))
        if layout == "auto":
            layout = "xtrainer" if self.compressed or "compress_len" in self.h5 else "act"
        self.layout = layout
        self._cam_order = [str(n) for n in self.h5.attrs.get("camera_names", [])]
        self._streams: dict[str, Stream] = {}
        self._lengths: np.ndarray | None = None  # /compress_len, read once

    def __enter__(self) -> "Episode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.h5.close()

    def _dataset(self, key: str) -> h5py.Dataset:
        if key not in self.h5:
            raise EpisodeError(f"{self.path}: missing key /{key}")
        ds = self.h5[key]
        if not isinstance(ds, h5py.Dataset):
            raise EpisodeError(f"{self.path}: /{key} is a group, expected a dataset")
        return ds

    def array(self, key: str) -> np.ndarray:
        """A small whole dataset (qpos, action) as float64, checked finite."""
        ds = self._dataset(key)
        try:
            a = np.asarray(ds[()], dtype=np.float64)
        except (OSError, ValueError) as e:
            raise EpisodeError(f"{self.path}: /{key} cannot be read (truncated file?): {e}") from None
        return checked_matrix(a, f"{self.path}: /{key}")

    @property
    def qpos(self) -> np.ndarray:
        return self.array("observations/qpos")

    @property
    def action(self) -> np.ndarray:
        return self.array("action")

    def stream(self, name: str, kind: str = "stream") -> Stream:
        """The image stream `name`; `kind` ('camera', 'tactile stream') words the error."""
        if name not in self._streams:
            self._streams[name] = self._find_stream(name, kind)
        return self._streams[name]

    def _find_stream(self, name: str, kind: str) -> Stream:
        for key in (f"observations/images/{name}", f"observations/{name}"):
            if key in self.h5:
                ds = self._dataset(key)
                if ds.ndim == 2 and ds.dtype == np.uint8:
                    row = self._cam_order.index(name) if name in self._cam_order else None
                    return Stream(name, key, True, row)
                if ds.ndim == 4 and ds.shape[-1] == 3 and ds.dtype == np.uint8:
                    return Stream(name, key, False, None)
                raise EpisodeError(f"{self.path}: /{key} has shape {ds.shape} {ds.dtype}; expected (T, H, W, 3) "
                                   f"uint8 or (T, bytes) uint8 JPEG rows")
        raise EpisodeError(f"{self.path}: {kind} '{name}' not found under /observations/images/{name} "
                           f"or /observations/{name}; streams present: {', '.join(self.stream_names()) or 'none'}")

    def stream_names(self) -> list[str]:
        names = []
        if "observations/images" in self.h5:
            names += list(self.h5["observations/images"].keys())
        names += [k for k, v in self.h5["observations"].items() if isinstance(v, h5py.Dataset)
                  and v.ndim in (2, 4) and v.dtype == np.uint8] if "observations" in self.h5 else []
        return names

    def stream_length(self, name: str) -> int:
        return self._dataset(self.stream(name).key).shape[0]

    def frame(self, name: str, t: int, draft: tuple[int, int] | None = None, stream: Stream | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of stream `name` at frame t."""
        s = stream or self.stream(name)
        ds = self.h5[s.key]
        where = f"{self.path}: /{s.key} frame {t}"
        try:
            row = ds[t]  # one frame: never an index list
        except (OSError, ValueError) as e:
            raise EpisodeError(f"{where}: cannot be read (truncated file?): {e}") from None
        if not s.compressed:
            return row
        if s.length_row is not None and "compress_len" in self.h5:
            if self._lengths is None:
                self._lengths = self.h5["compress_len"][()]
            n = int(self._lengths[s.length_row, t])
            if not 0 < n <= len(row):
                raise EpisodeError(f"{where}: compress_len {n} outside 1..{len(row)}")
            row = row[:n]
        return decode_jpeg(row, where, draft)


def resolve_layout(directory: str | Path, layout: str) -> str:
    """'auto' -> 'lerobot' for a LeRobot dataset (meta/info.json), else 'auto' (HDF5, per file)."""
    from .lerobot import is_lerobot

    return "lerobot" if layout == "auto" and is_lerobot(directory) else layout


def episode_files(directory: str | Path, layout: str = "auto") -> list[Path]:
    """The episodes of a directory: HDF5 files, or a LeRobot dataset's episodes (as
    <root>/episode_NNNNNN paths that `open_episode` understands)."""
    from .lerobot import episode_name, hub_id_hint, open_dataset

    d = Path(directory)
    if not d.is_dir():
        raise EpisodeError(f"{d}: episode directory not found (data.episodes_dir){hub_id_hint(str(directory))}")
    if resolve_layout(d, layout) == "lerobot":
        return [d / episode_name(i) for i in sorted(open_dataset(str(d.resolve())).episodes)]
    files = sorted(d.glob("*.hdf5")) + sorted(d.glob("*.h5"))
    if not files:
        raise EpisodeError(f"{d}: no episode files (*.hdf5, *.h5) and no LeRobot meta/info.json found "
                           f"(data.episodes_dir)")
    return files


def open_episode(path: str | Path, layout: str = "auto", lerobot: dict | None = None):
    """An HDF5 `Episode`, or a `LeRobotEpisode` when layout is 'lerobot' (then `lerobot`
    holds the feature mapping: qpos, action, images {stream: feature key})."""
    if layout != "lerobot":
        return Episode(path, layout)
    from .lerobot import LeRobotEpisode, StreamKeys, episode_index

    m = lerobot or {}
    keys = StreamKeys(m.get("qpos", "observation.state"), m.get("action", "action"),
                      tuple(sorted(m.get("images", {}).items())))
    return LeRobotEpisode(Path(path).parent, episode_index(Path(path).name), keys)


def write_episode(path: str | Path, qpos: np.ndarray, action: np.ndarray, images: dict[str, np.ndarray],
                  tactile: dict[str, np.ndarray], layout: str = "xtrainer", jpeg_quality: int = 90,
                  tactile_under_images: bool = False, sim: bool = True, compression: str | None = None) -> None:
    """Write one episode in the ACT ('act') or X-Trainer ('xtrainer') layout.

    images / tactile: name -> (T, H, W, 3) uint8 RGB. Written to a temporary name first,
    so a killed writer never leaves a file that looks complete. compression: HDF5's own
    filter for the ACT layout's raw frames ('gzip'; any HDF5 reader undoes it), or None.
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    T = len(qpos)
    with h5py.File(tmp, "w") as f:
        f.attrs["sim"] = sim
        obs = f.create_group("observations")
        obs.create_dataset("qpos", data=qpos.astype(np.float32))
        obs.create_dataset("qvel", data=np.gradient(qpos, axis=0).astype(np.float32))
        f.create_dataset("action", data=action.astype(np.float32))
        img_group = obs.create_group("images")
        streams = {**images, **tactile}
        if layout == "act":
            for name, frames in streams.items():
                group = img_group if (name in images or tactile_under_images) else obs
                group.create_dataset(name, data=frames, chunks=(1, *frames.shape[1:]), compression=compression)
        elif layout == "xtrainer":
            f.attrs["compress"] = True
            names = list(streams)
            f.attrs["camera_names"] = names
            lengths = np.zeros((len(names), T), dtype=np.int64)
            for i, name in enumerate(names):
                encoded = [encode_jpeg(streams[name][t], jpeg_quality) for t in range(T)]
                lengths[i] = [len(b) for b in encoded]
                padded = np.zeros((T, lengths[i].max()), dtype=np.uint8)
                for t, b in enumerate(encoded):
                    padded[t, : len(b)] = np.frombuffer(b, dtype=np.uint8)
                group = img_group if (name in images or tactile_under_images) else obs
                group.create_dataset(name, data=padded, chunks=(1, padded.shape[1]))
            f.create_dataset("compress_len", data=lengths)
        else:
            raise ValueError(f"layout must be 'act' or 'xtrainer', got {layout!r}")
    tmp.replace(path)
