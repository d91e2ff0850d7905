"""`hsa serve`: an exported policy behind openpi's websocket policy protocol, so robot code
that already drives openpi policies (`openpi_client.WebsocketClientPolicy`) drives this one.

The protocol (openpi's `serve_policy.py` / `openpi-client`): on connect the server sends
its metadata; then each binary message is an observation and each answer the policy's
output, both msgpack with numpy arrays as openpi's msgpack_numpy writes them ({"__ndarray__":
True, "data", "dtype", "shape"}). A text message from the server is an error for that
observation (the client raises it); the connection stays open.

Observation (a dict): one (H, W, 3) uint8 RGB image per stream the policy reads, at the size
it was recorded in (metadata "streams"), or that image's JPEG/PNG bytes (decoded here as
the recordings were); "qpos": the joint state in the recorded units. Optional: "reset":
true clears this connection's temporal ensembler (send it between episodes: openpi-client's
own reset() sends nothing); "ensemble": false answers without stepping the ensembler (a
what-if query). Answer: "actions" (chunk, action_dim) float64 in the recorded units, "action"
(action_dim,) the temporally ensembled action to execute now (when the server ensembles),
"server_timing" in ms. The preprocessing is the training's, exactly: `Policy` (the same
encoder code as the feature cache); tests compare served and in-process actions bit for bit.

Each connection has its own ensembler, so clients never share state and one that leaves
mid-episode leaves nothing behind. A malformed observation (a missing stream, a wrong shape
or dtype, NaN in qpos) gets a one-line error and the server keeps serving. It binds
127.0.0.1 unless told otherwise and refuses to bind beyond the loopback without an API
key (openpi's newer client sends "Authorization: Api-Key <key>") unless told it is on
purpose; TLS (wss://) from a certificate and key file.

Built for an open network (`Limits`): messages are bounded in size; unpacking, image
decoding and inference run in worker threads, never on the event loop, so one large message
stalls only its own connection; an image's size is read from its header and checked before
any pixel is decoded (PIL's pixel limit is set from the largest recorded frame too); the
number of connections is capped (the next one is refused at the handshake, HTTP 503) and
each connection queues a bounded number of unread messages (then the socket's back-pressure
holds the sender); a bug answers with one line and an id, the traceback goes to the log.
`workers` inferences run at once (`--workers`, default 1), each on its own observation and
always on the same `workers` threads, each warmed up before the server listens: no batching
across clients, so an answer never depends on who else asked. `--compile`
compiles the encoder's vision tower and the ACT forward (auto: CUDA graphs on a GPU) on an
empty observation before listening; compiled answers equal eager ones within float sums,
not bit for bit (tested on a CPU; off by default until measured on a GPU).

The wire format and the checks of what arrives are in wire.py; who may connect (API key,
connection cap, bind address, TLS) in access.py.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.stores import POLICY_FILES
from ..errors import UserError
from ..model.policy import Policy, TemporalEnsembler
from ..pipeline.hashing import sha256_named_files
from ..pipeline.runtime import compile_mode
from .access import admit, check_bind, is_loopback, tls_context
from .wire import ObservationError, decode_image, pack, pixel_limit, unpack

CONTROL_KEYS = ("reset", "ensemble")  # observation keys that are requests, not inputs
COMPILE_CHOICES = ("off", "auto", "default", "reduce-overhead", "max-autotune")  # hsa serve --compile


@dataclass(frozen=True)
class Limits:
    """What one server accepts, so that no client can take it over."""

    max_message_mb: float | None = None  # a larger message closes its connection (websocket close 1009), from
    # its header, before its payload is read; None: PolicyServer.max_message_mb, from the policy's own frame sizes
    max_connections: int = 16  # the next handshake gets HTTP 503
    max_queue: int = 2  # unread messages buffered per connection; then the TCP window holds the sender


# --------------------------------------------------------------------------- the policy side
def policy_hash(directory: str | Path) -> str:
    """sha256 over the exported policy's files (stores.POLICY_FILES): which policy answers."""
    return sha256_named_files(directory, POLICY_FILES)


