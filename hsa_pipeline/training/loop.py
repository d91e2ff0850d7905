"""The `train` stage: ACT + HSA on the cached features, on one CPU, one GPU, or many
(torchrun -> DistributedDataParallel; only rank 0 logs and writes).

Outputs, under `out_dir` (the stage uses outputs/train):
  run/checkpoints/last.pt, best.pt  tensors and plain data only: torch.load(weights_only=True)
  run/tb/<act|act+hsa>/             TensorBoard: scalars, "loss vs chance" charts, box images, hparams
  run/curves/train.tsv, val.tsv     the same curves for `dvc plots`
  policy/                           the exported policy, self-contained (model/policy.py runs it on raw images)
  metrics.json                      final validation figures, and where this run started

Resuming. run/ survives `dvc repro` (persist: true). A run continues from last.pt only if
the checkpoint's resume key equals the current one: a hash of every input training reads
(the prepare outputs, the geometry and feature stores' content fingerprints), of this
module's code and everything it imports, and of every setting that changes what is
learned. Any upstream change therefore trains from step 0. Raising `train.steps` on a
finished run continues it: the learning rate is warm-up then constant, so the schedule
does not depend on the total (except an annealed HSA temperature, whose key then
includes `steps`, so the run restarts).
"""

from __future__ import annotations

import csv
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..config import ActConfig, HsaConfig, TrainConfig, to_dict
from ..data.caches import ActionCodec, Batch, Caches, ChunkSamples, FrameBatches, HsaPair
from ..data.stores import POLICY_SCHEMA
from ..errors import ConfigError, TrainingDiverged
from ..model.act import ACTPolicy, ActShapes, act_losses
from ..model.hsa import HsaInputs, HSALoss, hsa_loss_for
from ..pipeline.atomic import atomic_dir, remove, write_json
from ..pipeline.closure import code_fingerprint
from ..pipeline.hashing import sha256_json
from ..pipeline.runtime import ThreadTuner, pick_device

# train.* keys that do not change what is learned: a run may resume across changes of these.
RESUME_FREE = {"steps", "resume", "log_every", "val_every", "ckpt_every", "workers", "device", "threads", "compile",
               "memory_budget_gb"}
VAL_ROWS = 512  # validation uses at most this many evenly spaced held-out frames

# Curve columns. HSA columns are per tactile sensor: unprefixed with one sensor, else '<sensor>/hsa_w'.
HSA_TRAIN_COLUMNS = ["hsa_w", "hsa_tp", "chance_w", "chance_tp", "n_w", "top1_w", "top1_chance_w", "loc_acc_w",
                     "loc_chance_w", "top1_tp", "loc_acc_tp"]
HSA_VAL_COLUMNS = ["hsa_w", "chance_w", "top1_w", "loc_acc_w", "loc_chance_w", "top1_tp", "loc_acc_tp"]


