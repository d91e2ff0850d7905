"""Can an open network knock `hsa serve` over? Well-behaved clients at a control rate, alone
and then beside one client that sends 60 MB messages, messages over the limit and garbage:
their latency (p50, p99), every answer checked, the server's peak RSS (it runs as its own
process: the real `hsa serve` command on the loopback).

    python benchmarks/bench_serve_load.py [--clients 8] [--hz 50] [--seconds 10] [--policy DIR] [--workers 1]
                                          [--compile off] [--device auto]

Without --policy it exports the demo configuration with random weights (bench_serve.py's).
tests/test_serve.py runs `run_load` at a size CI affords.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from openpi_client.websocket_client_policy import WebsocketClientPolicy

REPO = Path(__file__).resolve().parents[1]


class Served:
    """`hsa serve` in its own process on a free loopback port:
    `with Served(dir) as (port, proc, limit_mb):`, limit_mb the largest message it accepts."""

    def __init__(self, policy_dir: Path, *args: str):
        self.cmd = [sys.executable, "-m", "hsa_pipeline.cli", "serve", "--policy", str(policy_dir), "--port", "0",
                    "--no-ensemble", *args]

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        lines = []
        while not any("messages up to" in line for line in lines):
            lines.append(self.proc.stdout.readline())
            if not lines[-1] and self.proc.poll() is not None:
                raise RuntimeError(f"hsa serve exited before listening: {self.proc.returncode}: {''.join(lines)}")
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()
        text = "".join(lines)
        port = int(re.search(r"ws://[\d.]+:(\d+)", text).group(1))
        return port, self.proc, float(re.search(r"messages up to ([\d.]+) MiB", text).group(1))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)


def steady_client(port: int, obs: dict, hz: float, seconds: float, out: list, errors: list) -> None:
    """A robot: one observation every 1/hz s, each answer checked; latencies in ms to `out`."""
    client = WebsocketClientPolicy("127.0.0.1", port)
    shape = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            actions = client.infer(obs)["actions"]
            shape = shape or actions.shape
            if actions.shape != shape or not np.isfinite(actions).all():
                errors.append(f"a wrong answer: {actions.shape}")
        except Exception as e:  # noqa: BLE001 - counted, the test reports them
            errors.append(f"{type(e).__name__}: {e}")
            return
        out.append(1e3 * (time.monotonic() - t))
        time.sleep(max(0.0, 1 / hz - (time.monotonic() - t)))
    client._ws.close()  # openpi's client has no close(); a robot that leaves frees its slot


def abusive_client(port: int, stream: str, message_mb: float, limit_mb: float, seconds: float, ready,
                   tallies) -> None:
    """Garbage of every kind, as fast as the server takes it: just under the server's limit,
    a non-msgpack blob, a valid message whose image is a flat array, a text frame (each must be
    answered with an error); then a message_mb message (60 MB: over the limit, which closes the
    connection: reconnect). Runs in its own process, so that the cost of building and masking
    its messages is not charged to the steady clients' clocks; sets `ready` once its messages
    are built and puts its tally on `tallies` at the end."""
    from websockets.sync.client import connect

    from hsa_pipeline.serving.wire import pack

    n = int(0.9 * limit_mb * 2**20)
    blob = b"\xc1" * n  # 0xc1: a byte msgpack never uses
    huge_image = pack({stream: np.zeros(n - 2**10, np.uint8), "qpos": np.zeros(3)})
    too_big = b"\0" * max(int(message_mb * 2**20), int(limit_mb * 2**20) + 2**20)
    tally = {"answered": 0, "unexpected": 0}
    ready.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None, open_timeout=10) as ws:
                ws.recv()
                for message in (blob, huge_image, "garbage text"):
                    ws.send(message)
                    tally["answered" if isinstance(ws.recv(timeout=30), str) else "unexpected"] += 1
                ws.send(too_big)
                ws.recv(timeout=30)
                tally["unexpected"] += 1
        except Exception as e:  # noqa: BLE001 - the over-limit message closes the connection
            key = f"closed: {type(e).__name__}" + (f" {e.response.status_code}" if hasattr(e, "response") else "")
            tally[key] = tally.get(key, 0) + 1
            time.sleep(0.05)
    tallies.put(tally)


def percentiles(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def crowd(port: int, server: psutil.Process, obs: dict, clients: int, hz: float, seconds: float, errors: list,
          abuse: tuple | None) -> tuple[list[float], dict, float]:
    """`clients` steady clients at once (and the abusive one, if given): their latencies, the
    abusive client's tally, the server's peak RSS while they ran."""
    loaded = [[] for _ in range(clients)]
    threads = [threading.Thread(target=steady_client, args=(port, obs, hz, seconds, loaded[i], errors))
               for i in range(clients)]
    tally: dict = {}
    peak = server.memory_info().rss
    if abuse is not None:
        mp = multiprocessing.get_context("spawn")
        ready, tallies = mp.Event(), mp.Queue()
        abuser = mp.Process(target=abusive_client, args=(port, *abuse, seconds, ready, tallies), daemon=True)
        abuser.start()
        if not ready.wait(120):
            raise RuntimeError("the abusive client did not start within 120 s")
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.memory_info().rss)
        time.sleep(0.05)
    if abuse is not None:
        tally = tallies.get(timeout=120)
        abuser.join(30)
    return [x for per in loaded for x in per], tally, peak / 2**20


def run_load(policy_dir: Path, obs: dict, clients: int, hz: float, seconds: float, message_mb: float,
             stream: str, serve_args: tuple[str, ...] = ()) -> dict:
    """Against one server: one client alone, then `clients` of them, then `clients` beside an
    abusive one. The crowd alone separates the server's capacity from the abuse's cost."""
    with Served(policy_dir, *serve_args) as (port, proc, limit_mb):
        server = psutil.Process(proc.pid)
        errors: list[str] = []
        alone, _, _ = crowd(port, server, obs, 1, hz, seconds, errors, None)
        rss_before = server.memory_info().rss / 2**20
        together, _, _ = crowd(port, server, obs, clients, hz, seconds, errors, None)
        abused, tally, peak = crowd(port, server, obs, clients, hz, seconds, errors, (stream, message_mb, limit_mb))
        alive = proc.poll() is None
    return {"alone": percentiles(alone), "crowd": percentiles(together), "crowd_and_abuse": percentiles(abused),
            "errors": errors, "abuse": tally, "rss_before_mb": rss_before, "rss_peak_mb": peak,
            "server_alive": alive, "clients": clients, "hz": hz, "seconds": seconds, "message_mb": message_mb,
            "limit_mb": limit_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--message-mb", type=float, default=60.0)
    ap.add_argument("--policy", type=Path, help="an exported policy (default: the demo configuration, random weights)")
    ap.add_argument("--workers", type=int, default=1, help="hsa serve --workers: inferences at once")
    ap.add_argument("--threads", type=int, default=1, help="hsa serve --threads: torch threads per inference")
    ap.add_argument("--compile", default="off", help="hsa serve --compile: off, auto, default, reduce-overhead, ...")
    ap.add_argument("--device", default="auto", help="hsa serve --device: auto, cpu, cuda")
    ap.add_argument("--json", help="also write the figures to this JSON file (scripts/gpu_check.sh's summary)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import CONFIGS, export

    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = args.policy or Path(tmp) / "policy"
        if args.policy is None:
            export(policy_dir, "demo", "cpu")
        sizes = CONFIGS["demo"]["sizes"]
        rng = np.random.default_rng(0)
        obs = {s: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for s, (h, w) in sizes.items()}
        obs["qpos"] = np.zeros(CONFIGS["demo"]["dim"])
        r = run_load(policy_dir, obs, args.clients, args.hz, args.seconds, args.message_mb, next(iter(sizes)),
                     ("--workers", str(args.workers), "--threads", str(args.threads), "--compile", args.compile,
                      "--device", args.device))
    a = r["alone"]
    for name, label in (("alone", "one client alone"), ("crowd", f"{args.clients} clients"),
                        ("crowd_and_abuse", f"{args.clients} clients + one abusive")):
        b = r[name]
        print(f"{label} at {args.hz:g} Hz: p50 {b['p50_ms']:.1f} ms, p99 {b['p99_ms']:.1f} ms ({b['n']} steps, "
              f"{b['n'] / args.seconds:.0f} answers/s); p99 / alone {b['p99_ms'] / a['p99_ms']:.2f}")
    print(f"abusive client: {r['abuse']}; errors of the others: {len(r['errors'])} {r['errors'][:3]}")
    print(f"server RSS {r['rss_before_mb']:.0f} MB before, peak {r['rss_peak_mb']:.0f} MB; alive: {r['server_alive']}")
    if args.json:
        Path(args.json).write_text(json.dumps({**r, "workers": args.workers, "threads": args.threads,
                                               "compile": args.compile, "device": args.device,
                                               "p99_over_alone": r["crowd_and_abuse"]["p99_ms"] / a["p99_ms"]}, indent=1))


if __name__ == "__main__":
    main()
