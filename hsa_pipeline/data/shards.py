"""The feature store's shard files read directly: the Zarr v3 sharding layout the features
stage writes (frames back to back, then an (offset, length) index and its crc32c), parsed
here so a frame costs one read (see `ShardFiles`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import StoreError


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
