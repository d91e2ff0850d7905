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
127.0.0.1 unless told otherwise; with an API key (openpi's newer client sends
"Authorization: Api-Key <key>") connections without it are refused; messages are bounded.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import threading
import time
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import msgpack
import numpy as np
import torch

from ..data.stores import POLICY_FILES
from ..errors import UserError
from ..model.policy import Policy, TemporalEnsembler
from ..pipeline.hashing import sha256_named_files

CONTROL_KEYS = ("reset", "ensemble")  # observation keys that are requests, not inputs


class ObservationError(UserError):
    """An observation the policy cannot take; the message goes back to that client."""


# --------------------------------------------------------------------------- wire format
def _encode(obj):
    """msgpack hook: numpy arrays and scalars as openpi's msgpack_numpy writes them."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in "biuf":
        raise TypeError(f"cannot send an array of dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def _decode(obj: dict):
    """msgpack hook, the inverse of _encode. Only plain numeric dtypes: an object dtype
    would turn the sender's bytes into pointers."""
    if b"__ndarray__" in obj or b"__npgeneric__" in obj:
        dtype = np.dtype(obj[b"dtype"])
        if dtype.kind not in "biuf":
            raise ObservationError(f"arrays of dtype {dtype} are not accepted (numbers only)")
        if b"__npgeneric__" in obj:
            return dtype.type(obj[b"data"])
        shape = tuple(int(n) for n in obj[b"shape"])
        if len(obj[b"data"]) != dtype.itemsize * int(np.prod(shape)):
            raise ObservationError(f"an array of shape {shape} and dtype {dtype} does not fit its {len(obj[b'data'])} bytes")
        return np.frombuffer(obj[b"data"], dtype=dtype).reshape(shape)
    return obj


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes):
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except ObservationError:
        raise
    except Exception as e:  # msgpack's own errors: not a message of this protocol
        raise ObservationError(f"not a msgpack message ({type(e).__name__}: {e})") from None


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
    threads: int = 1  # torch CPU threads; set in the worker thread that infers (OpenMP's count is per thread)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one inference at a time

    def __post_init__(self):
        self.sizes = recorded_sizes(self.policy)
        self.qpos_dim = int(self.policy.meta["shapes"]["qpos_dim"])
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
                img = _decode_image(img, s)
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
        t0 = time.perf_counter()
        with self.lock:
            # every call: a worker thread starts with OpenMP's default team (all cores) while
            # torch.get_num_threads() still reports the main thread's count (measured)
            torch.set_num_threads(self.threads)
            tokens = self.policy.features(images)
            t1 = time.perf_counter()
            chunk = self.policy.predict_chunk(None, qpos, tokens)  # (k, Da) float64, recorded units
        t2 = time.perf_counter()
        out = {"actions": chunk, "server_timing": {"encode_ms": 1e3 * (t1 - t0), "act_ms": 1e3 * (t2 - t1)}}
        if session.ensembler is not None and obs.get("ensemble", True) is not False:
            out["action"] = session.ensembler.step(chunk)
        return out


def _decode_image(data: bytes, stream: str) -> np.ndarray:
    from PIL import Image

    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as e:  # PIL raises many kinds
        raise ObservationError(f"stream '{stream}': bytes that do not decode as an image ({e})") from None


# --------------------------------------------------------------------------- the websocket side
async def _handle(server: PolicyServer, ws, log) -> None:
    session = server.session()  # this connection's alone: gone when it closes
    await ws.send(pack(server.metadata))
    async for message in ws:
        if isinstance(message, str):
            await ws.send("hsa serve: send observations as binary msgpack messages (openpi-client does)")
            continue
        try:
            result = await asyncio.to_thread(server.infer, session, unpack(message))
        except ObservationError as e:
            await ws.send(f"hsa serve: bad observation: {e}")
            continue
        except Exception:  # a bug here: the client hears it, the server logs it and serves the others
            text = traceback.format_exc()
            log(f"serve: error while answering {ws.remote_address}:\n{text}")
            await ws.send(f"hsa serve: internal error (a bug in hsa-pipeline):\n{text}")
            continue
        await ws.send(pack(result))


def _check_key(api_key: str | None):
    """websockets' process_request hook: refuse the handshake without the API key."""
    if not api_key:
        return None
    expected = f"Api-Key {api_key}"

    def process_request(connection, request):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "hsa serve: missing or wrong API key\n")
        return None
    return process_request


async def run_server(server: PolicyServer, host: str, port: int, api_key: str | None, max_message_mb: float,
                     ready=None, stop: asyncio.Future | None = None, log=print) -> None:
    """Serve until `stop` resolves (forever without one). `ready(port)` is called once listening."""
    from websockets.asyncio.server import serve

    async def handler(ws):
        await _handle(server, ws, log)

    async with serve(handler, host, port, process_request=_check_key(api_key), compression=None,
                     max_size=int(max_message_mb * 2**20)) as ws_server:
        bound = ws_server.sockets[0].getsockname()[1]
        if ready is not None:
            ready(bound)
        await (stop if stop is not None else asyncio.get_running_loop().create_future())


class ServerThread:
    """A server on a background thread (tests, benchmarks): `with ServerThread(...) as port:`."""

    def __init__(self, server: PolicyServer, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 max_message_mb: float = 64.0):
        self.args = (server, host, port, api_key, max_message_mb)
        self.port: int | None = None
        self._ready = threading.Event()
        self._errors: list[BaseException] = []

    def _run(self) -> None:
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            await run_server(*self.args, ready=self._started, stop=self._stop, log=lambda m: None)
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
                 control_hz: float | None, max_message_mb: float, weights: str | None = None,
                 device: str = "auto", threads: int = 1) -> None:
    """`hsa serve`: load the exported policy and serve it until interrupted."""
    policy = Policy.load(policy_dir, weights=weights, device=device)
    server = PolicyServer(policy, str(policy_dir), ensemble_k, control_hz, threads)

    def ready(bound: int) -> None:
        m = server.metadata
        print(f"serve: {policy_dir} (sha256 {m['policy_sha256'][:12]}, streams {', '.join(m['streams'])}, "
              f"chunk {m['chunk_size']}, device {policy.device}) on ws://{host}:{bound}"
              + (" (API key required)" if api_key else "") + "; Ctrl-C stops", flush=True)

    try:
        asyncio.run(run_server(server, host, port, api_key, max_message_mb, ready=ready))
    except KeyboardInterrupt:
        print("serve: stopped")
