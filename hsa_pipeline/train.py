"""The `train` stage: ACT + HSA on the cached features, on one CPU, one GPU, or many
(torchrun -> DistributedDataParallel; only rank 0 logs and writes).

Run directory (outputs/train/run, kept between `dvc repro` runs so training resumes):
  checkpoints/last.pt, best.pt   tensors and plain data only: torch.load(weights_only=True)
  tb/                            TensorBoard events
  curves/train.tsv, val.tsv      the same curves for `dvc plots`
Also outputs/train/policy/ (the exported policy) and outputs/train/metrics.json.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import default_collate
from tqdm import tqdm

from .act import ACTPolicy, ActShapes, act_losses
from .atomic import atomic_dir, remove, write_json
from .config import Params, to_dict
from .data import ActionCodec, Caches, ChunkSamples, HsaPair
from .hsa import HSALoss, HsaInputs
from .paths import FEATURES, GEOMETRY, PREPARE, TRAIN

RUN = TRAIN / "run"
# Keys that do not change what is learned: a run may resume across changes of these.
_RESUME_FREE = {"steps", "resume", "log_every", "val_every", "ckpt_every", "workers", "device", "compile", "memory_budget_gb"}
VAL_ROWS = 512  # validation uses at most this many evenly spaced held-out frames


class NonFiniteLoss(RuntimeError):
    pass


class TrainModule(nn.Module):
    """Policy + HSA loss: one forward computes every loss term (this is what DDP wraps)."""

    def __init__(self, policy: ACTPolicy, hsa: HSALoss | None, pairs: list[HsaPair], p: Params):
        super().__init__()
        self.policy, self.hsa, self.pairs, self.p = policy, hsa, pairs, p

    def forward(self, batch: dict, step: int = 0, use_latent: bool = True, diagnostics: bool = True):
        pol = self.policy
        pred, latent, adapted = pol(batch["qpos"], batch["tokens"], batch["actions"] if use_latent else None,
                                    batch["is_pad"] if use_latent else None)
        terms = act_losses(pred, batch["actions"], batch["is_pad"], latent)
        total = terms["l1"] + self.p.act.kl_weight * terms["kl"]
        stats: dict[str, float] = {}
        if self.hsa is not None:
            hsa_total = pred.new_zeros(())
            for pair in self.pairs:
                x = self.hsa_inputs(batch, adapted, pair)
                if x is None:
                    continue
                loss, s = self.hsa(x, step, diagnostics)
                hsa_total = hsa_total + loss
                prefix = "" if len(self.pairs) == 1 else f"{pair.sensor}/"
                stats.update({prefix + k: v for k, v in s.items()})
            terms["hsa"] = hsa_total
            total = total + self.p.hsa.weight * hsa_total
        terms["total"] = total
        return total, terms, stats, pred

    def hsa_inputs(self, batch: dict, adapted: dict, pair: HsaPair) -> HsaInputs | None:
        if pair.wrist is None:
            return None
        B = batch["qpos"].shape[0]
        valid = batch["contact"][pair.sensor] if self.p.hsa.require_contact else torch.ones(B, dtype=torch.bool)
        x = HsaInputs(tactile=adapted[pair.sensor], wrist=adapted[pair.wrist],
                      wrist_box=batch["box"][pair.key(pair.wrist)].flatten(1),
                      valid=valid.to(batch["qpos"].device), wrist_visible=batch["visible"][pair.key(pair.wrist)])
        if pair.third_person is not None:
            k = pair.key(pair.third_person)
            x.tp, x.tp_box = adapted[pair.third_person], batch["box"][k].flatten(1)
            x.tp_alpha = batch["weight"][k] * batch["visible"][k]
        return x


# --------------------------------------------------------------------------- helpers
def resume_key(p: Params, feat_fingerprint: str) -> str:
    train = {k: v for k, v in to_dict(p.train).items() if k not in _RESUME_FREE}
    blob = json.dumps({"act": to_dict(p.act), "hsa": to_dict(p.hsa), "train": train, "features": feat_fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_train_device(name: str, local_rank: int) -> torch.device:
    from .encoder import pick_device

    dev = pick_device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


class CurveFile:
    """Append-only TSV of scalars (rank 0), readable by `dvc plots`."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\t".join(columns) + "\n")

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f, delimiter="\t").writerow([_fmt(row.get(c, "")) for c in self.columns])


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


