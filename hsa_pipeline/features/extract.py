"""The `features` stage: the CLIP patch-token grid of every frame of every stream with a
role (third-person, wrist, tactile), once, into one Zarr store.

Store layout (rows are global frame indices, as in geometry.zarr):
  <stream>   (N, G, G, C) float16, chunk = 1 frame, shard = `shard_frames` frames, uncompressed
  attrs      stores.FeatureInfo (model, pretrained, block, resize, grid, width, mapping[stream]
             as cameras.GridMapping, offsets, fingerprints, schema_version) and complete

`fingerprint` covers everything the numbers are a function of: the encoder settings, the
weights file's content, the episodes' content (their sha256 in episodes.json) and this
stage's code. Read the store with stores.FeatureStore.

Atomic and resumable: work happens in `features.zarr.partial`; each finished shard leaves
a marker file there; a rerun with the same fingerprint skips finished shards; only a
complete store is renamed into place (the previous complete store survives until then).
Whole shards are written at once (writing frame by frame rewrites the shard each time), by
background threads (several shards at once) while the next frames encode. Under
torchrun, shards are divided among ranks.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import FeaturesConfig
from ..data.grid import GridMapping
from ..data.manifest import SCHEMA_VERSIONS, Manifest
from ..errors import EpisodeError, StoreError
from ..pipeline import numerics
from ..pipeline.atomic import commit, partial_path, remove
from ..pipeline.closure import code_fingerprint
from ..pipeline.distributed import barrier as dist_barrier
from ..pipeline.distributed import init_distributed
from ..pipeline.hashing import sha256_file, sha256_json
from ..pipeline.runtime import ThreadTuner
from .encoder import SHIPPED_CONFIGS, Encoder, preprocess

SHARD_BYTES = 64 * 2**20  # target shard size: tens of files per store, not one per frame
# Shards are written by this many threads at once (each shard is its own file, so they never
# touch the same bytes): one writer thread could not keep up with a GPU encoder (README).
WRITERS = 4


class FrameImages(Dataset):
    """Decoded, resized frames for a list of (stream, global row) items; runs in DataLoader
    workers. Errors are returned, not raised, so the main process reports them in one line."""

    def __init__(self, manifest: Manifest, items: list[tuple[str, int]], mappings: dict[str, GridMapping]):
        self.manifest = manifest
        self.offsets = manifest.offsets
        self.items, self.mappings = items, mappings
        self._open: dict = {}  # episode index -> open reader, per worker process

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        stream, row = self.items[i]
        mapping = self.mappings[stream]
        e = int(np.searchsorted(self.offsets, row, side="right") - 1)
        t = row - int(self.offsets[e])
        try:
            if e not in self._open:
                self._open[e] = self.manifest.open(self.manifest.episodes[e])
            img = self._open[e].frame(stream, t)
            return i, torch.from_numpy(preprocess(img, mapping)), ""
        except (EpisodeError, ValueError) as err:
            return i, torch.zeros(mapping.size, mapping.size, 3, dtype=torch.uint8), f"{err}"


def fingerprint(cfg: FeaturesConfig, manifest: Manifest) -> str:
    """What the cached numbers depend on, by content: encoder settings and weights, the
    shipped model config (its JSON, when the model is one of ours), the episodes (sha256 of
    each file, via episodes.json), the code that computes them (library versions included) and
    the CPU arithmetic it runs under (pipeline/numerics.py)."""
    weights = cfg.pretrained
    if weights is not None and Path(weights).is_file():
        weights = sha256_file(weights)
    shipped = SHIPPED_CONFIGS / f"{cfg.model}.json"
    model_config = sha256_file(shipped) if shipped.is_file() else None  # open_clip's own: its version covers it
    return sha256_json({"model": cfg.model, "model_config": model_config, "pretrained": weights, "block": cfg.block,
                        "resize": cfg.resize, "episodes": manifest.fingerprint, "numerics": numerics.state(),
                        "code": code_fingerprint("hsa_pipeline.features.extract")})


def run_features(cfg: FeaturesConfig, prepare_dir: str | Path, out: str | Path, max_shards: int | None = None) -> dict:
    """Encode every frame; returns the store's attributes. With `max_shards`, stop after
    that many shards and leave the partial store for a later run to finish (as if killed)."""
    out = Path(out)
    tmp = partial_path(out)
    manifest = Manifest.load(prepare_dir)
    dist = init_distributed(cfg.device, "features.device")  # torchrun: each rank encodes its share of shards
    rank, world = dist.rank, dist.world
    enc = Encoder(cfg, device=str(dist.device), quiet=rank != 0)
    threads = torch.get_num_threads()
    try:
        return _run(cfg, manifest, enc, tmp, out, rank, world, max_shards)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: FeaturesConfig, manifest: Manifest, enc: Encoder, tmp: Path, out: Path, rank: int, world: int,
         max_shards: int | None) -> dict:
    fp = fingerprint(cfg, manifest)
    streams = manifest.streams
    shapes = {n: c.shape for n, c in {**manifest.info.cameras, **manifest.info.tactile}.items()}
    N = manifest.n_frames
    frame_bytes = enc.grid * enc.grid * enc.width * 2
    shard_frames = max(1, min(N, SHARD_BYTES // frame_bytes))
    attrs = {"model": cfg.model, "pretrained": cfg.pretrained, "block": cfg.block, "resize": cfg.resize,
             "image_size": enc.size, "patch": enc.patch, "grid": enc.grid, "width": enc.width,
             "streams": streams, "mapping": {n: enc.mapping(shapes[n][1], shapes[n][0]).to_dict() for n in streams},
             "episodes": [e.id for e in manifest.episodes], "offsets": manifest.offsets.tolist(),
             "shard_frames": shard_frames, "fingerprint": fp, "episodes_fingerprint": manifest.fingerprint,
             "schema_version": SCHEMA_VERSIONS["features"], "complete": False}

    if rank == 0:
        existing = _read_attrs(tmp)
        if existing is None or existing.get("fingerprint") != fp:
            if existing is None and tmp.exists():
                print(f"features: discarding the partial store {tmp}: its attributes cannot be read (a store "
                      "killed while being created); starting over", file=sys.stderr)
            if existing is not None:  # said, not silent: the shards done so far are lost
                print(f"features: discarding the partial store {tmp} ({len(_done(tmp))} shard(s) done): it was "
                      f"built from other inputs (episodes, model, weights, settings or code) than now",
                      file=sys.stderr)
            remove(tmp)
            root = zarr.open_group(str(tmp), mode="w")
            for n in streams:
                # No compressor: zstd saves ~8% on CLIP float16 grids but halves write speed
                # (ViT-B-16 grids, 2-core CPU: 1.2-1.9k vs 2.9-3.4k frames/s), and the writer
                # thread is what limits the stage on a GPU.
                root.create_array(n, shape=(N, enc.grid, enc.grid, enc.width), dtype="float16",
                                  chunks=(1, enc.grid, enc.grid, enc.width),
                                  shards=(shard_frames, enc.grid, enc.grid, enc.width), compressors=None)
            root.attrs.update(attrs)
            (tmp / "done").mkdir()
        else:
            print(f"features: resuming {tmp} ({len(_done(tmp))} shards already done)")
    dist_barrier()
    root = zarr.open_group(str(tmp), mode="r+")
    todo = [(n, k) for n in streams for k in range(-(-N // shard_frames))]
    mine = [(n, k) for i, (n, k) in enumerate(todo) if i % world == rank and not (tmp / "done" / f"{n}.{k}").exists()]
    stop_early = max_shards is not None and len(mine) > max_shards
    if stop_early:
        mine = mine[:max_shards]
    _encode_shards(enc, manifest, mine, shard_frames, N, attrs["mapping"], cfg, root, tmp / "done", rank)
    if stop_early:
        print(f"features: stopped after {max_shards} shards; rerun to finish")
        return attrs
    dist_barrier()
    if rank == 0:
        missing = [f"{n}.{k}" for n, k in todo if not (tmp / "done" / f"{n}.{k}").exists()]
        if missing:
            raise StoreError(f"features: shards {missing[:5]} were not written; rerun to resume")
        root.attrs["complete"] = True
        remove(tmp / "done")
        commit(tmp, out)
        print(f"features: {N} frames x {len(streams)} streams, grid {enc.grid}x{enc.grid}x{enc.width} -> {out}")
    return {**attrs, "complete": True}


def _encode_shards(enc: Encoder, manifest: Manifest, shards: list[tuple[str, int]], shard_frames: int, N: int,
                   mappings: dict, cfg: FeaturesConfig, root, done_dir: Path, rank: int) -> None:
    """Encode the frames of `shards` in order with ONE DataLoader (its workers stay busy
    across shard boundaries; a loader per shard left all but one worker idle whenever a
    shard held fewer frames than a batch), and write each shard, whole, in background
    threads while the next batches encode. On a GPU a batch's grids travel to the host
    while the next batch encodes (one batch in flight), so the encoder never waits for
    the host's copying. A shard's done marker is written after its data."""
    spans = [range(k * shard_frames, min(N, (k + 1) * shard_frames)) for _, k in shards]
    items = [(name, row) for (name, _), rows in zip(shards, spans, strict=True) for row in rows]
    ds = FrameImages(manifest, items, {n: GridMapping(**m) for n, m in mappings.items()})
    loader = DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers, pin_memory=enc.device.type == "cuda",
                        prefetch_factor=4 if cfg.workers else None)
    bar = tqdm(total=len(items), unit="img", desc="features", disable=rank != 0)
    # On a CPU the decode workers (and other ranks, other jobs) share the cores with the
    # encoder: with threads: auto it takes the cores they leave.
    threads = ThreadTuner(cfg.threads, enc.device)
    with ThreadPoolExecutor(max_workers=WRITERS) as writer:
        shards_out = ShardAssembler(root, shards, spans, done_dir, (enc.grid, enc.grid, enc.width), writer)
        in_flight = None  # the previous batch: (item indices, grids on their way to the host)
        for idx, images, errors in loader:
            threads.update()
            bad = [e for e in errors if e]
            if bad:
                raise EpisodeError(bad[0])
            copying = HostCopy(enc.encode(images))  # (B, G, G, C); on a GPU: queued, not yet done
            if in_flight is not None:
                shards_out.add(in_flight[0], in_flight[1].result())
            in_flight = (idx.numpy(), copying)
            bar.update(len(idx))
            bar.set_postfix_str(items[int(idx[-1])][0])
        if in_flight is not None:
            shards_out.add(in_flight[0], in_flight[1].result())
        shards_out.finish()
    bar.close()


class HostCopy:
    """float16 grids on their way to the host: on a GPU the copy is queued behind the
    encoder's kernels into pinned memory and `result()` waits for it alone; on a CPU it is
    the array at once."""

    def __init__(self, grids: torch.Tensor):
        grids = grids.to(torch.float16)
        self.event = None
        if grids.device.type == "cuda":
            self.host = torch.empty(grids.shape, dtype=torch.float16, pin_memory=True)
            self.host.copy_(grids, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = grids

    def result(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


class ShardAssembler:
    """Grids arrive batch by batch in item order (the shards' frames one after another);
    each shard, once its last frame has arrived, is written whole by a background thread,
    a bounded number in flight."""

    def __init__(self, root, shards: list[tuple[str, int]], spans: list[range], done_dir: Path,
                 grid_shape: tuple[int, int, int], writer: ThreadPoolExecutor):
        self.root, self.shards, self.spans, self.done_dir = root, shards, spans, done_dir
        self.grid_shape, self.writer = grid_shape, writer
        self.starts = np.cumsum([0] + [len(r) for r in spans])  # item index where shard j begins
        self.bufs: dict[int, np.ndarray] = {}  # shards being filled (at most two: batches arrive in order)
        self.pending: list[Future] = []

    def add(self, idx: np.ndarray, grids: np.ndarray) -> None:
        """idx (B,) item indices, grids (B, G, G, C) float16."""
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1  # (B,) index into shards
        for j in np.unique(shard_of):
            sel = shard_of == j
            if j not in self.bufs:
                self.bufs[j] = np.empty((len(self.spans[j]), *self.grid_shape), np.float16)
            self.bufs[j][idx[sel] - self.starts[j]] = grids[sel]
            if idx[-1] >= self.starts[j + 1] - 1:  # the shard's last frame has arrived: it is whole
                while len(self.pending) >= 2 * WRITERS:  # bound memory: a few shards in flight
                    self.pending.pop(0).result()  # re-raises a write error
                name, k = self.shards[j]
                self.pending.append(self.writer.submit(_write_shard, self.root, name, self.spans[j],
                                                       self.bufs.pop(j), self.done_dir / f"{name}.{k}"))

    def finish(self) -> None:
        for f in self.pending:
            f.result()


def _write_shard(root, name: str, rows: range, buf: np.ndarray, marker: Path) -> None:
    root[name][rows.start: rows.stop] = buf  # one whole shard: no read-modify-write
    marker.touch()


def _done(tmp: Path) -> list[Path]:
    return list((tmp / "done").iterdir()) if (tmp / "done").is_dir() else []


def _read_attrs(path: Path) -> dict | None:
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs) if (path / "zarr.json").exists() else None
    except Exception:  # a half-created store: start over
        return None