# --------------------------------------------------------------------------- the model + losses
class TrainModule(nn.Module):
    """Policy + HSA loss: one forward computes every loss term (this is what DDP wraps)."""

    def __init__(self, policy: ACTPolicy, hsa: HSALoss | None, pairs: list[HsaPair], act: ActConfig,
                 hsa_cfg: HsaConfig):
        super().__init__()
        self.policy, self.hsa, self.pairs = policy, hsa, pairs
        self.kl_weight, self.hsa_cfg = act.kl_weight, hsa_cfg

    def global_valid_count(self, is_pad: torch.Tensor) -> torch.Tensor | None:
        """In a distributed training step: the valid positions of the GLOBAL batch per rank
        (DDP averages the ranks' gradients; padding differs between their slices). None
        otherwise (this batch's own count; eval forwards run on rank 0 alone)."""
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return None
        count = (~is_pad).sum().to(torch.float32)
        dist.all_reduce(count)
        return count / dist.get_world_size()

    def prefix(self, pair: HsaPair) -> str:
        return "" if len(self.pairs) == 1 else f"{pair.sensor}/"

    def forward(self, batch: Batch, step: int = 0, use_latent: bool = True, diagnostics: bool = True):
        """-> total loss, its terms (tensors), HSA diagnostics (floats; {} unless asked), predictions."""
        pred, latent, adapted = self.policy(batch.qpos, batch.tokens, batch.actions if use_latent else None,
                                            batch.is_pad if use_latent else None)
        terms = act_losses(pred, batch.actions, batch.is_pad, latent, self.global_valid_count(batch.is_pad))
        total = terms["l1"] + self.kl_weight * terms["kl"]
        stats: dict[str, float] = {}
        if self.hsa is not None:
            hsa_total = pred.new_zeros(())
            for pair in self.pairs:
                loss, s = self.hsa(self.hsa_inputs(batch, adapted, pair), step, diagnostics)
                hsa_total = hsa_total + loss
                stats.update({self.prefix(pair) + k: v for k, v in s.items()})
            if diagnostics:
                stats["kappa"] = float(self.hsa.kappa(step))
            terms["hsa"] = hsa_total
            total = total + self.hsa_cfg.weight * hsa_total
        terms["total"] = total
        return total, terms, stats, pred

    def hsa_inputs(self, batch: Batch, adapted: dict, pair: HsaPair) -> HsaInputs:
        B = batch.qpos.shape[0]
        valid = batch.contact[pair.sensor] if self.hsa_cfg.require_contact else torch.ones(B, dtype=torch.bool)
        x = HsaInputs(tactile=adapted[pair.sensor], wrist=adapted[pair.wrist],
                      wrist_box=batch.box[pair.key(pair.wrist)].flatten(1),
                      valid=valid.to(batch.qpos.device), wrist_visible=batch.visible[pair.key(pair.wrist)])
        if pair.third_persons:  # every third-person camera (its touch map marks each of them)
            keys = [pair.key(c) for c in pair.third_persons]
            x.tp = [adapted[c] for c in pair.third_persons]
            x.tp_box = [batch.box[k].flatten(1) for k in keys]
            x.tp_alpha = [batch.weight[k] * batch.visible[k] for k in keys]
        return x


def build(act: ActConfig, hsa: HsaConfig, total_steps: int, caches: Caches, device: torch.device) -> TrainModule:
    shapes = ActShapes(qpos_dim=caches.qpos.shape[1], action_dim=caches.action_raw.shape[1],
                       streams=list(caches.streams), grid=caches.grid, token_dim=caches.width,
                       tactile=[s for s, role in caches.streams.items() if role == "tactile"],
                       touch_cameras={p.sensor: p.cameras for p in caches.pairs})
    if shapes.grid % act.grid_pool:
        raise ConfigError(f"act.grid_pool: {act.grid_pool} does not divide the {shapes.grid}x{shapes.grid} feature grid")
    if hsa.enabled:
        check_hsa_pairs(caches)
    if act.touch_map:
        check_touch_maps(act, shapes, caches)
    policy = ACTPolicy(act, shapes)
    loss = hsa_loss_for(policy, hsa, total_steps) if hsa.enabled else None
    return TrainModule(policy, loss, caches.pairs, act, hsa).to(device)


def check_hsa_pairs(caches: Caches) -> None:
    """With HSA on, every tactile sensor must have something to align with: a geometry
    entry and a wrist camera on its arm (the loss's positive). Otherwise the loss would be
    a silent zero for it."""
    tactile = list(caches.manifest.info.tactile)
    if not tactile:
        raise ConfigError("hsa.enabled: true, but the episodes have no tactile stream; set hsa.enabled: false")
    paired = {p.sensor: p for p in caches.pairs}
    for sensor in tactile:
        if sensor not in paired:
            raise ConfigError(f"hsa.enabled: true, but tactile sensor '{sensor}' is not in the geometry store "
                              f"(sensors.{sensor} missing from params.yaml?); add it or set hsa.enabled: false")
        if paired[sensor].wrist is None:
            raise ConfigError(f"hsa.enabled: true, but tactile sensor '{sensor}' has no wrist camera on its arm "
                              f"(sensors.{sensor}.arm = {caches.geometry_info.sensor_arms.get(sensor)!r}; cameras.*.mount "
                              f"names none): HSA's positive is the sensor's box in that camera; set hsa.enabled: false")