TRAIN_COLUMNS = ["step", "total", "l1", "kl", "hsa", "hsa_w", "hsa_tp", "chance_w", "n_w", "top1_w", "top1_chance_w",
                 "loc_acc_w", "loc_chance_w", "chance_tp", "top1_tp", "loc_acc_tp", "kappa", "lr", "grad_norm",
                 "samples_per_s"]
VAL_COLUMNS = ["step", "l1", "l1_prior", "kl", "hsa", "hsa_w", "chance_w", "top1_w", "loc_acc_w", "loc_chance_w",
               "top1_tp", "loc_acc_tp"]


# --------------------------------------------------------------------------- the loop
def build(p: Params, caches: Caches, device: torch.device) -> TrainModule:
    shapes = ActShapes(qpos_dim=caches.qpos.shape[1], action_dim=caches.action_raw.shape[1],
                       streams=list(caches.streams), grid=caches.grid, token_dim=caches.width)
    if shapes.grid % p.act.grid_pool:
        raise ValueError(f"act.grid_pool: {p.act.grid_pool} does not divide the {shapes.grid}x{shapes.grid} feature grid")
    policy = ACTPolicy(p.act, shapes)
    hsa = HSALoss(p.act.hidden_dim, p.hsa, p.train.steps) if p.hsa.enabled else None
    return TrainModule(policy, hsa, caches.pairs, p).to(device)


