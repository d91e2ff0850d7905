"""Checkpoints and resuming: a run continues from run/checkpoints/last.pt only if the
checkpoint's resume key equals the current one (every input training reads, by content;
the training code; every setting that changes what is learned). Tensors and plain data
only, so torch.load(weights_only=True) reads them; written with an atomic rename."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..config import ActConfig, HsaConfig, TrainConfig, to_dict
from ..data.caches import Caches
from ..pipeline import numerics
from ..pipeline.atomic import remove
from ..pipeline.closure import code_fingerprint
from ..pipeline.hashing import sha256_json
from .module import TrainModule

# train.* keys that do not change what is learned: a run may resume across changes of these.
RESUME_FREE = {"steps", "resume", "log_every", "val_every", "ckpt_every", "workers", "device", "threads", "compile",
               "memory_budget_gb"}


def resume_key(act: ActConfig, hsa: HsaConfig, train: TrainConfig, caches: Caches) -> str:
    """What a checkpoint is a function of: inputs (by content), code, learning settings, and
    the CPU arithmetic (pipeline/numerics.py)."""
    free = RESUME_FREE - ({"steps"} if hsa.enabled and hsa.temperature_mode == "anneal" else set())
    settings = {"act": to_dict(act), "hsa": to_dict(hsa),
                "train": {k: v for k, v in to_dict(train).items() if k not in free}}
    return sha256_json({"settings": settings, "inputs": caches.fingerprint, "numerics": numerics.state(),
                        "code": code_fingerprint("hsa_pipeline.training.loop")})[:16]


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
    and, on rank 0, empty run_dir so no stale curve, event or checkpoint mixes into the new
    run: a run with checkpoints is moved aside (`set_aside`), anything else removed."""
    last = run_dir / "checkpoints" / "last.pt"
    old_key = None
    if enabled and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        old_key = ck["resume_key"]
        if old_key == key:
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
        if last.exists():
            if old_key is None:  # resuming is off: the run is still set aside under its own key
                old_key = torch.load(last, map_location="cpu", weights_only=True)["resume_key"]
            aside = set_aside(run_dir, old_key)
            print(f"train: the previous run and its checkpoints are kept in {aside} (delete it when done with it)")
        remove(run_dir)
    return 0, math.inf


def set_aside(run_dir: Path, old_key: str) -> Path:
    """Move a run that will not be resumed out of the pipeline's outputs, checkpoints and
    all: `<run_dir's stage dir>-aside/run-<its key>[-N]`, beside outputs/train so DVC neither
    caches nor deletes it."""
    stage_dir = run_dir.parent
    base = stage_dir.with_name(stage_dir.name + "-aside") / f"run-{old_key}"
    aside, n = base, 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run_dir, aside)
    return aside