def check_touch_maps(act: ActConfig, shapes: ActShapes, caches: Caches) -> None:
    """act.touch_map needs, for every tactile sensor, a camera that can see where it goes
    (per_sensor maps); a configuration the maps cannot serve stops here with one line."""
    if not shapes.tactile:
        raise ConfigError("act.touch_map: true, but the episodes have no tactile stream; set act.touch_map: false")
    if act.touch_query == "mean":
        if len(shapes.tactile) > 1:
            print(f"train: warning: act.touch_query: mean blends {len(shapes.tactile)} tactile streams into one map "
                  f"that marks every camera (one pad's touch halved, two felt classes mixed); per_sensor gives each "
                  f"sensor its own map", file=sys.stderr)
        return
    for sensor in shapes.tactile:
        if sensor not in shapes.touch_cameras:
            raise ConfigError(f"act.touch_map: tactile sensor '{sensor}' is not in the geometry store (sensors.{sensor} "
                              f"missing from params.yaml?), so its map cannot know which cameras see where it goes")
        if not shapes.touch_cameras[sensor]:
            raise ConfigError(f"act.touch_map: no camera can see where tactile sensor '{sensor}' goes (no wrist camera "
                              f"on arm {caches.geometry_info.sensor_arms.get(sensor)!r} and no third-person camera); "
                              f"add one or set act.touch_map: false")


