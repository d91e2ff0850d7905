"""Where and how torch runs: the device a `*.device` key names, and the CPU thread count
a `*.threads` key names.

Threads. On a CPU, torch runs an op on a team of `torch.get_num_threads()` OpenMP threads
that meet at a barrier after every op. The demo model's ops are small (tens of
microseconds), so when another process takes a core (a second training run, a test
suite), every op waits for a team member the scheduler has parked: measured on this
project's 2-core machine, the demo trainer fell from 6.6 to 1.4 steps/s with 2 threads
beside a second trainer, and kept 3.2 steps/s with 1 thread (benchmarks/bench_contention.py;
README, "CPU under contention"). Alone, 2 threads are 1.7x faster than 1. So `threads:
auto` does not fix a number: `ThreadTuner` watches how much CPU time OTHER processes
take and gives torch the cores they leave (all of them when the machine is free, fewer
when it is not), re-checking every couple of seconds. A number fixes the count. The
cores are those the process may use (`usable_cores`: affinity mask and cgroup quota),
not the host's.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from pathlib import Path

import torch

from ..errors import ConfigError, first_line


def pick_device(name: str, key: str = "device") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a device that exists, or ConfigError naming `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: '{name}' requested but CUDA is not available on this machine (use auto or cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: '{name}' requested but this machine has {torch.cuda.device_count()} GPU(s)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: expected auto, cpu, cuda or cuda:N, got {name!r}") from None


def threads_left(cores: int, others_busy: float) -> int:
    """How many threads to run when other processes keep `others_busy` cores busy (on
    average): the cores they leave, at least 1. A quarter of a core of background noise
    does not count."""
    return int(min(cores, max(1, cores - math.ceil(others_busy - 0.25))))


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: the CPU affinity mask (`taskset`, `docker run
    --cpuset-cpus`), capped by the cgroup CPU quota (`docker run --cpus 4`: cgroup v2
    cpu.max "400000 100000", or v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up.
    os.cpu_count() counts the host's cores and would oversubscribe a container."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    try:
        if (cgroup / "cpu.max").is_file():  # v2
            q, period = (cgroup / "cpu.max").read_text().split()[:2]
            quota = None if q == "max" else int(q) / int(period)
        elif (cgroup / "cpu" / "cpu.cfs_quota_us").is_file():  # v1
            q = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            quota = None if q <= 0 else q / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        quota = None  # unreadable: the affinity mask alone
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


class ThreadTuner:
    """`threads: auto` on a CPU: every `interval` seconds, measure the CPU time other
    processes used (system-wide busy time minus this process's) and set torch's thread
    count to the cores they leave. Call `update()` once per step; it is a clock read
    except when the interval is up. With a number, or on a GPU, it does nothing."""

    def __init__(self, setting: int | str, device: torch.device | None = None, interval: float = 2.0):
        self.active = setting == "auto" and (device is None or device.type == "cpu")
        self.cores = usable_cores()
        # in a CPU share smaller than the machine (container, taskset), the machine-wide load
        # is other tenants', not ours to yield to: use the share, do not watch
        self.watch = self.cores >= (os.cpu_count() or 1)
        self.interval = interval
        self.threads = self.cores if self.active else int(setting) if setting != "auto" else torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._mark = self._sample() if self.active else None

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        import psutil

        t = psutil.cpu_times()
        busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "steal", 0.0)
        mine = psutil.Process().cpu_times()
        return time.monotonic(), busy, mine.user + mine.system

    def update(self) -> int:
        if not self.active or not self.watch:
            return self.threads
        now = time.monotonic()
        if now - self._mark[0] < self.interval:
            return self.threads
        sample = self._sample()
        wall, busy, mine = (b - a for a, b in zip(self._mark, sample, strict=True))
        self._mark = sample
        others = max(0.0, (busy - mine) / max(wall, 1e-6))
        n = threads_left(self.cores, others)
        if n != self.threads:
            torch.set_num_threads(n)
            self.threads = n
        return n


def compile_mode(setting: bool | str, device: torch.device) -> str | None:
    """train.compile (or serve's --compile) -> the torch.compile mode, or None to run eager.
    auto: CUDA graphs on a GPU, where launching each small kernel from Python is what bounds
    a step; eager on a CPU, where compiling takes a minute and the kernels, not their
    launches, cost."""
    if setting == "auto":
        return "reduce-overhead" if device.type == "cuda" else None
    if setting is False:
        return None
    return "default" if setting is True else str(setting)


class CompiledOrEager:
    """An inference function, compiled (`torch.compile(fn, mode)`) where that works, else
    eager: the first call compiles; if that fails it prints one line with the reason and
    every call after runs `fn` itself. Tensor outputs are cloned, because CUDA graphs
    (mode reduce-overhead) hand back buffers that their next replay overwrites.

    Compiled calls run one at a time (a lock around the call and the clone), whichever
    threads make them: CUDA graph trees keep static input and output buffers, so a replay
    on one thread could overwrite another's output before it is cloned, and a robot would
    act on another robot's observation (issue #45; multithreaded use has open upstream
    reports). `hsa serve --workers N` still decodes, resizes and ensembles N at once. Eager
    calls are not serialised."""

    def __init__(self, fn, mode: str | None, what: str):
        self.eager, self.mode, self.what = fn, mode, what
        self.fn = torch.compile(fn, mode=mode) if mode else fn
        self.compiled_once = False
        self._one_at_a_time = threading.Lock()

    def __call__(self, *args):
        if self.fn is self.eager:
            return self.eager(*args)
        with self._one_at_a_time:
            if self.fn is self.eager:  # another thread's first call failed to compile meanwhile
                return self.eager(*args)
            try:
                out = self.fn(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure; an eager bug raises again below
                if self.compiled_once:
                    raise  # it compiled and ran before: this is no compiler failure
                print(f"{self.what}: torch.compile (mode {self.mode}) failed at its first call, running eager "
                      f"instead ({type(e).__name__}: {first_line(e)})", file=sys.stderr, flush=True)
                self.fn = self.eager
                return self.eager(*args)
            self.compiled_once = True
            return _cloned(out)  # before the lock lets the next replay overwrite the buffers


def _cloned(out):
    """A tensor, or tuples / lists / dicts of them (and of None), with every tensor copied."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_cloned(v) for v in out)
    if isinstance(out, dict):
        return {k: _cloned(v) for k, v in out.items()}
    return out
