"""Write small LeRobot v3.0 datasets for the tests, the way LeRobot lays them out: every
episode's frames in one parquet file, every image stream (tactile included) as one mp4
per feature holding the episodes back to back, episodes located by timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_video(path: Path, frames: list[np.ndarray], fps: float, codec: str = "libx264",
                options: dict | None = None) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = options or {"crf": "8", "g": "8"}  # keyframes every 8 frames: reads must seek
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def write_lerobot(root: Path, episodes: list[dict], fps: float = 10.0, video_keys: dict[str, str] | None = None,
                  drop_frames: dict[str, int] | None = None, codec: str = "libx264", options: dict | None = None) -> Path:
    """episodes: [{"qpos": (T, D), "action": (T, D), "images": {stream: (T, H, W, 3)}}, ...].
    video_keys: stream -> feature key (default observation.images.<stream>).
    drop_frames: feature key -> frames missing at the end of its video (a bad dataset)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    streams = list(episodes[0]["images"])
    keys = {s: (video_keys or {}).get(s, f"observation.images.{s}") for s in streams}
    rows, meta, start = [], [], 0
    for e, ep in enumerate(episodes):
        T = len(ep["qpos"])
        for t in range(T):
            rows.append({"observation.state": ep["qpos"][t].astype(np.float32).tolist(),
                         "action": ep["action"][t].astype(np.float32).tolist(),
                         "timestamp": np.float32(t / fps).item(), "frame_index": t, "episode_index": e,
                         "index": start + t, "task_index": 0})
        m = {"episode_index": e, "tasks": ["touch"], "length": T, "data/chunk_index": 0, "data/file_index": 0,
             "dataset_from_index": start, "dataset_to_index": start + T}
        for k in keys.values():
            m.update({f"videos/{k}/chunk_index": 0, f"videos/{k}/file_index": 0,
                      f"videos/{k}/from_timestamp": start / fps, f"videos/{k}/to_timestamp": (start + T) / fps})
        meta.append(m)
        start += T
    (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data/chunk-000/file-000.parquet")
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(meta), root / "meta/episodes/chunk-000/file-000.parquet")
    for s, k in keys.items():
        frames = [img for ep in episodes for img in ep["images"][s]]
        frames = frames[: len(frames) - (drop_frames or {}).get(k, 0)]
        write_video(root / f"videos/{k}/chunk-000/file-000.mp4", frames, fps, codec, options)
    D = episodes[0]["qpos"].shape[1]
    features = {"observation.state": {"dtype": "float32", "shape": [D], "names": None},
                "action": {"dtype": "float32", "shape": [episodes[0]["action"].shape[1]], "names": None},
                **{k: {"dtype": "video", "shape": list(episodes[0]["images"][s].shape[1:]),
                       "names": ["height", "width", "channels"],
                       "info": {"video.fps": fps, "video.codec": "h264", "video.pix_fmt": "yuv420p"}}
                   for s, k in keys.items()},
                **{c: {"dtype": d, "shape": [1], "names": None} for c, d in
                   (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                    ("index", "int64"), ("task_index", "int64"))}}
    info = {"codebase_version": "v3.0", "robot_type": "nova2", "total_episodes": len(episodes), "total_frames": start,
            "total_tasks": 1, "chunks_size": 1000, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root


def from_hdf5(directory: Path, root: Path, streams: list[str], **kw) -> Path:
    """A LeRobot copy of a directory of HDF5 episodes (the demo), for end-to-end tests."""
    from hsa_pipeline.data.episodes import Episode

    episodes = []
    for f in sorted(Path(directory).glob("*.hdf5")):
        with Episode(f) as ep:
            T = len(ep.qpos)
            episodes.append({"qpos": ep.qpos, "action": ep.action,
                             "images": {s: np.stack([ep.frame(s, t) for t in range(T)]) for s in streams}})
    return write_lerobot(root, episodes, **kw)


def write_lerobot_v2(root: Path, episodes: list[dict], fps: float = 10.0) -> Path:
    """The v2.1 layout: one parquet file and one mp4 per episode and stream, episodes in
    meta/episodes.jsonl, every video starting at 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    streams = list(episodes[0]["images"])
    (root / "meta").mkdir(parents=True, exist_ok=True)
    start = 0
    with open(root / "meta/episodes.jsonl", "w") as f:
        for e, ep in enumerate(episodes):
            T = len(ep["qpos"])
            rows = [{"observation.state": ep["qpos"][t].astype(np.float32).tolist(),
                     "action": ep["action"][t].astype(np.float32).tolist(), "timestamp": np.float32(t / fps).item(),
                     "frame_index": t, "episode_index": e, "index": start + t, "task_index": 0} for t in range(T)]
            (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows), root / f"data/chunk-000/episode_{e:06d}.parquet")
            for s in streams:
                write_video(root / f"videos/chunk-000/observation.images.{s}/episode_{e:06d}.mp4", list(ep["images"][s]), fps)
            f.write(json.dumps({"episode_index": e, "tasks": ["touch"], "length": T}) + "\n")
            start += T
    features = {"observation.state": {"dtype": "float32", "shape": [episodes[0]["qpos"].shape[1]]},
                "action": {"dtype": "float32", "shape": [episodes[0]["action"].shape[1]]},
                **{f"observation.images.{s}": {"dtype": "video", "shape": list(episodes[0]["images"][s].shape[1:])}
                   for s in streams}}
    info = {"codebase_version": "v2.1", "fps": fps, "chunks_size": 1000, "total_episodes": len(episodes),
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    (root / "meta/info.json").write_text(json.dumps(info, indent=2))
    return root