# --------------------------------------------------------------------------- setup
@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(cfg: TrainConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(cfg.device, "train.device")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Dist(rank, world, device)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_key(act: ActConfig, hsa: HsaConfig, train: TrainConfig, caches: Caches) -> str:
    """What a checkpoint is a function of: inputs (by content), code, learning settings."""
    free = RESUME_FREE - ({"steps"} if hsa.enabled and hsa.temperature_mode == "anneal" else set())
    settings = {"act": to_dict(act), "hsa": to_dict(hsa),
                "train": {k: v for k, v in to_dict(train).items() if k not in free}}
    return sha256_json({"settings": settings, "inputs": caches.fingerprint,
                        "code": code_fingerprint("hsa_pipeline.training.loop")})[:16]


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


def save_checkpoint(path: Path, module: TrainModule, opt, sched, step: int, best: float, gen: torch.Generator,
                    key: str, config: dict, stats: dict) -> None:
    """Tensors and plain data only (loadable with weights_only=True); atomic rename."""
    rng = {"torch": torch.get_rng_state(), "sampler": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()  # dropout draws on the GPU: resume = uninterrupted run
    ck = {"module": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
          "step": step, "best": best, "resume_key": key, "config": config, "rng": rng, "stats": stats}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, path)


def resume(run_dir: Path, key: str, module: TrainModule, opt, sched, gen: torch.Generator, enabled: bool,
           main: bool) -> tuple[int, float]:
    """Load last.pt when it belongs to this key -> (step, best); else start fresh (0, inf)
    and, on rank 0, clear run_dir so no stale curve, event or checkpoint survives."""
    last = run_dir / "checkpoints" / "last.pt"
    if enabled and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        if ck["resume_key"] == key:
            module.load_state_dict(ck["module"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            torch.set_rng_state(ck["rng"]["torch"])
            gen.set_state(ck["rng"]["sampler"])
            if "cuda" in ck["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
            if main:
                print(f"train: resuming from {last} at step {ck['step']}")
            return int(ck["step"]), float(ck["best"])
        if main:
            print(f"train: {last} was made from other inputs, code or settings; starting a new run")
    if main:
        remove(run_dir)
    return 0, math.inf


# --------------------------------------------------------------------------- one step
@torch.no_grad()
def diagnostics(module: TrainModule, batch: Batch, step: int, autocast) -> dict[str, float]:
    """HSA diagnostics (retrieval, localisation, chance levels) of a batch, for logging
    steps: a separate no-grad forward in eval mode without the latent, so it neither
    draws random numbers (training stays the same) nor breaks a compiled training graph."""
    module.eval()
    with autocast:
        _, _, stats, _ = module(batch, step, use_latent=False, diagnostics=True)
    module.train()
    return stats


def train_step(fwd, opt, sched, params: list, batch: Batch, step: int, grad_clip: float,
               autocast) -> tuple[dict, torch.Tensor]:
    """Forward, backward, clip, update. -> loss terms, gradient norm. Raises
    TrainingDiverged on a non-finite loss (the one host sync of an ordinary step)."""
    with autocast:
        total, terms, _, _ = fwd(batch, step, diagnostics=False)
    if not torch.isfinite(total):
        name, value = next(((n, v) for n, v in terms.items() if not torch.isfinite(v)), ("total", total))
        raise TrainingDiverged(f"train: loss term '{name}' is {float(value.detach())} at step {step + 1}; see "
                               f"docs/guide.md#nan-loss (the last good checkpoint is run/checkpoints/last.pt)")
    opt.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    opt.step()
    sched.step()
    return terms, grad_norm


@torch.no_grad()
def validate(module: TrainModule, data: TrainingData, step: int) -> dict[str, float]:
    """Mean losses over the held-out frames: l1 with the CVAE latent (comparable to
    training) and l1_prior with z = 0 (what the deployed policy does)."""
    module.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    # validation must not change the training run: the CVAE draws z from the CPU or CUDA
    # generator, so every generator it can touch is restored afterwards
    cuda = [data.device] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        for batch in data.val_batches():
            n = batch.qpos.shape[0]
            _, terms, stats, _ = module(batch, step, use_latent=True)
            _, prior_terms, _, _ = module(batch, step, use_latent=False)
            values = {"l1": float(terms["l1"]), "kl": float(terms["kl"]), "l1_prior": float(prior_terms["l1"]),
                      **({"hsa": float(terms["hsa"])} if "hsa" in terms else {}),
                      **{k: v for k, v in stats.items() if k.rpartition("/")[2] in HSA_VAL_COLUMNS and math.isfinite(v)}}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * n
                counts[k] = counts.get(k, 0) + n
    module.train()
    return {k: sums[k] / counts[k] for k in sums}


# --------------------------------------------------------------------------- logging
class CurveFile:
    """Append-only TSV of scalars (rank 0), readable by `dvc plots`. On resume, rows after
    the checkpoint's step are dropped: they are about to be trained (and logged) again."""

    def __init__(self, path: Path, columns: list[str], keep_until: int):
        self.path, self.columns = path, columns
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if keep_until > 0 and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f, delimiter="\t") if int(r["step"]) <= keep_until]
        path.write_text("\t".join(columns) + "\n")
        for r in rows:
            self.write(r)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f, delimiter="\t").writerow([_fmt(row.get(c, "")) for c in self.columns])


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _tb_tag(column: str) -> str:
    name = column.rpartition("/")[2]
    if name in ("total", "l1", "kl", "hsa", "hsa_w", "hsa_tp"):
        return f"loss/{column}"
    if name in ("lr", "grad_norm", "samples_per_s"):
        return f"train/{column}"
    return f"hsa/{column}"


class RunLog:
    """Rank 0's record of a run: curves (TSV), TensorBoard scalars, and the charts that put
    each HSA loss beside its chance level."""

    def __init__(self, run_dir: Path, module: TrainModule, start_step: int, hsa_enabled: bool):
        from torch.utils.tensorboard import SummaryWriter

        # The same columns with HSA on and off (empty when off), so `dvc plots diff` compares runs.
        prefixes = [module.prefix(p) for p in module.pairs]
        train_cols = ["step", "total", "l1", "kl", "hsa", *[p + c for p in prefixes for c in HSA_TRAIN_COLUMNS],
                      "kappa", "lr", "grad_norm", "samples_per_s"]
        val_cols = ["step", "l1", "l1_prior", "kl", "hsa", *[p + c for p in prefixes for c in HSA_VAL_COLUMNS]]
        self.train_tsv = CurveFile(run_dir / "curves" / "train.tsv", train_cols, start_step)
        self.val_tsv = CurveFile(run_dir / "curves" / "val.tsv", val_cols, start_step)
        self.run_name = "act+hsa" if hsa_enabled else "act"
        self.writer = SummaryWriter(str(run_dir / "tb" / self.run_name), purge_step=start_step or None)
        if start_step == 0 and hsa_enabled and prefixes:
            self.writer.add_custom_scalars(self._layout(prefixes))

    @staticmethod
    def _layout(prefixes: list[str]) -> dict:
        """TensorBoard 'Custom Scalars': each HSA loss on one chart with its chance level."""
        charts = {}
        for p in prefixes:
            who = f" ({p.rstrip('/')})" if p else ""
            charts[f"wrist loss vs chance{who}"] = ["Multiline", [f"loss/{p}hsa_w", f"hsa/{p}chance_w"]]
            charts[f"third-person loss vs chance{who}"] = ["Multiline", [f"loss/{p}hsa_tp", f"hsa/{p}chance_tp"]]
            charts[f"wrist top-1 vs chance{who}"] = ["Multiline", [f"hsa/{p}top1_w", f"hsa/{p}top1_chance_w"]]
            charts[f"wrist localisation vs chance{who}"] = ["Multiline", [f"hsa/{p}loc_acc_w", f"hsa/{p}loc_chance_w"]]
        return {"HSA: is it learning?": charts}

    def train_row(self, row: dict) -> None:
        self.train_tsv.write(row)
        for k, v in row.items():
            if k != "step" and isinstance(v, float) and k in self.train_tsv.columns:
                self.writer.add_scalar(_tb_tag(k), v, row["step"])

    def val_row(self, step: int, metrics: dict) -> None:
        self.val_tsv.write({"step": step, **metrics})
        for k, v in metrics.items():
            self.writer.add_scalar(f"val/{k}", v, step)

    def finish(self, hparams: dict, metric_tags: list[str]) -> None:
        """hparams in this same run (so TensorBoard shows one run), against its val/ tags."""
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        if metric_tags:
            for summary in hparams_summary(hparams, {t: 0.0 for t in metric_tags}):
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


def log_box_images(writer, caches: Caches, rows: np.ndarray, n: int = 4) -> None:
    """A few frames with their sensor boxes, so a user sees what HSA is told to align."""
    from ..geometry.draw import draw_boxes

    for i, row in enumerate(rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]):
        e = caches.episode_of(int(row))
        t = int(row - caches.manifest.offsets[e])
        ep_info = caches.manifest.episodes[e]
        with caches.manifest.open(ep_info) as ep:
            for cam in caches.manifest.info.cameras:
                if cam not in caches.boxes_px:
                    continue
                boxes = [(b, bool(b[2] > b[0])) for b in caches.boxes_px[cam][row]]
                img = np.asarray(draw_boxes(ep.frame(cam, t), boxes))
                writer.add_image(f"boxes/{cam}/{i}", img, 0, dataformats="HWC")


