"""Which arithmetic a CPU process runs: `numerics: portable` (the default) gives the same
bytes on every x86-64 CPU with AVX2, Intel or AMD; `native` lets each library pick its
fastest code for the CPU at hand.

Why. torch's CPU build hands matrix products to MKL and convolutions and GELU to oneDNN,
and runs its own kernels compiled for several instruction sets; numpy has its own. Each
picks a code path from the CPU it finds (vendor, instruction set, cache sizes), and the
paths add in different orders: the demo's features.zarr differed between an Intel Xeon and
an AMD EPYC (issue #42), and every stage after it with it (17/20 rollouts against 20/20).

Portable pins each of those choices to one path that every x86-64 CPU with AVX2 runs alike:

  MKL_CBWR=COMPATIBLE        MKL's conditional numerical reproducibility: the branch Intel
                             documents as giving the same results on Intel and other CPUs
                             (its AVX2 and AVX512 branches fall back to AUTO on AMD)
  oneDNN off                 torch.backends.mkldnn.enabled = False: convolutions and GELU run
                             torch's own kernels and MKL (oneDNN sizes its blocks from the
                             CPU's caches and has no reproducible mode); ONEDNN_MAX_CPU_ISA
                             caps it at AVX2 as well, for anything that still reaches it
  ATEN_CPU_CAPABILITY=avx2   torch's own kernels: their AVX2 build on every CPU
  NPY_DISABLE_CPU_FEATURES   numpy's AVX512 kernels off: its AVX2 ones on every CPU

together with one CPU thread per process (the `threads: 1` default of each stage: a float
sum's order follows the thread count). It costs speed (docs/figures.md, "Portable
numerics"). Not covered: GPUs (CUDA's kernels), other builds or versions of torch, MKL and
numpy (their versions are in every stage's fingerprint), `threads` other than 1, and
torch.compile on a CPU (inductor writes code for the CPU it runs on).

The libraries read these settings once, when they load: `enter(mode)` must run before
numpy or torch is imported. The stages' `main`, the `hsa` command and the scripts call it
first; a process that has loaded them already is started again (exec) under the settings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

MODES = ("portable", "native")
PORTABLE_ENV = {
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy 2.4's names for its AVX512 groups
}
MARK = "HSA_NUMERICS"  # the mode a process was set up for; its children inherit it
LOADERS = ("numpy", "torch")  # modules that read the settings when they load


def environment(mode: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a process of `mode` runs with: `base` (os.environ) with the portable
    settings added, or, for native, with this module's own settings taken out (a native
    child of a portable process gets the libraries' defaults, not its parent's pins)."""
    if mode not in MODES:
        raise ValueError(f"numerics: expected one of {', '.join(MODES)}, got {mode!r}")
    env = dict(os.environ if base is None else base)
    for key, value in PORTABLE_ENV.items():
        if mode == "portable":
            env[key] = value
        elif env.get(key) == value:
            del env[key]
    env[MARK] = mode
    return env


def enter(mode: str) -> None:
    """Put this process under `mode`. Before numpy and torch load, that is setting its
    environment; after, the process is started again with it (same arguments, same pid)."""
    wanted = environment(mode)
    if wanted != dict(os.environ):
        if any(name in sys.modules for name in LOADERS):
            if os.environ.get(MARK) == mode:  # started again already and still not in place
                raise RuntimeError(f"numerics: could not put this process under '{mode}'")
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, sys.orig_argv, wanted)
        os.environ.clear()
        os.environ.update(wanted)
    if mode == "portable":
        import torch

        torch.backends.mkldnn.enabled = False


def state() -> dict:
    """The settings in force in this process, for the fingerprints of resumable work (a
    feature store or a checkpoint made under one mode is never continued under another)."""
    out: dict = {key: os.environ.get(key) for key in PORTABLE_ENV}
    if "torch" in sys.modules:
        out["onednn"] = bool(sys.modules["torch"].backends.mkldnn.enabled)
    return out
