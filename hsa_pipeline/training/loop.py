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

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from ..config import ActConfig, HsaConfig, TrainConfig, to_dict
from ..data.caches import Batch, Caches
from ..errors import TrainingDiverged, first_line
from ..pipeline.atomic import write_json
from ..pipeline.distributed import Dist, init_distributed
from ..pipeline.runtime import ThreadTuner, compile_mode
from .checkpoints import resume, resume_key, save_checkpoint
from .export import export_policy
from .logs import HSA_VAL_COLUMNS, RunLog, log_box_images
from .module import TrainModule, build
from .sampling import TrainingData


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class DivergenceWatch:
    """Notices a non-finite loss without a host sync on every step: the first bad step and
    its loss terms are kept on the device, and `check` (one sync) runs only where the loop
    reads figures anyway (logging, validation, checkpoints, the end), so no checkpoint is
    written after a bad step. On a GPU a per-step `isfinite` read would stall the queue."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.names: list[str] = []
        self.values: torch.Tensor | None = None

    def record(self, total: torch.Tensor, terms: dict, step: torch.Tensor | int) -> None:
        if not self.names:
            self.names = ["total", *terms]
            self.values = torch.zeros(len(self.names), device=total.device)
        now = torch.stack([total.detach().float(), *(v.detach().float() for v in terms.values())])
        new = (~torch.isfinite(total)) & (self.first_bad < 0)
        bad = step + 1 if isinstance(step, torch.Tensor) else torch.full_like(self.first_bad, step + 1)
        self.first_bad = torch.where(new, bad, self.first_bad)
        self.values = torch.where(new, now, self.values)

    def check(self) -> None:
        step = int(self.first_bad)  # the one host sync
        if step < 0:
            return
        values = self.values.tolist()
        name, value = next(((n, v) for n, v in zip(self.names[1:], values[1:], strict=True) if not math.isfinite(v)),
                           ("total", values[0]))
        raise TrainingDiverged(f"train: loss term '{name}' is {value} at step {step}; see docs/guide.md#nan-loss "
                               "(the last good checkpoint is run/checkpoints/last.pt)")


def train_step(fwd, opt, sched, params: list, batch: Batch, step: torch.Tensor | int, grad_clip: float,
               autocast, watch: DivergenceWatch) -> tuple[dict, torch.Tensor]:
    """Forward, backward, clip, update. -> loss terms, gradient norm. No host sync: a
    non-finite loss is recorded in `watch` and raised at its next check. `step`: the loop
    passes it as a 0-d tensor on the device (Run.take_step), so a compiled step reads it
    as an input instead of compiling each new number in."""
    with autocast:
        total, terms, _, _ = fwd(batch, step, diagnostics=False)
    watch.record(total, terms, step)
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


# --------------------------------------------------------------------------- the stage
@dataclass
class Run:
    """What one training run holds, built by `start_run`; rank 0 alone has a `log`."""

    act: ActConfig
    hsa: HsaConfig
    cfg: TrainConfig
    dist: Dist
    caches: Caches
    data: TrainingData
    module: TrainModule
    fwd: nn.Module  # what the step calls: the module, wrapped in DDP and/or compiled
    eager: nn.Module  # the same without torch.compile: what a failed compile falls back to
    compile_mode: str | None  # the torch.compile mode until its first step has run, then None
    params: list
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    key: str  # the resume key
    run_dir: Path
    threads: ThreadTuner
    autocast: object
    log: RunLog | None
    step: int
    best: float  # best validation l1 (z = 0) so far
    start_step: int
    t0: float = field(default_factory=time.perf_counter)
    watch: DivergenceWatch | None = None
    step_on_device: torch.Tensor | None = None  # the step number where the step runs (take_step fills it)

    def every(self, n: int) -> bool:
        """This step is one of every n (and the last step always is)."""
        return self.step % n == 0 or self.step == self.cfg.steps

    def checkpoint(self, name: str) -> None:
        config = {"act": to_dict(self.act), "hsa": to_dict(self.hsa), "train": to_dict(self.cfg)}
        save_checkpoint(self.run_dir / "checkpoints" / name, self.module, self.opt, self.sched, self.step, self.best,
                        self.data.gen, self.key, config, self.caches.stats)

    def log_train(self, terms: dict, stats: dict, grad_norm: torch.Tensor, bar) -> None:
        rate = (self.step - self.start_step) * self.cfg.batch_size * self.dist.world / (time.perf_counter() - self.t0)
        row = {"step": self.step, **{k: float(v.detach()) for k, v in terms.items()}, **stats,
               "lr": self.sched.get_last_lr()[0], "grad_norm": float(grad_norm), "samples_per_s": rate}
        self.log.train_row(row)
        bar.set_postfix_str(f"loss {row['total']:.3f}, l1 {row['l1']:.3f}, {rate:.0f} samples/s"
                            + (f", {self.threads.threads} thread(s)" if self.dist.device.type == "cpu" else ""))

    def take_step(self, batch: Batch) -> tuple[dict, torch.Tensor]:
        """One training step. torch.compile compiles at its first call: if that fails, say
        why in one line, put the random state back and take the step eager (for the run)."""
        if self.step_on_device is None:
            self.step_on_device = torch.zeros((), dtype=torch.long, device=self.dist.device)
        self.step_on_device.fill_(self.step)  # a fill on the device, not a copy from the host
        args = (self.opt, self.sched, self.params, batch, self.step_on_device, self.cfg.grad_clip, self.autocast,
                self.watch)
        if self.compile_mode is None:
            return train_step(self.fwd, *args)
        mode, self.compile_mode = self.compile_mode, None
        cuda = [self.dist.device] if self.dist.device.type == "cuda" else []
        state = _rng_state(cuda)
        try:
            return train_step(self.fwd, *args)
        except Exception as e:  # noqa: BLE001 - any compiler failure; an eager bug raises again below
            print(f"train: torch.compile (mode {mode}) failed at its first step, training eager instead "
                  f"({type(e).__name__}: {first_line(e)}); set train.compile: false to skip the attempt", flush=True)
        _set_rng_state(state, cuda)
        self.fwd = self.eager
        return train_step(self.fwd, *args)

    def validate(self) -> dict[str, float]:
        """Validation figures of this step, logged; a new best is checkpointed as best.pt."""
        metrics = validate(self.module, self.data, self.step)
        self.log.val_row(self.step, metrics)
        if metrics["l1_prior"] < self.best:
            self.best = metrics["l1_prior"]
            self.checkpoint("best.pt")
        return metrics


def run_train(act: ActConfig, hsa: HsaConfig, cfg: TrainConfig, prepare_dir: Path, geometry_path: Path,
              features_path: Path, out_dir: Path, max_steps: int | None = None) -> dict:
    """Train (or resume) to cfg.steps. `max_steps` stops after that step as if the process
    were killed there (tests). Returns the final metrics ({"stopped": True, ...} when stopped)."""
    run = start_run(act, hsa, cfg, prepare_dir, geometry_path, features_path, Path(out_dir))
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    main, has_val = run.log is not None, len(run.data.val_rows) > 0
    metrics: dict[str, float] = {}
    bar = tqdm(total=end, initial=run.step, unit="step", desc="train", disable=not main)
    run.module.train()
    # The loop: sample a batch, take a step; now and then log, validate, checkpoint.
    while run.step < end:
        run.threads.update()
        batch = run.data.next_batch()
        log_now = main and ((run.step + 1) % cfg.log_every == 0 or run.step + 1 == cfg.steps)
        stats = diagnostics(run.module, batch, run.step, run.autocast) if log_now and hsa.enabled else {}
        terms, grad_norm = run.take_step(batch)
        run.step += 1
        if run.step == end or any(run.every(n) for n in (cfg.log_every, cfg.val_every, cfg.ckpt_every)):
            run.watch.check()  # every rank, before anything is logged or saved
        if log_now:
            run.log_train(terms, stats, grad_norm, bar)
        if main and has_val and run.every(cfg.val_every):
            metrics = run.validate()
        if main and run.every(cfg.ckpt_every):
            run.checkpoint("last.pt")
        bar.update(1)
    bar.close()
    return finish_run(run, metrics, Path(out_dir))


def start_run(act: ActConfig, hsa: HsaConfig, cfg: TrainConfig, prepare_dir: Path, geometry_path: Path,
              features_path: Path, out_dir: Path) -> Run:
    """Devices, seeds, caches, model, optimiser, and the checkpoint to resume from (if it
    belongs to these inputs, code and settings)."""
    dist = init_distributed(cfg.device, "train.device")
    if dist.device.type == "cuda":  # TF32 matmuls: the training step's float32 parts, faster on the GPU
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(cfg.seed + dist.rank)
    caches = Caches(prepare_dir, geometry_path, features_path, cfg.memory_budget_gb, hsa.positives)
    data = TrainingData(caches, act, cfg, dist)
    module = build(act, hsa, cfg.steps, caches, dist.device)
    params = [q for q in module.parameters() if q.requires_grad]
    # fused: one kernel for the whole update on a GPU instead of a few per parameter tensor
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=True if dist.device.type == "cuda" else None)
    warm = max(1, cfg.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))  # warm-up, then constant
    run_dir = out_dir / "run"
    key = resume_key(act, hsa, cfg, caches)
    step, best = resume(run_dir, key, module, opt, sched, data.gen, cfg.resume, dist.main)
    dist.barrier()
    eager = module
    if dist.world > 1:
        eager = nn.parallel.DistributedDataParallel(module, device_ids=[dist.device.index]
                                                    if dist.device.type == "cuda" else None)
    mode = compile_mode(cfg.compile, dist.device)
    fwd = torch.compile(eager, mode=mode) if mode else eager  # compiling DDP's wrapper: PyTorch's advice
    threads = ThreadTuner(cfg.threads, dist.device)  # auto: the cores other processes leave
    log = RunLog(run_dir, module, step, hsa.enabled) if dist.main else None
    if log is not None:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if step == 0:
            log_box_images(log.writer, caches, data.val_rows if len(data.val_rows) else data.train_rows)
        print(f"train: {len(data.train_rows)} train / {len(data.val_rows)} val frames, caches {data.where_caches()} "
              f"({caches.cache_bytes / 2**20:.0f} MiB), "
              f"device {dist.device}, {torch.get_num_threads()} CPU thread(s), "
              f"{sum(q.numel() for q in params) / 1e6:.2f}M trainable parameters"
              + (f"; compiling the step (torch.compile mode {mode}: the first step takes a while)" if mode else ""))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dist.device.type == "cuda"
                else torch.autocast("cpu", enabled=False))  # bf16 autocast is slower than fp32 on CPUs
    return Run(act, hsa, cfg, dist, caches, data, module, fwd, eager, mode, params, opt, sched, key, run_dir, threads,
               autocast, log, step, best, step, watch=DivergenceWatch(dist.device))


def _rng_state(cuda: list) -> tuple:
    return torch.random.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda]


def _set_rng_state(state: tuple, cuda: list) -> None:
    torch.random.set_rng_state(state[0])
    for d, s in zip(cuda, state[1], strict=True):
        torch.cuda.set_rng_state(s, d)


def finish_run(run: Run, metrics: dict, out_dir: Path) -> dict:
    """Rank 0, at the last step: final validation figures, hparams, the exported policy and
    metrics.json. A run stopped early (max_steps) only closes its log."""
    cfg, act, hsa = run.cfg, run.act, run.hsa
    if run.log is not None and not metrics and run.step == cfg.steps and len(run.data.val_rows):
        metrics = validate(run.module, run.data, run.step)  # a finished run resumed at its end: same metrics
    run.dist.barrier()
    if run.log is None:
        return {}
    if run.step < cfg.steps:
        run.log.writer.close()
        return {"step": run.step, "stopped": True}
    best = run.best
    final = {"step": run.step, "start_step": run.start_step, "steps_trained": run.step - run.start_step,
             "best_val_l1_prior": best if math.isfinite(best) else None,
             **{f"val_{k}": v for k, v in metrics.items()}}
    run.log.finish({"hsa_enabled": hsa.enabled, "hsa_weight": hsa.weight, "lr": cfg.lr, "batch_size": cfg.batch_size,
                    "chunk_size": act.chunk_size, "kl_weight": act.kl_weight},
                   [f"val/{k}" for k in metrics])
    export_policy(out_dir / "policy", run.module, act, hsa, run.caches, run.run_dir / "checkpoints" / "best.pt")
    write_json(out_dir / "metrics.json", {k: round(v, 6) if isinstance(v, float) else v for k, v in final.items()})
    best_text = f"{best:.4f}" if math.isfinite(best) else "n/a (no validation episodes)"
    print(f"train: done at step {run.step} ({run.step - run.start_step} trained now); best val l1 (z=0) {best_text}; "
          f"policy in {out_dir / 'policy'}")
    return final
