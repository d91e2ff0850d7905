"""The training and validation samples, and the endless stream of training batches on
the device (every rank draws the same global batch and trains on its slice)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import ActConfig, TrainConfig
from ..data.caches import Batch, Caches, ChunkSamples, FrameBatches
from ..data.codec import ActionCodec
from ..pipeline.distributed import Dist

VAL_ROWS = 512  # validation uses at most this many evenly spaced held-out frames
# The in-memory caches go on the GPU when they take at most this share of its free memory;
# the rest is for the model, its optimiser state and activations (the X-Trainer step at
# batch 64 needs a few GiB). Past it they stay on the host and each batch is copied over.
GPU_CACHE_SHARE = 0.5


class TrainingData:
    """Training and validation samples, and the stream of training batches on the device."""

    def __init__(self, caches: Caches, act: ActConfig, cfg: TrainConfig, dist: Dist):
        self.caches, self.cfg, self.device = caches, cfg, dist.device
        codec = ActionCodec.from_stats(caches.stats, act.relative_actions, caches.qpos.shape[1])
        self.train_rows = caches.rows("train")
        val_rows = caches.rows("val")
        if len(val_rows) > VAL_ROWS:
            val_rows = val_rows[np.linspace(0, len(val_rows) - 1, VAL_ROWS).round().astype(int)]
        self.val_rows = val_rows
        # Sampling: every rank draws the same GLOBAL batch (batch_size x world rows) from one
        # generator and trains on its slice, so N processes with batch_size B learn what one
        # process with batch_size N x B does (tested across two torchrun "nodes"). Saved in checkpoints.
        self.gen = torch.Generator().manual_seed(cfg.seed * 1000)
        self.rank, self.world = dist.rank, dist.world
        self.samples = ChunkSamples(caches, self.train_rows, act.chunk_size, codec)
        self.val = ChunkSamples(caches, val_rows, act.chunk_size, codec)
        self.frames = None
        if caches.in_memory:
            where = cache_device(FrameBatches.nbytes(caches), dist.device)
            self.frames = FrameBatches(caches, act.chunk_size, codec, dist.device, where)
            if where.type == "cuda":
                caches.tokens = None  # the GPU holds them now: a host copy would double the RAM
        self.cache_device = self.frames.cache_device if self.frames is not None else dist.device
        self._rows = torch.as_tensor(self.train_rows, device=self.cache_device)
        self._loader = None
        if self.frames is None and cfg.workers > 0:  # streaming from Zarr: decode in workers
            self._loader = iter(torch.utils.data.DataLoader(
                self.samples, batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=True,
                sampler=_InfiniteSampler(len(self.samples), self.gen, cfg.batch_size, dist.rank, dist.world),
                collate_fn=Batch.collate))

    def where_caches(self) -> str:
        """Where the caches are, in words (train's first line)."""
        if self.frames is None:
            return "streamed from Zarr"
        if self.cache_device == self.device:
            return "in memory" if self.cache_device.type == "cpu" else f"on {self.cache_device}"
        return (f"in host memory, each batch copied to {self.device} (they would take more than "
                f"{GPU_CACHE_SHARE:.0%} of its free memory)")

    def next_batch(self) -> Batch:
        if self._loader is not None:
            return next(self._loader).to(self.device)
        B = self.cfg.batch_size
        idx = torch.randint(len(self.train_rows), (B * self.world,), generator=self.gen)[self.rank * B: (self.rank + 1) * B]
        if self.frames is not None:
            if self.cache_device.type == "cuda":  # pinned, so the copy below does not make the host wait for the GPU
                idx = idx.pin_memory()
            return self.frames.batch(self._rows[idx.to(self.cache_device, non_blocking=True)])
        return Batch.collate([self.samples[int(i)] for i in idx]).to(self.device)

    def val_batches(self):
        B = self.cfg.batch_size
        for start in range(0, len(self.val_rows), B):
            rows = self.val_rows[start: start + B]
            if self.frames is not None:
                yield self.frames.batch(torch.as_tensor(rows, device=self.cache_device))
            else:
                yield Batch.collate([self.val[i] for i in range(start, start + len(rows))]).to(self.device)


def cache_device(nbytes: int, device: torch.device, free_bytes: int | None = None) -> torch.device:
    """Where the in-memory caches are held: the training device, unless it is a GPU whose
    free memory (`free_bytes`, measured when None) they would take more than
    GPU_CACHE_SHARE of; then the host."""
    if device.type != "cuda":
        return device
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    return device if nbytes <= GPU_CACHE_SHARE * free_bytes else torch.device("cpu")


class _InfiniteSampler(torch.utils.data.Sampler):
    """Endless sample indices: this rank's slice of each global batch (as next_batch)."""

    def __init__(self, n: int, gen: torch.Generator, batch: int, rank: int, world: int):
        self.n, self.gen, self.batch, self.rank, self.world = n, gen, batch, rank, world

    def __iter__(self):
        while True:
            block = torch.randint(self.n, (self.batch * self.world,), generator=self.gen)
            yield from block[self.rank * self.batch: (self.rank + 1) * self.batch].tolist()