# --------------------------------------------------------------------------- export
def export_policy(out: Path, module: TrainModule, act: ActConfig, hsa: HsaConfig, caches: Caches,
                  best: Path) -> None:
    """The policy directory, self-contained (stores.POLICY_FILES): the state of the best
    validation step (or the last one without validation) of the policy and, with HSA on,
    of the HSA heads (evaluate's alignment reads them); policy.json is everything else
    needed to run it on raw camera images."""
    state = torch.load(best, map_location="cpu", weights_only=True)["module"] if best.exists() else module.state_dict()
    part = lambda prefix: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    meta = {"schema_version": POLICY_SCHEMA, "act": to_dict(act), "hsa": to_dict(hsa) if module.hsa else None,
            "shapes": to_dict(module.policy.shapes), "stats": caches.stats,
            "action_shift": caches.manifest.action_shift,
            "column_names": caches.geometry_info.column_names,
            "features": {k: getattr(caches.feature_info, k) for k in ("model", "pretrained", "block", "resize", "mapping",
                                                                     "streams")}}
    with atomic_dir(out) as tmp:
        torch.save(part("policy."), tmp / "weights.pt")
        if module.hsa is not None:
            torch.save(part("hsa."), tmp / "hsa.pt")
        write_json(tmp / "policy.json", meta)


