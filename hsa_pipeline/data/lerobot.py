"""LeRobot datasets, read in place (never written to, never downloaded).

Format v3.0 (what LeRobot records today):
  meta/info.json                          fps, features {key: {dtype, shape, ...}}, data_path, video_path
  meta/episodes/chunk-XXX/file-XXX.parquet one row per episode: episode_index, length,
                                          data/chunk_index, data/file_index, dataset_from_index,
                                          dataset_to_index, videos/<key>/{chunk_index, file_index,
                                          from_timestamp, to_timestamp}
  data/chunk-XXX/file-XXX.parquet         frames of many episodes: observation.state, action,
                                          timestamp (seconds in the episode), frame_index, episode_index
  videos/<key>/chunk-XXX/file-XXX.mp4     a camera (or tactile) stream, several episodes back to back;
                                          an episode starts at its from_timestamp
Format v2.x: one parquet file and one mp4 per episode (data_path / video_path templates with
episode_chunk and episode_index), episodes in meta/episodes.jsonl, videos start at 0.

`LeRobotEpisode` reads like an HDF5 `Episode` (qpos, action, frame(name, t)), so every stage
takes a LeRobot dataset unchanged. Video frames are decoded with PyAV (FFmpeg): sequential
reads continue decoding; a jump seeks to the nearest keyframe before the frame's
timestamp. The features stage reads every stream in order, so each episode is decoded
about once.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import EpisodeError
from ..pipeline.hashing import sha256_file
from .arrays import checked_matrix

VERSIONS = ("v2.0", "v2.1", "v3.0")
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's own default tolerance between a frame and its timestamp


def is_lerobot(root: str | Path) -> bool:
    return (Path(root) / "meta" / "info.json").is_file()


def hub_id_hint(path: str) -> str:
    """A hint when a path that does not exist looks like a hub repo id ('user/name')."""
    parts = str(path).split("/")
    if len(parts) == 2 and all(parts) and not Path(path).exists() and not str(path).startswith("."):
        return (f"; '{path}' looks like a Hugging Face hub repo id: this pipeline reads local datasets only, "
                f"download it first, e.g. `huggingface-cli download --repo-type dataset {path} "
                f"--local-dir data/{parts[1]}`, and set data.episodes_dir: data/{parts[1]}")
    return ""


@dataclass(frozen=True)
class StreamKeys:
    """Which LeRobot features are the pipeline's qpos, action and image streams."""

    qpos: str
    action: str
    images: tuple[tuple[str, str], ...]  # (stream name, feature key)

    def image_key(self, name: str) -> str:
        return dict(self.images).get(name, f"observation.images.{name}")


class LeRobotDataset:
    """The metadata of a local LeRobot dataset, checked once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, ValueError) as e:
            raise EpisodeError(f"{info_path}: not a readable LeRobot info.json: {e}") from None
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in VERSIONS:
            raise EpisodeError(f"{info_path}: codebase_version {self.version!r}; this reader knows {', '.join(VERSIONS)}")
        self.fps = float(self.info["fps"])
        self.features: dict = self.info["features"]
        self.episodes = self._episodes()  # episode_index -> row of the episodes table

    def _episodes(self) -> dict[int, dict]:
        if self.version == "v3.0":
            import pyarrow.parquet as pq

            files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise EpisodeError(f"{self.root}/meta/episodes: no episode metadata (chunk-*/file-*.parquet)")
            rows = [r for f in files for r in pq.read_table(f).to_pylist()]
        else:
            path = self.root / "meta" / "episodes.jsonl"
            if not path.is_file():
                raise EpisodeError(f"{path}: missing (LeRobot {self.version} lists its episodes there)")
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {int(r["episode_index"]): r for r in rows}

    # ------------------------------------------------------------------ where things are
    def data_file(self, ep: int) -> Path:
        row = self.episodes[ep]
        if self.version == "v3.0":
            rel = self.info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        else:
            rel = self.info["data_path"].format(episode_chunk=ep // self.info.get("chunks_size", 1000),
                                                episode_index=ep)
        return self.root / rel

    def video(self, ep: int, key: str) -> tuple[Path, float]:
        """The mp4 holding feature `key` of episode `ep`, and the episode's first timestamp in it."""
        row = self.episodes[ep]
        if self.version == "v3.0":
            rel = self.info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                 file_index=row[f"videos/{key}/file_index"])
            return self.root / rel, float(row[f"videos/{key}/from_timestamp"])
        rel = self.info["video_path"].format(episode_chunk=ep // self.info.get("chunks_size", 1000), video_key=key,
                                             episode_index=ep)
        return self.root / rel, 0.0

    def files(self, ep: int, image_keys: list[str]) -> list[Path]:
        """Every file episode `ep` is read from: metadata, its data file, its videos."""
        meta = self.root / "meta"
        tables = sorted((meta / "episodes").glob("chunk-*/file-*.parquet")) if self.version == "v3.0" \
            else [meta / "episodes.jsonl"]
        return [meta / "info.json", *tables, self.data_file(ep)] + [self.video(ep, k)[0] for k in image_keys]


