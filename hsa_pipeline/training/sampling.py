"""The training and validation samples, and the endless stream of training batches on
the device (every rank draws the same global batch and trains on its slice)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import ActConfig, TrainConfig
from ..data.caches import ActionCodec, Batch, Caches, ChunkSamples, FrameBatches
from ..pipeline.distributed import Dist

VAL_ROWS = 512  # validation uses at most this many evenly spaced held-out frames



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
        self.frames = FrameBatches(caches, act.chunk_size, codec, dist.device) if caches.in_memory else None
        self._rows = torch.as_tensor(self.train_rows, device=dist.device)
        self._loader = None
        if self.frames is None and cfg.workers > 0:  # streaming from Zarr: decode in workers
            self._loader = iter(torch.utils.data.DataLoader(
                self.samples, batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=True,
                sampler=_InfiniteSampler(len(self.samples), self.gen, cfg.batch_size, dist.rank, dist.world),
                collate_fn=Batch.collate))

    def next_batch(self) -> Batch:
        if self._loader is not None:
            return next(self._loader).to(self.device)
        B = self.cfg.batch_size
        idx = torch.randint(len(self.train_rows), (B * self.world,), generator=self.gen)[self.rank * B: (self.rank + 1) * B]
        if self.frames is not None:
            return self.frames.batch(self._rows[idx.to(self.device)])
        return Batch.collate([self.samples[int(i)] for i in idx]).to(self.device)

    def val_batches(self):
        B = self.cfg.batch_size
        for start in range(0, len(self.val_rows), B):
            rows = self.val_rows[start: start + B]
            if self.frames is not None:
                yield self.frames.batch(torch.as_tensor(rows, device=self.device))
            else:
                yield Batch.collate([self.val[i] for i in range(start, start + len(rows))]).to(self.device)


class _InfiniteSampler(torch.utils.data.Sampler):
    """Endless sample indices: this rank's slice of each global batch (as next_batch)."""

    def __init__(self, n: int, gen: torch.Generator, batch: int, rank: int, world: int):
        self.n, self.gen, self.batch, self.rank, self.world = n, gen, batch, rank, world

    def __iter__(self):
        while True:
            block = torch.randint(self.n, (self.batch * self.world,), generator=self.gen)
            yield from block[self.rank * self.batch: (self.rank + 1) * self.batch].tolist()