def recorded_sizes(policy: Policy) -> dict[str, tuple[int, int]]:
    """stream -> (height, width) of the frames the policy was trained on."""
    mapping = policy.meta["features"]["mapping"]
    return {s: (int(mapping[s]["orig_h"]), int(mapping[s]["orig_w"])) for s in policy.streams}


@dataclass
class Session:
    """One connection's state: its own temporal ensembler."""

    ensembler: TemporalEnsembler | None


@dataclass
class PolicyServer:
    """The policy and what every connection shares; `infer` is the whole per-message work."""

    policy: Policy
    policy_dir: str
    ensemble_k: float | None = 0.01  # None: no server-side ensembling
    control_hz: float | None = None
    threads: int = 1  # torch CPU threads per inference; set in the worker thread that infers (OpenMP's count is per thread)
    workers: int = 1  # inferences at once: each client's answer is computed alone (no batching), so it is the
    # same bit for bit whatever else runs; more workers use more cores when several robots ask at once

    def __post_init__(self):
        if self.workers < 1:
            raise UserError(f"serve: --workers must be at least 1, got {self.workers}")
        # The same `workers` threads run every inference, never more at once: a thread's
        # OpenMP team and, with --compile on a GPU, its CUDA graphs are set up once (warm_up),
        # not again in whichever of asyncio's threads the next message lands.
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="inference")
        self.sizes = recorded_sizes(self.policy)
        self.qpos_dim = int(self.policy.meta["shapes"]["qpos_dim"])
        # The largest valid observation is every stream as a raw uint8 array: twice that plus
        # 1 MiB of slack is the default bound. A message larger than any observation can be is
        # refused from its header; reading 60 MB of garbage would cost every client (measured).
        raw = sum(h * w * 3 for h, w in self.sizes.values()) + 8 * self.qpos_dim
        self.max_message_mb = round(2 * raw / 2**20 + 1.0, 1)
        meta = self.policy.meta
        self.metadata = {
            "server": "hsa-pipeline", "protocol": "openpi-websocket-v1",
            "streams": {s: {"shape": [h, w, 3], "dtype": "uint8", "role": meta["features"]["streams"][s]}
                        for s, (h, w) in self.sizes.items()},
            "qpos_dim": self.qpos_dim, "action_dim": int(meta["shapes"]["action_dim"]),
            "chunk_size": self.policy.chunk_size, "column_names": meta["column_names"],
            "control_hz": self.control_hz, "ensemble_k": self.ensemble_k,
            "policy_sha256": policy_hash(self.policy_dir),
            "params": {"act": meta["act"], "hsa": meta["hsa"], "features": {k: v for k, v in meta["features"].items()
                                                                             if k != "mapping"}},
        }

    def warm_up(self) -> None:
        """Inferences of an all-black observation of the recorded sizes, answers unused: one
        (a compile happens there, alone), then one on each inference thread at once (a
        barrier keeps each on its own thread), so no robot pays a first call's costs."""
        images = {s: np.zeros((h, w, 3), np.uint8) for s, (h, w) in self.sizes.items()}
        qpos = np.zeros(self.qpos_dim)
        self.pool.submit(self._infer_now, images, qpos).result()
        meet = threading.Barrier(self.workers)

        def on_its_own_thread():
            meet.wait()
            self._infer_now(images, qpos)
        for done in [self.pool.submit(on_its_own_thread) for _ in range(self.workers)]:
            done.result()

    def session(self) -> Session:
        ens = TemporalEnsembler(self.policy.chunk_size, self.ensemble_k) if self.ensemble_k is not None else None
        return Session(ens)

    def check(self, obs) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """An observation -> (images, qpos), or ObservationError naming what is wrong."""
        if not isinstance(obs, dict):
            raise ObservationError(f"an observation is a map of stream names and qpos, got {type(obs).__name__}")
        images = {}
        for s, (h, w) in self.sizes.items():
            if s not in obs:
                raise ObservationError(f"stream '{s}' missing; the policy reads {', '.join(self.sizes)} and qpos")
            img = obs[s]
            if isinstance(img, bytes):
                img = decode_image(img, s, (h, w))
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (h, w, 3):
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ObservationError(f"stream '{s}': expected a uint8 image of shape ({h}, {w}, 3) (the recorded "
                                       f"size) or its JPEG/PNG bytes, got {got}")
            images[s] = img
        if "qpos" not in obs:
            raise ObservationError("qpos missing")
        try:
            qpos = None if isinstance(obs["qpos"], (str, bytes, dict)) else np.asarray(obs["qpos"], dtype=np.float64)
        except (TypeError, ValueError):
            qpos = None
        if qpos is None or qpos.shape != (self.qpos_dim,):
            raise ObservationError(f"qpos: expected {self.qpos_dim} numbers, got {getattr(qpos, 'shape', obs['qpos'])}")
        if not np.isfinite(qpos).all():
            raise ObservationError(f"qpos: column {int(np.argmax(~np.isfinite(qpos)))} is not finite ({qpos.tolist()})")
        return images, qpos

    def infer(self, session: Session, obs) -> dict:
        if isinstance(obs, dict) and obs.get("reset") is True:
            session.ensembler = self.session().ensembler
            if not set(obs) - set(CONTROL_KEYS):
                return {"reset": True}
        images, qpos = self.check(obs)
        chunk, timing = self.pool.submit(self._infer_now, images, qpos, time.perf_counter()).result()
        out = {"actions": chunk, "server_timing": timing}
        if session.ensembler is not None and obs.get("ensemble", True) is not False:
            out["action"] = session.ensembler.step(chunk)
        return out

    def _infer_now(self, images: dict[str, np.ndarray], qpos: np.ndarray, asked: float | None = None):
        """On an inference thread: (chunk (k, Da) float64 in the recorded units, timings in ms)."""
        t0 = time.perf_counter()
        # every call: a thread starts with OpenMP's default team (all cores) while
        # torch.get_num_threads() still reports the main thread's count (measured)
        torch.set_num_threads(self.threads)
        tokens = self.policy.features(images)
        t1 = time.perf_counter()
        chunk = self.policy.predict_chunk(None, qpos, tokens)
        t2 = time.perf_counter()
        return chunk, {"wait_ms": 1e3 * (t0 - (asked or t0)), "encode_ms": 1e3 * (t1 - t0), "act_ms": 1e3 * (t2 - t1)}