# --------------------------------------------------------------------------- the stage
def run_train(act: ActConfig, hsa: HsaConfig, cfg: TrainConfig, prepare_dir: Path, geometry_path: Path,
              features_path: Path, out_dir: Path, max_steps: int | None = None) -> dict:
    """Train (or resume) to cfg.steps. `max_steps` stops after that step as if the process
    were killed there (tests). Returns the final metrics ({"stopped": True, ...} when stopped)."""
    dist = init_distributed(cfg)
    set_seed(cfg.seed + dist.rank)
    caches = Caches(prepare_dir, geometry_path, features_path, cfg.memory_budget_gb, hsa.positives)
    data = TrainingData(caches, act, cfg, dist)
    module = build(act, hsa, cfg.steps, caches, dist.device)
    params = [q for q in module.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))  # warm-up, then constant

    run_dir, ckpt_dir = Path(out_dir) / "run", Path(out_dir) / "run" / "checkpoints"
    key = resume_key(act, hsa, cfg, caches)
    step, best = resume(run_dir, key, module, opt, sched, data.gen, cfg.resume, dist.main)
    start = step
    dist.barrier()
    fwd = module
    if cfg.compile:
        fwd = torch.compile(module, mode=None if cfg.compile is True else cfg.compile)
    if dist.world > 1:
        fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    threads = ThreadTuner(cfg.threads, dist.device)  # auto: the cores other processes leave
    log = RunLog(run_dir, module, step, hsa.enabled) if dist.main else None
    if log is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if step == 0:
            log_box_images(log.writer, caches, data.val_rows if len(data.val_rows) else data.train_rows)
        print(f"train: {len(data.train_rows)} train / {len(data.val_rows)} val frames, caches "
              f"{'in memory' if caches.in_memory else 'streamed from Zarr'} ({caches.cache_bytes / 2**20:.0f} MiB), "
              f"device {dist.device}, {torch.get_num_threads()} CPU thread(s), "
              f"{sum(q.numel() for q in params) / 1e6:.2f}M trainable parameters")
    config = {"act": to_dict(act), "hsa": to_dict(hsa), "train": to_dict(cfg)}
    checkpoint = lambda path: save_checkpoint(path, module, opt, sched, step, best, data.gen, key, config,  # noqa: E731
                                              caches.stats)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda"
                else torch.autocast("cpu", enabled=False))  # bf16 autocast is slower than fp32 on CPUs
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=end, initial=step, unit="step", desc="train", disable=not dist.main)
    module.train()
    # The loop: sample a batch, take a step; now and then log, validate, checkpoint.
    while step < end:
        threads.update()
        batch = data.next_batch()
        log_now = log is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps)
        stats = diagnostics(module, batch, step, autocast) if log_now and hsa.enabled else {}
        terms, grad_norm = train_step(fwd, opt, sched, params, batch, step, cfg.grad_clip, autocast)
        step += 1
        if log_now:
            rate = (step - start) * cfg.batch_size * dist.world / (time.perf_counter() - t0)
            row = {"step": step, **{k: float(v.detach()) for k, v in terms.items()}, **stats,
                   "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm), "samples_per_s": rate}
            log.train_row(row)
            bar.set_postfix_str(f"loss {row['total']:.3f}, l1 {row['l1']:.3f}, {rate:.0f} samples/s"
                                + (f", {threads.threads} thread(s)" if dist.device.type == "cpu" else ""))
        if log is not None and (step % cfg.val_every == 0 or step == cfg.steps) and len(data.val_rows):
            metrics = validate(module, data, step)
            log.val_row(step, metrics)
            if metrics["l1_prior"] < best:
                best = metrics["l1_prior"]
                checkpoint(ckpt_dir / "best.pt")
        if log is not None and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            checkpoint(ckpt_dir / "last.pt")
        bar.update(1)
    bar.close()
    if log is not None and not metrics and step == cfg.steps and len(data.val_rows):
        metrics = validate(module, data, step)  # a finished run resumed at its end: same metrics, not none
    dist.barrier()
    if log is None:
        return {}
    if step < cfg.steps:
        log.writer.close()
        return {"step": step, "stopped": True}
    final = {"step": step, "start_step": start, "steps_trained": step - start,
             "best_val_l1_prior": best if math.isfinite(best) else None,
             **{f"val_{k}": v for k, v in metrics.items()}}
    log.finish({"hsa_enabled": hsa.enabled, "hsa_weight": hsa.weight, "lr": cfg.lr, "batch_size": cfg.batch_size,
                "chunk_size": act.chunk_size, "kl_weight": act.kl_weight},
               [f"val/{k}" for k in metrics])
    export_policy(Path(out_dir) / "policy", module, act, hsa, caches, ckpt_dir / "best.pt")
    write_json(Path(out_dir) / "metrics.json", {k: round(v, 6) if isinstance(v, float) else v for k, v in final.items()})
    best_text = f"{best:.4f}" if math.isfinite(best) else "n/a (no validation episodes)"
    print(f"train: done at step {step} ({step - start} trained now); best val l1 (z=0) {best_text}; "
          f"policy in {Path(out_dir) / 'policy'}")
    return final