def run_train(p: Params, max_steps: int | None = None) -> dict:
    """Train (or resume) to train.steps; `max_steps` stops early after that step, as if
    interrupted (tests). Returns the final metrics."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_train_device(p.train.device, local_rank)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(p.train.seed + rank)
    main = rank == 0

    caches = Caches(PREPARE, GEOMETRY, FEATURES, p.train.memory_budget_gb)
    train_rows, val_rows = caches.rows("train"), caches.rows("val")
    if len(val_rows) > VAL_ROWS:
        val_rows = val_rows[np.linspace(0, len(val_rows) - 1, VAL_ROWS).round().astype(int)]
    codec = ActionCodec.from_stats(caches.stats, p.act.relative_actions, caches.qpos.shape[1])
    train_ds = ChunkSamples(caches, train_rows, p.act.chunk_size, codec)
    val_ds = ChunkSamples(caches, val_rows, p.act.chunk_size, codec)

    module = build(p, caches, device)
    params = [q for q in module.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=p.train.lr, weight_decay=p.train.weight_decay)
    warm = max(1, p.train.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    gen = torch.Generator().manual_seed(p.train.seed * 1000 + rank)

    key = resume_key(p, caches.feat_attrs["fingerprint"])
    step, best = 0, math.inf
    ckpt_dir = RUN / "checkpoints"
    last = ckpt_dir / "last.pt"
    if p.train.resume and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        if ck["resume_key"] == key:
            module.load_state_dict(ck["module"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            step, best = int(ck["step"]), float(ck["best"])
            torch.set_rng_state(ck["rng"]["torch"])
            gen.set_state(ck["rng"]["sampler"])
            if main:
                print(f"train: resuming from {last} at step {step}")
        elif main:
            print(f"train: {last} belongs to other settings; starting a new run")
    if main and step == 0:
        remove(RUN)  # a fresh run: no stale curves, events or checkpoints
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    fwd = module
    if p.train.compile:
        fwd = torch.compile(module)
    if world > 1:
        fwd = nn.parallel.DistributedDataParallel(fwd, device_ids=[device.index] if device.type == "cuda" else None)

    writer = tsv = vtsv = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        (RUN / "checkpoints").mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(RUN / "tb"), purge_step=step if step else None)
        tsv = CurveFile(RUN / "curves" / "train.tsv", TRAIN_COLUMNS)
        vtsv = CurveFile(RUN / "curves" / "val.tsv", VAL_COLUMNS)
        if step == 0:
            log_box_images(writer, caches, val_rows if len(val_rows) else train_rows, p)
        print(f"train: {len(train_rows)} train / {len(val_rows)} val frames, caches "
              f"{'in memory' if caches.in_memory else 'streamed from Zarr'} ({caches.cache_bytes / 2**20:.0f} MiB), "
              f"device {device}, {sum(q.numel() for q in params) / 1e6:.2f}M trainable parameters")

    loader = None
    if not caches.in_memory and p.train.workers > 0:
        loader = iter(torch.utils.data.DataLoader(train_ds, batch_size=p.train.batch_size, num_workers=p.train.workers,
                                                  sampler=_InfiniteSampler(len(train_ds), gen), persistent_workers=True))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    end = p.train.steps if max_steps is None else min(p.train.steps, max_steps)
    t0, seen, metrics = time.perf_counter(), 0, {}
    bar = tqdm(total=end, initial=step, unit="step", desc="train", disable=not main)
    module.train()
    while step < end:
        if loader is not None:
            batch = next(loader)
        else:
            idx = torch.randint(len(train_ds), (p.train.batch_size,), generator=gen)
            batch = default_collate([train_ds[int(i)] for i in idx])
        batch = to_device(batch, device)
        log_now = main and ((step + 1) % p.train.log_every == 0 or step + 1 == end)
        with autocast:
            total, terms, stats, _ = fwd(batch, step, diagnostics=log_now)
        if not torch.isfinite(total):  # the one host sync of an ordinary step
            name, value = next(((n, v) for n, v in terms.items() if not torch.isfinite(v)), ("total", total))
            raise NonFiniteLoss(f"train: loss term '{name}' is {float(value.detach())} at step {step + 1}; the last good "
                                f"checkpoint is {last if last.exists() else 'none (no checkpoint yet)'}. "
                                f"See docs/guide.md#troubleshooting (NaN loss)")
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, p.train.grad_clip if p.train.grad_clip > 0 else math.inf)
        opt.step()
        sched.step()
        step += 1
        seen += p.train.batch_size * world
        if log_now:
            rate = seen / (time.perf_counter() - t0)
            row = {"step": step, **{k: float(v.detach()) for k, v in terms.items()}, **stats,
                   "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm), "samples_per_s": rate}
            tsv.write(row)
            bar.set_postfix_str(f"loss {row['total']:.3f}, l1 {row['l1']:.3f}, {rate:.0f} samples/s")
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and k in TRAIN_COLUMNS:
                    writer.add_scalar(_tb_name(k), v, step)
        if main and (step % p.train.val_every == 0 or step == end) and len(val_ds):
            metrics = validate(module, val_ds, p, device, step)
            vtsv.write({"step": step, **metrics})
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, step)
            if metrics["l1_prior"] < best:
                best = metrics["l1_prior"]
                save_checkpoint(ckpt_dir / "best.pt", module, opt, sched, step, best, gen, key, p, caches)
            module.train()
        if main and (step % p.train.ckpt_every == 0 or step == end):
            save_checkpoint(last, module, opt, sched, step, best, gen, key, p, caches)
        bar.update(1)
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if not main:
        return {}
    writer.flush()
    if step < p.train.steps:
        writer.close()
        return {"step": step, "stopped": True}
    final = {"step": step, "best_val_l1_prior": best, **{f"val_{k}": v for k, v in metrics.items()}}
    writer.add_hparams({"hsa_enabled": p.hsa.enabled, "hsa_weight": p.hsa.weight, "lr": p.train.lr,
                        "batch_size": p.train.batch_size, "chunk_size": p.act.chunk_size, "kl_weight": p.act.kl_weight},
                       {f"hparam/{k}": v for k, v in final.items() if isinstance(v, float) and math.isfinite(v)},
                       run_name="hparams")
    writer.close()
    export_policy(TRAIN / "policy", module, p, caches, ckpt_dir / "best.pt")
    write_json(TRAIN / "metrics.json", {k: round(v, 6) if isinstance(v, float) else v for k, v in final.items()})
    print(f"train: done at step {step}; best val l1 (z=0) {best:.4f}; policy in {TRAIN / 'policy'}")
    return final


def _tb_name(k: str) -> str:
    if k in ("total", "l1", "kl", "hsa", "hsa_w", "hsa_tp"):
        return f"loss/{k}"
    if k in ("lr", "grad_norm", "samples_per_s"):
        return f"train/{k}"
    return f"hsa/{k}"


class _InfiniteSampler(torch.utils.data.Sampler):
    def __init__(self, n: int, gen: torch.Generator):
        self.n, self.gen = n, gen

    def __iter__(self):
        while True:
            yield from torch.randint(self.n, (1024,), generator=self.gen).tolist()


@torch.no_grad()
def validate(module: TrainModule, ds: ChunkSamples, p: Params, device: torch.device, step: int) -> dict[str, float]:
    """Mean losses over the held-out frames: l1 with the CVAE latent (comparable to
    training) and l1_prior with z = 0 (what the deployed policy does)."""
    module.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    rng_state = torch.get_rng_state()
    for start in range(0, len(ds), p.train.batch_size):
        batch = to_device(default_collate([ds[i] for i in range(start, min(len(ds), start + p.train.batch_size))]), device)
        n = batch["qpos"].shape[0]
        _, terms, stats, _ = module(batch, step, use_latent=True)
        _, prior_terms, _, _ = module(batch, step, use_latent=False)
        values = {"l1": float(terms["l1"]), "kl": float(terms["kl"]), "l1_prior": float(prior_terms["l1"]),
                  **({"hsa": float(terms["hsa"])} if "hsa" in terms else {}),
                  **{k: v for k, v in stats.items() if k in VAL_COLUMNS and math.isfinite(v)}}
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v * n
            counts[k] = counts.get(k, 0) + n
    torch.set_rng_state(rng_state)  # validation must not change the training run
    return {k: sums[k] / counts[k] for k in sums}


def save_checkpoint(path: Path, module: TrainModule, opt, sched, step: int, best: float, gen: torch.Generator,
                    key: str, p: Params, caches: Caches) -> None:
    """Tensors and plain data only (loadable with weights_only=True); atomic rename."""
    ck = {"module": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
          "step": step, "best": best, "resume_key": key, "config": to_dict(p),
          "rng": {"torch": torch.get_rng_state(), "sampler": gen.get_state()},
          "stats": caches.stats}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, path)


def export_policy(out: Path, module: TrainModule, p: Params, caches: Caches, best: Path) -> None:
    """weights.pt (policy state dict, best validation step) + policy.json (everything else
    needed to run it on raw camera images)."""
    state = torch.load(best, map_location="cpu", weights_only=True)["module"] if best.exists() else module.state_dict()
    policy_state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
    shapes = module.policy.shapes
    meta = {"act": to_dict(p.act), "shapes": to_dict(shapes), "stats": caches.stats,
            "action_shift": caches.manifest.raw["action_shift"],
            "features": {k: caches.feat_attrs[k] for k in ("model", "pretrained", "block", "resize", "mapping", "streams")},
            "eval": to_dict(p.eval)}
    with atomic_dir(out) as tmp:
        torch.save(policy_state, tmp / "weights.pt")
        write_json(tmp / "policy.json", meta)


def log_box_images(writer, caches: Caches, rows: np.ndarray, p: Params, n: int = 4) -> None:
    """A few frames with their sensor boxes, so a user sees what HSA is told to align."""
    from .episodes import Episode
    from .preview import draw_boxes

    for i, row in enumerate(rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]):
        e = caches.episode_of(int(row))
        t = int(row - caches.manifest.offsets[e])
        ep_info = caches.manifest.episodes[e]
        with Episode(caches.manifest.path(ep_info), ep_info["layout"]) as ep:
            for cam in caches.manifest.raw["cameras"]:
                if cam not in caches.boxes_px:
                    continue
                boxes = [(b, bool(b[2] > b[0])) for b in caches.boxes_px[cam][row]]
                img = np.asarray(draw_boxes(ep.frame(cam, t), boxes))
                writer.add_image(f"boxes/{cam}/{i}", img, 0, dataformats="HWC")