# --------------------------------------------------------------------------- the websocket side
def answer(server: PolicyServer, session: Session, message: bytes) -> bytes:
    """One binary message -> the packed answer: unpack, check, decode, infer, pack. Runs in a
    worker thread, so a large message never blocks the event loop's other connections."""
    return pack(server.infer(session, unpack(message)))


async def _handle(server: PolicyServer, ws, log) -> None:
    from websockets.exceptions import ConnectionClosed

    session = server.session()  # this connection's alone: gone when it closes
    try:
        await ws.send(pack(server.metadata))
        async for message in ws:
            if isinstance(message, str):
                await ws.send("hsa serve: send observations as binary msgpack messages (openpi-client does)")
                continue
            try:
                reply = await asyncio.to_thread(answer, server, session, message)
            except ObservationError as e:
                reply = f"hsa serve: bad observation: {e}"
            except Exception:  # a bug: the log gets the traceback, the client one line to quote
                error_id = uuid.uuid4().hex[:12]
                log(f"serve: internal error {error_id} while answering {ws.remote_address}:\n{traceback.format_exc()}")
                reply = f"hsa serve: internal error {error_id} (a bug in hsa-pipeline; the server's log has it)"
            await ws.send(reply)
    except ConnectionClosed as e:  # the client left or sent too much: one line, not a traceback
        if e.rcvd is None or e.rcvd.code not in (1000, 1001):
            log(f"serve: connection {ws.remote_address} closed ({e})")


def message_mb(server: PolicyServer, limits: Limits) -> float:
    """The largest message accepted, MiB: the configured one, else the policy's own bound."""
    return limits.max_message_mb if limits.max_message_mb is not None else server.max_message_mb


