"""Training steps/s at the X-Trainer configuration (batch 16, chunk 45, hidden 512,
feed-forward 3200, 4 encoder / 7 decoder layers, 8 heads; three cameras + one tactile
stream), in one run on one machine:

1. this trainer: ACT + HSA on cached ViT-B-16 token grids (14 x 14 x 768 per stream);
2. the original recipe: the same ACT fed raw 480x640 images through a trainable
   ResNet18 backbone (torchvision, random weights), its 15x20 feature maps as tokens.

    python benchmarks/bench_train.py [--steps 3] [--grid-pool 2] [--device auto] [--checkpoint-layers]
                                     [--compile reduce-overhead]

Each side runs in its own process, so each one's peak memory (RSS, and CUDA's peak
allocation on a GPU) is its own. On CUDA both run under bf16 autocast with TF32, as the
train stage does, with the train stage's optimizer (fused AdamW on CUDA). `--compile MODE`
compiles the cached side's forward and loss (and with them the backward) as the train stage
does with train.compile (reduce-overhead: CUDA graphs, the train stage's default on a GPU);
the first three steps (the compile, CUDA graphs' warm-up and record) are not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from hsa_pipeline.config import ActConfig, HsaConfig
from hsa_pipeline.model.act import ACTPolicy, ActShapes, act_losses
from hsa_pipeline.model.hsa import HsaInputs, HSALoss
from hsa_pipeline.pipeline.runtime import pick_device

B, K, D = 16, 45, 14
CAMS = ["top", "left_wrist", "right_wrist"]


def xtrainer_act(grid_pool: int, checkpoint_layers: bool = False) -> ActConfig:
    return ActConfig(chunk_size=K, hidden_dim=512, dim_feedforward=3200, enc_layers=4, dec_layers=7, heads=8,
                     dropout=0.1, latent_dim=32, vae_enc_layers=4, kl_weight=10.0, grid_pool=grid_pool,
                     checkpoint_layers=checkpoint_layers)


class RawImageACT(nn.Module):
    """The original recipe: ResNet18 on raw images -> 512-channel maps -> tokens -> the same ACT."""

    def __init__(self, cfg: ActConfig, grid: int):
        super().__init__()
        r = torchvision.models.resnet18(weights=None)
        self.backbone = nn.Sequential(*list(r.children())[:-2])  # (B, 512, 15, 20) for 480x640
        self.act = ACTPolicy(cfg, ActShapes(D, D, CAMS + ["tactile"], grid=grid, token_dim=512))
        self.grid = grid

    def forward(self, qpos, images, actions, is_pad):
        tokens = {}
        for name, img in images.items():
            f = self.backbone(img)  # (B, 512, h, w)
            f = nn.functional.adaptive_avg_pool2d(f, self.grid)  # square grid for the shared position table
            tokens[name] = f.permute(0, 2, 3, 1)
        return self.act(qpos, tokens, actions, is_pad)


def time_steps(step_fn, steps: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm-up: cuDNN autotuning, the allocator, a compile and CUDA graphs' record
        step_fn()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step_fn()
    sync()
    return steps / (time.perf_counter() - t)


def run_side(side: str, steps: int, grid_pool: int, device: str, batch: int, checkpoint_layers: bool = False,
             compile_mode: str | None = None) -> dict:
    """One side in this process: steps/s and peak memory."""
    global B
    B = batch
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext
    torch.manual_seed(0)
    qpos, actions = torch.randn(B, D, device=dev), torch.randn(B, K, D, device=dev)
    is_pad = torch.zeros(B, K, dtype=torch.bool, device=dev)
    if side == "cached":
        cfg = xtrainer_act(grid_pool, checkpoint_layers)
        policy = ACTPolicy(cfg, ActShapes(D, D, CAMS + ["tactile"], grid=14, token_dim=768)).to(dev)
        hsa = HSALoss(512, HsaConfig(proj_dim=128), 1000).to(dev)
        opt = torch.optim.AdamW(list(policy.parameters()) + list(hsa.parameters()), lr=1e-5,
                                fused=True if dev.type == "cuda" else None)  # as the train stage makes it
        grids = {s: torch.randn(B, 14, 14, 768, device=dev).half() for s in CAMS + ["tactile"]}  # as the cache stores them
        box = torch.zeros(B, 196, dtype=torch.bool, device=dev)
        box[:, 90:94] = True

        def forward_loss(grids, qpos, actions, is_pad, box):
            with autocast():
                pred, latent, adapted = policy(qpos, {s: g.float() for s, g in grids.items()}, actions, is_pad)
                losses = act_losses(pred, actions, is_pad, latent)
                x = HsaInputs(tactile=adapted["tactile"], wrist=adapted["left_wrist"], wrist_box=box,
                              valid=torch.ones(B, dtype=torch.bool, device=dev),
                              third_person=adapted["top"], third_person_box=box,
                              third_person_alpha=torch.ones(B, device=dev))
                return losses["l1"] + 10 * losses["kl"] + hsa(x, 0, False)[0]  # no diagnostics, as on most steps

        fwd = torch.compile(forward_loss, mode=compile_mode) if compile_mode else forward_loss

        def step():
            loss = fwd(grids, qpos, actions, is_pad, box)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        raw = RawImageACT(xtrainer_act(1), grid=15).to(dev)
        opt = torch.optim.AdamW(raw.parameters(), lr=1e-5)
        images = {s: torch.randn(B, 3, 480, 640, device=dev) for s in CAMS + ["tactile"]}

        def step():
            with autocast():
                pred, latent, _ = raw(qpos, images, actions, is_pad)
                losses = act_losses(pred, actions, is_pad, latent)
                loss = losses["l1"] + 10 * losses["kl"]
            opt.zero_grad()
            loss.backward()
            opt.step()

    rate = time_steps(step, steps, dev)
    out = {"steps_per_s": rate, "compile": compile_mode,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "machine": (f"{torch.cuda.get_device_name(dev)}, bf16 autocast" if dev.type == "cuda"
                       else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")}
    if dev.type == "cuda":
        out["peak_cuda_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grid-pool", type=int, default=2, help="act.grid_pool for the cached trainer")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--batch", type=int, default=B, help="batch size (X-Trainer: 16)")
    ap.add_argument("--sides", nargs="+", default=["cached", "raw"], choices=["cached", "raw"])
    ap.add_argument("--checkpoint-layers", action="store_true",
                    help="act.checkpoint_layers for the cached trainer (less memory, slower)")
    ap.add_argument("--compile", dest="compile_mode", choices=["default", "reduce-overhead", "max-autotune"],
                    help="torch.compile the cached side's forward and loss (as train.compile)")
    ap.add_argument("--json", help="also write the figures to this JSON file (scripts/gpu_check.sh's summary)")
    ap.add_argument("--side", choices=["cached", "raw"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.steps, args.grid_pool, args.device, args.batch, args.checkpoint_layers,
                                  args.compile_mode if args.side == "cached" else None)))
        return
    res = {}
    for side in args.sides:
        r = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps), "--grid-pool",
                            str(args.grid_pool), "--device", args.device, "--batch", str(args.batch)]
                           + ["--checkpoint-layers"] * args.checkpoint_layers
                           + (["--compile", args.compile_mode] if args.compile_mode else []),
                           capture_output=True, text=True, check=True)
        res[side] = json.loads(r.stdout.strip().splitlines()[-1])
    mem = lambda r: f"peak RSS {r['peak_rss_gb']:.2f} GB" + (f", CUDA {r['peak_cuda_gb']:.2f} GB" if "peak_cuda_gb" in r else "")  # noqa: E731
    first = next(iter(res.values()))
    print(f"machine: {first['machine']}, torch {torch.__version__}")
    print(f"X-Trainer config: batch {args.batch}, chunk {K}, hidden 512, 3 cameras + 1 tactile")
    if "cached" in res:
        ckpt = (", checkpointed layers" if args.checkpoint_layers else "") + (
            f", torch.compile {args.compile_mode}" if args.compile_mode else ", eager")
        print(f"cached ViT-B-16 grids + HSA (grid_pool {args.grid_pool}{ckpt}): {res['cached']['steps_per_s']:.3f} steps/s, "
              f"{mem(res['cached'])}")
    if "raw" in res:
        print(f"raw 480x640 images + ResNet18 (original ACT recipe): {res['raw']['steps_per_s']:.3f} steps/s, "
              f"{mem(res['raw'])}")
    if len(res) == 2:
        print(f"speed-up: {res['cached']['steps_per_s'] / res['raw']['steps_per_s']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"batch": args.batch, "torch": torch.__version__, **res}, indent=1))


if __name__ == "__main__":
    main()