@functools.lru_cache(maxsize=8)
def open_dataset(root: str) -> LeRobotDataset:
    """One metadata read per dataset and process (DataLoader workers each have their own)."""
    return LeRobotDataset(root)


@functools.lru_cache(maxsize=64)
def _data_table(path: str):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, ValueError) as e:
        raise EpisodeError(f"{path}: cannot read the parquet file: {e}") from None


def episode_name(index: int) -> str:
    return f"episode_{index:06d}"


def episode_index(name: str) -> int:
    try:
        return int(name.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        raise EpisodeError(f"{name}: not a LeRobot episode name (episode_NNNNNN)") from None


# --------------------------------------------------------------------------- video
class VideoReader:
    """Frames of one mp4 by timestamp; sequential requests keep decoding, jumps seek."""

    def __init__(self, path: Path):
        import av

        if not path.is_file():
            raise EpisodeError(f"{path}: video file missing")
        try:
            self.container = av.open(str(path))
            self.stream = self.container.streams.video[0]
        except (av.error.FFmpegError, IndexError) as e:
            raise EpisodeError(f"{path}: not a readable video: {e}") from None
        self.stream.thread_type = "AUTO"
        self.path = path
        self._frames = None  # the decode iterator
        self._last: tuple[float, np.ndarray] | None = None  # (timestamp, image) of the last decoded frame

    def close(self) -> None:
        self.container.close()

    def _seek(self, ts: float) -> None:
        self.container.seek(max(0, round(ts / self.stream.time_base) - 1), backward=True, any_frame=False,
                            stream=self.stream)
        self._frames = self.container.decode(self.stream)
        self._last = None

    def frame(self, ts: float, where: str) -> np.ndarray:
        """The (H, W, 3) uint8 RGB frame at timestamp `ts` (within LeRobot's tolerance)."""
        import av

        half = 0.5 / float(self.stream.average_rate or 30)
        if self._frames is None or self._last is None or ts < self._last[0] - TIMESTAMP_TOLERANCE_S \
                or ts > self._last[0] + 8 * 2 * half:  # behind us, or far ahead: seek
            self._seek(ts)
        if self._last is not None and abs(self._last[0] - ts) <= TIMESTAMP_TOLERANCE_S:
            return self._last[1]
        try:
            for f in self._frames:
                if f.pts is None:
                    continue
                t = float(f.pts * self.stream.time_base)
                if t < ts - half:
                    continue
                self._last = (t, f.to_ndarray(format="rgb24"))
                if abs(t - ts) > max(half, TIMESTAMP_TOLERANCE_S):
                    raise EpisodeError(f"{where}: no video frame at {ts:.4f} s in {self.path} (nearest {t:.4f} s)")
                return self._last[1]
        except av.error.FFmpegError as e:
            raise EpisodeError(f"{where}: {self.path} does not decode at {ts:.4f} s: {e}") from None
        raise EpisodeError(f"{where}: {self.path} ends before {ts:.4f} s: the video is shorter than its episode")


# --------------------------------------------------------------------------- an episode
@dataclass
class LeRobotStream:
    name: str
    key: str  # feature key
    compressed: bool = True  # frames are decoded (their shape is checked on the first frame only)


class LeRobotEpisode:
    """One episode of a LeRobot dataset with the HDF5 Episode's interface."""

    layout = "lerobot"

    def __init__(self, root: str | Path, index: int, keys: StreamKeys):
        self.ds, self.index, self.keys = open_dataset(str(Path(root).resolve())), index, keys
        self.path = Path(root) / episode_name(index)
        if index not in self.ds.episodes:
            raise EpisodeError(f"{self.path}: no episode {index} in {self.ds.root}/meta")
        self._videos: dict[str, tuple[VideoReader, float]] = {}  # key -> reader, episode start (s)
        self._rows = None

    def __enter__(self) -> "LeRobotEpisode":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for video, _ in self._videos.values():
            video.close()
        self._videos.clear()

    @property
    def length(self) -> int:
        return int(self.ds.episodes[self.index]["length"])

    def _table(self):
        """This episode's rows of its data file, in frame order."""
        if self._rows is None:
            path = self.ds.data_file(self.index)
            if not path.is_file():
                raise EpisodeError(f"{path}: data file of episode {self.index} missing")
            table = _data_table(str(path))
            if "episode_index" not in table.column_names:
                raise EpisodeError(f"{path}: no episode_index column")
            ep = table.column("episode_index").to_numpy()
            rows = table.filter(ep == self.index)
            if "frame_index" in rows.column_names:
                rows = rows.take(np.argsort(rows.column("frame_index").to_numpy(), kind="stable"))
            self._rows = rows
        return self._rows

    def array(self, key: str) -> np.ndarray:
        """A (T, D) float64 feature of this episode, checked finite."""
        table, where = self._table(), f"{self.ds.data_file(self.index)}: episode {self.index}"
        if key not in self.ds.features or key not in table.column_names:
            raise EpisodeError(f"{where}: feature '{key}' missing; features: {', '.join(self.ds.features)} "
                               f"(data.lerobot maps the pipeline's qpos and action to features)")
        return checked_matrix(np.asarray(table.column(key).to_pylist(), dtype=np.float64), f"{where}: feature '{key}'")

    @property
    def qpos(self) -> np.ndarray:
        return self.array(self.keys.qpos)

    @property
    def action(self) -> np.ndarray:
        return self.array(self.keys.action)

    def check_timestamps(self) -> None:
        """frame i of an episode must sit at i / fps (LeRobot's tolerance)."""
        table, where = self._table(), f"{self.ds.data_file(self.index)}: episode {self.index}"
        if "timestamp" not in table.column_names:
            raise EpisodeError(f"{where}: no timestamp column")
        ts = table.column("timestamp").to_numpy().astype(np.float64)
        expected = np.arange(len(ts)) / self.ds.fps
        bad = np.nonzero(np.abs(ts - expected) > TIMESTAMP_TOLERANCE_S + 1e-6)[0]
        if len(bad):
            i = int(bad[0])
            raise EpisodeError(f"{where}: timestamp of frame {i} is {ts[i]:.5f} s, expected {expected[i]:.5f} s at "
                               f"{self.ds.fps:g} fps (meta/info.json)")
        if len(ts) != self.length:
            raise EpisodeError(f"{where}: {len(ts)} frames in the data file, meta/episodes says {self.length}")

    def stream(self, name: str, kind: str = "stream") -> LeRobotStream:
        key = self.keys.image_key(name)
        feature = self.ds.features.get(key)
        if feature is None or feature.get("dtype") not in ("video", "image"):
            images = [k for k, f in self.ds.features.items() if f.get("dtype") in ("video", "image")]
            raise EpisodeError(f"{self.ds.root}/meta/info.json: {kind} '{name}' needs the video feature '{key}', "
                               f"which is not there; video features: {', '.join(images) or 'none'} "
                               f"(map it in data.lerobot.streams)")
        if feature["dtype"] != "video":
            raise EpisodeError(f"{self.ds.root}/meta/info.json: feature '{key}' is stored as images, not video; "
                               f"this reader reads video features")
        return LeRobotStream(name, key)

    def stream_length(self, name: str) -> int:
        return self.length  # a short video shows up when its frames are decoded (prepare decodes all)

    def frame(self, name: str, t: int, draft=None, stream: LeRobotStream | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB image of stream `name` at frame t (draft is ignored)."""
        s = stream or self.stream(name)
        if not 0 <= t < self.length:
            raise EpisodeError(f"{self.path}: frame {t} outside 0..{self.length - 1}")
        if s.key not in self._videos:
            path, start = self.ds.video(self.index, s.key)
            self._videos[s.key] = (VideoReader(path), start)
        video, start = self._videos[s.key]
        return video.frame(start + t / self.ds.fps, f"{self.path}: '{s.key}' frame {t}")

    def sha256(self, file_digests: dict[str, str] | None = None) -> str:
        """Content of this episode: which one it is and the bytes of every file it reads
        (meta/info.json with fps and features, the episodes table, its data file and
        videos), read from disk, not from the metadata this process has cached.
        `file_digests` (path -> digest) is the caller's memo for one pass over the dataset:
        a v3.0 file holds many episodes and is then read once, not once per episode."""
        import hashlib

        memo = {} if file_digests is None else file_digests
        h = hashlib.sha256(str(self.index).encode())
        keys = [self.keys.image_key(n) for n, _ in self.keys.images]
        for f in sorted({str(p) for p in self.ds.files(self.index, keys)}):
            if f not in memo:
                if not Path(f).is_file():
                    raise EpisodeError(f"{f}: missing")
                memo[f] = sha256_file(f)
            h.update(memo[f].encode())
        return h.hexdigest()


def stream_mapping(cfg: DataConfig) -> dict:
    """The LeRobot feature of every stream, recorded in episodes.json for the later stages."""
    m = cfg.lerobot
    names = [*cfg.cameras, *cfg.tactile]
    return {"qpos": m.qpos, "action": m.action, "images": {n: m.streams.get(n, f"observation.images.{n}") for n in names}}
