"""Where a training step's host time goes, counted on any machine: the torch ops one
X-Trainer training step dispatches (the configuration of bench_train.py: chunk 45, hidden
512, 4/7 layers, three cameras + one tactile stream of 14x14x768 cached grids, HSA on),
by phase, split into ops that launch a kernel on a GPU and ops that only make a view or
allocate.

    python benchmarks/bench_step_ops.py [--batch 16 64] [--optimizer fused foreach for-loop]

Why it matters (issue #30): on a GPU each kernel-launching op costs the host ~5-20 us of
Python, dispatcher and launch, whatever the batch; a step of thousands of them is bound
by the host, which is what a rate that stays the same at batch 16 and 64 says. The count
does not depend on the machine, so a CPU measures it; CUDA graphs (train.compile: auto on
a GPU) replay the whole forward and backward as one launch.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import CAMS, D, K, xtrainer_act  # noqa: E402

from hsa_pipeline.config import HsaConfig  # noqa: E402
from hsa_pipeline.model.act import ACTPolicy, ActShapes, act_losses  # noqa: E402
from hsa_pipeline.model.hsa import HsaInputs, HSALoss  # noqa: E402

ALLOCATIONS = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "zeros_like"}


class OpCounter(TorchDispatchMode):
    """Counts every op dispatched while active (the forward's and, on a CPU, where autograd
    runs in the calling thread, the backward's): phase -> kind -> count."""

    def __init__(self):
        super().__init__()
        self.phase = "unnamed"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.names: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        kind = ("view" if func.is_view or name in ("detach", "t", "alias", "_unsafe_view") else
                "allocation" if name in ALLOCATIONS else
                "host read" if name == "_local_scalar_dense" else "kernel")
        self.counts[self.phase][kind] += 1
        if kind == "kernel":
            self.names[name] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def named(self, phase: str):
        self.phase = phase
        yield


def count_step(batch: int, optimizer: str) -> OpCounter:
    torch.manual_seed(0)
    qpos, actions = torch.randn(batch, D), torch.randn(batch, K, D)
    is_pad = torch.zeros(batch, K, dtype=torch.bool)
    policy = ACTPolicy(xtrainer_act(2), ActShapes(D, D, CAMS + ["tactile"], grid=14, token_dim=768))
    hsa = HSALoss(512, HsaConfig(proj_dim=128), 1000)
    params = list(policy.parameters()) + list(hsa.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, **{"fused": {"fused": True}, "foreach": {"foreach": True},
                                                 "for-loop": {"foreach": False}}[optimizer])
    grids = {s: torch.randn(batch, 14, 14, 768).half() for s in CAMS + ["tactile"]}
    box = torch.zeros(batch, 196, dtype=torch.bool)
    box[:, 90:94] = True

    def step(counter: OpCounter):
        with counter.named("forward: ACT"):
            pred, latent, adapted = policy(qpos, {s: g.float() for s, g in grids.items()}, actions, is_pad)
        with counter.named("forward: losses + HSA"):
            losses = act_losses(pred, actions, is_pad, latent)
            x = HsaInputs(tactile=adapted["tactile"], wrist=adapted["left_wrist"], wrist_box=box,
                          valid=torch.ones(batch, dtype=torch.bool), third_person=adapted["top"], third_person_box=box,
                          third_person_alpha=torch.ones(batch))
            loss = losses["l1"] + 10 * losses["kl"] + hsa(x, 0, False)[0]
        with counter.named("backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with counter.named("clip + optimizer"):
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()

    step(OpCounter())  # the optimizer's state is made on its first step
    with OpCounter() as counter:
        step(counter)
    return counter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--optimizer", nargs="+", default=["fused", "for-loop"], choices=["fused", "foreach", "for-loop"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    for optimizer in args.optimizer:
        for batch in args.batch:
            c = count_step(batch, optimizer)
            total = collections.Counter()
            print(f"\nbatch {batch}, AdamW {optimizer}: ops per training step")
            print(f"  {'phase':24} {'kernels':>8} {'views':>7} {'allocs':>7} {'host reads':>10}")
            for phase, kinds in c.counts.items():
                total.update(kinds)
                print(f"  {phase:24} {kinds['kernel']:8d} {kinds['view']:7d} {kinds['allocation']:7d} "
                      f"{kinds['host read']:10d}")
            print(f"  {'total':24} {total['kernel']:8d} {total['view']:7d} {total['allocation']:7d} "
                  f"{total['host read']:10d}")
        print("  most frequent kernels:", ", ".join(f"{n} {k}" for n, k in c.names.most_common(8)))


if __name__ == "__main__":
    main()