async def run_server(server: PolicyServer, host: str, port: int, api_key: str | None, limits: Limits = Limits(),
                     ready=None, stop: asyncio.Future | None = None, log=print,
                     tls: ssl.SSLContext | None = None) -> None:
    """Serve until `stop` resolves (forever without one). `ready(port)` is called once listening."""
    from websockets.asyncio.server import serve

    open_connections: set = set()

    async def handler(ws):
        open_connections.add(ws)
        try:
            await _handle(server, ws, log)
        finally:
            open_connections.discard(ws)

    with pixel_limit(server.sizes):
        async with serve(handler, host, port, process_request=admit(api_key, open_connections,
                                                                     limits.max_connections),
                         compression=None, max_size=int(message_mb(server, limits) * 2**20),
                         max_queue=limits.max_queue, ssl=tls) as ws_server:
            bound = ws_server.sockets[0].getsockname()[1]
            if ready is not None:
                ready(bound)
            await (stop if stop is not None else asyncio.get_running_loop().create_future())


class ServerThread:
    """A server on a background thread (tests, benchmarks): `with ServerThread(...) as port:`."""

    def __init__(self, server: PolicyServer, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 limits: Limits = Limits(), tls: ssl.SSLContext | None = None, log=lambda m: None):
        self.args = (server, host, port, api_key, limits)
        self.tls, self.log = tls, log
        self.port: int | None = None
        self._ready = threading.Event()
        self._errors: list[BaseException] = []

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            await run_server(*self.args, ready=self._started, stop=self._stop, log=self.log, tls=self.tls)
        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported to the caller of __enter__
            self._errors.append(e)
            self._ready.set()

    def _started(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def __enter__(self) -> int:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._errors or self.port is None:
            raise RuntimeError(f"the policy server did not start: {self._errors}")
        return self.port

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(lambda: self._stop.done() or self._stop.set_result(None))
        self._thread.join(10)


def serve_policy(policy_dir: Path, host: str, port: int, api_key: str | None, ensemble_k: float | None,
                 control_hz: float | None, limits: Limits = Limits(), weights: str | None = None,
                 device: str = "auto", threads: int = 1, insecure: bool = False,
                 tls_cert: Path | None = None, tls_key: Path | None = None, workers: int = 1,
                 compile: str = "off") -> None:
    """`hsa serve`: load the exported policy and serve it until interrupted."""
    check_bind(host, api_key, insecure)
    if compile not in COMPILE_CHOICES:
        raise UserError(f"serve: --compile must be one of {', '.join(COMPILE_CHOICES)}, got '{compile}'")
    tls = tls_context(tls_cert, tls_key)
    policy = Policy.load(policy_dir, weights=weights, device=device)
    mode = None if compile == "off" else compile_mode(compile, policy.device)
    if mode:
        print(f"serve: compiling the encoder and ACT (torch.compile mode {mode}) on a first, empty observation; "
              f"this takes a while", flush=True)
    policy.compile(mode)
    server = PolicyServer(policy, str(policy_dir), ensemble_k, control_hz, threads, workers)
    server.warm_up()  # the first inference's one-off costs (compiling, allocators) are paid before any robot asks

    def ready(bound: int) -> None:
        m = server.metadata
        print(f"serve: {policy_dir} (sha256 {m['policy_sha256'][:12]}, streams {', '.join(m['streams'])}, "
              f"chunk {m['chunk_size']}, device {policy.device}) on {'wss' if tls else 'ws'}://{host}:{bound}"
              + (" (API key required)" if api_key else "") + "; Ctrl-C stops", flush=True)
        print(f"serve: messages up to {message_mb(server, limits)} MiB, {limits.max_connections} connections at once, "
              f"{server.workers} inference(s) at once x {server.threads} thread(s)", flush=True)
        if not is_loopback(host) and not api_key:
            print(f"serve: WARNING: no API key on {host}: anyone on this network can query the policy", flush=True)
        if api_key and not tls and not is_loopback(host):
            print("serve: note: the API key travels in clear over ws://; use --tls-cert/--tls-key or a TLS proxy",
                  flush=True)

    try:
        asyncio.run(run_server(server, host, port, api_key, limits, ready=ready, tls=tls))
    except KeyboardInterrupt:
        print("serve: stopped")
