"""`hsa serve` against the real openpi client (`openpi-client` from PyPI), on a server
started in the test on a free loopback port: the wire format both ways, served actions equal
to the in-process policy's bit for bit, the touch world closed loop through the server,
malformed and unauthenticated clients, per-connection state, bounded messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import torch
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from conftest import AS_THIS_PROCESS, REPO, TRAIN, needs_cpp_compiler, tiny_pipeline_params
from hsa_pipeline.model.policy import Policy, TemporalEnsembler
from hsa_pipeline.serving.client import RemotePolicy
from hsa_pipeline.serving.server import Limits, PolicyServer, ServerThread, policy_hash
from hsa_pipeline.serving.wire import pack, unpack
from hsa_pipeline.training.loop import run_train
from hsa_pipeline.world import TouchWorld

P = tiny_pipeline_params(["train.steps=6", "train.val_every=6", "eval.max_steps=8"])


@pytest.fixture(scope="module")
def trained(cached_dir, tmp_path_factory):
    """The tiny demo's caches and a policy trained on them for a few steps."""
    root = tmp_path_factory.mktemp("serve") / "work"
    shutil.copytree(cached_dir, root, symlinks=True)
    old = os.getcwd()
    os.chdir(root)
    try:
        run_train(P.act, P.hsa, P.train, "outputs/prepare", "outputs/geometry.zarr", "outputs/features.zarr", TRAIN)
    finally:
        os.chdir(old)
    return root / TRAIN / "policy"


@pytest.fixture(scope="module")
def policy(trained) -> Policy:
    return Policy.load(trained, device="cpu")


def observations(n: int, seed: int = 3) -> list[dict]:
    """What the robot side sends: the touch world's images and qpos over a few steps."""
    env = TouchWorld(P.world, P.robot, P.sensors, P.cameras, max_steps=50)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(env.home())
    return out


def request(policy: Policy, obs: dict) -> dict:
    return {**{s: obs[s] for s in policy.streams}, "qpos": obs["qpos"]}


def test_the_wire_format_is_openpis_both_ways():
    x = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.uint8(7), "c": [1, "x"],
         "img": np.zeros((5, 6, 3), np.uint8)}
    for decoded in (unpack(msgpack_numpy.packb(x)), msgpack_numpy.unpackb(pack(x))):
        assert decoded["a"].dtype == np.float32 and np.array_equal(decoded["a"], x["a"])
        assert decoded["b"] == 7 and decoded["c"] == [1, "x"] and decoded["img"].shape == (5, 6, 3)


def test_served_actions_are_the_in_process_actions_bit_for_bit(trained, policy):
    server = PolicyServer(policy, str(trained), ensemble_k=0.01, control_hz=10.0)
    with ServerThread(server) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        meta = client.get_server_metadata()
        assert meta["policy_sha256"] == policy_hash(trained) and meta["chunk_size"] == policy.chunk_size
        assert meta["streams"]["top"]["shape"] == [192, 256, 3] and meta["qpos_dim"] == 7 and meta["control_hz"] == 10.0
        ens = TemporalEnsembler(policy.chunk_size, 0.01)
        for obs in observations(4):
            served = client.infer(request(policy, obs))
            local = policy.predict_chunk(request(policy, obs), obs["qpos"])
            assert served["actions"].dtype == np.float64 and np.array_equal(served["actions"], local)
            assert np.array_equal(served["action"], ens.step(local))  # the server's temporal ensembling
        assert client.infer({"reset": True}) == {"reset": True}  # between episodes: a fresh ensembler
        first = client.infer(request(policy, observations(1)[0]))
        assert np.array_equal(first["action"], first["actions"][0])
        # JPEG bytes are decoded as the recordings are: the same pixels, the same actions
        from hsa_pipeline.data.episodes import decode_jpeg, encode_jpeg

        obs = observations(1)[0]
        jpeg = {s: encode_jpeg(obs[s], 90) for s in policy.streams}
        decoded = {s: decode_jpeg(np.frombuffer(jpeg[s], np.uint8), s) for s in policy.streams}
        got = client.infer({**jpeg, "qpos": obs["qpos"], "ensemble": False})["actions"]
        assert np.array_equal(got, policy.predict_chunk(decoded, obs["qpos"]))


def test_the_touch_world_closed_loop_through_the_server_matches_in_process(trained, policy, tmp_path):
    from hsa_pipeline.evaluation.evaluate import closed_loop
    from hsa_pipeline.evaluation.rollout import run_rollout

    server = PolicyServer(policy, str(trained), ensemble_k=0.01)
    with ServerThread(server) as port:
        uri = f"ws://127.0.0.1:{port}"
        env = TouchWorld(P.world, P.robot, P.sensors, P.cameras, max_steps=P.eval.max_steps)
        a = run_rollout(env, policy, seed=11, ensemble_k=0.01)
        b = run_rollout(env, RemotePolicy(uri), seed=11, ensemble_k=0.01)
        assert (a.success, a.failure, a.steps, a.phases_reached) == (b.success, b.failure, b.steps, b.phases_reached)
        assert a.steps > 1
        # the evaluate stage's option, and the CLI's
        cfg = {**P.eval.__dict__, "rollouts": 2, "server": uri}
        from hsa_pipeline.config import EvalConfig

        served, _, served_results = closed_loop(EvalConfig(**cfg), P.world, P.aloha, P.robot, P.sensors, P.cameras,
                                                trained.parent)
        local, _, local_results = closed_loop(EvalConfig(**{**cfg, "server": None}), P.world, P.aloha, P.robot, P.sensors,
                                              P.cameras, trained.parent)
        assert served["driven_by"] == uri and local["driven_by"] == "in-process"
        assert [(r.success, r.steps, r.failure) for r in served_results] == \
            [(r.success, r.steps, r.failure) for r in local_results]
        r = subprocess.run([sys.executable, "-m", "hsa_pipeline.cli", "rollout", "--server", uri, "--out",
                            str(tmp_path / "r.gif"), *[x for o in ["eval.max_steps=8", *TINY_WORLD] for x in ("--set", o)]],
                           cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "r.gif").stat().st_size > 0 and "rollout: scene 0" in r.stdout


TINY_WORLD = ["world.frames_per_touch=12", "world.max_joint_speed_deg=360"]


def test_a_served_policy_other_than_the_trained_one_is_refused_by_evaluate(trained, policy, tmp_path):
    from hsa_pipeline.config import EvalConfig
    from hsa_pipeline.errors import StoreError
    from hsa_pipeline.evaluation.evaluate import closed_loop

    other = tmp_path / "train" / "policy"
    shutil.copytree(trained, other)
    (other / "policy.json").write_text((other / "policy.json").read_text() + "\n")  # another file: another hash
    with ServerThread(PolicyServer(policy, str(trained))) as port:
        cfg = EvalConfig(**{**P.eval.__dict__, "rollouts": 1, "server": f"ws://127.0.0.1:{port}"})
        with pytest.raises(StoreError, match="serves policy .* not .*restart `hsa serve` on this policy"):
            closed_loop(cfg, P.world, P.aloha, P.robot, P.sensors, P.cameras, other.parent)


def test_malformed_observations_get_one_line_and_the_server_keeps_serving(trained, policy):
    obs = request(policy, observations(1)[0])
    bad = [
        ({k: v for k, v in obs.items() if k != "wrist"}, "stream 'wrist' missing"),
        ({**obs, "top": obs["top"][:100]}, "stream 'top': expected a uint8 image of shape (192, 256, 3)"),
        ({**obs, "top": obs["top"].astype(np.float32)}, "got float32"),
        ({**obs, "qpos": np.full(7, np.nan)}, "qpos: column 0 is not finite"),
        ({**obs, "qpos": obs["qpos"][:3]}, "qpos: expected 7 numbers"),
        ({**obs, "tactile": b"not an image"}, "bytes that do not decode as an image"),
        ([1, 2, 3], "an observation is a map"),
    ]
    with ServerThread(PolicyServer(policy, str(trained))) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        for message, expected in bad:
            with pytest.raises(RuntimeError, match="bad observation") as e:
                client.infer(message)
            assert expected in str(e.value), (expected, str(e.value))
        # hand-made messages: an object-dtype array (raw pointers if accepted), and no msgpack at all
        raw = msgpack.packb({"top": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}})
        for message, expected in ((raw, "dtype object are not accepted"), (b"\xc1\xc1", "not a msgpack message")):
            client._ws.send(message)
            answer = client._ws.recv()
            assert isinstance(answer, str) and expected in answer, answer
        # the same connection, and a new one, still get answers
        assert np.array_equal(client.infer(obs)["actions"], policy.predict_chunk(obs, obs["qpos"]))
        assert "actions" in WebsocketClientPolicy("127.0.0.1", port).infer(obs)


def test_an_api_key_refuses_clients_without_it(trained, policy):
    from websockets.exceptions import InvalidStatus

    obs = request(policy, observations(1)[0])
    with ServerThread(PolicyServer(policy, str(trained)), api_key="s3cret") as port:
        for key in (None, "wrong"):
            with pytest.raises(InvalidStatus, match="401"):
                WebsocketClientPolicy("127.0.0.1", port, api_key=key)
        assert "actions" in WebsocketClientPolicy("127.0.0.1", port, api_key="s3cret").infer(obs)


def test_each_connection_has_its_own_ensembler_and_leaves_nothing_behind(trained, policy):
    steps = [request(policy, o) for o in observations(3)]
    with ServerThread(PolicyServer(policy, str(trained), ensemble_k=0.01)) as port:
        a = WebsocketClientPolicy("127.0.0.1", port)
        for obs in steps:
            out_a = a.infer(obs)
        assert not np.array_equal(out_a["action"], out_a["actions"][0])  # a has history
        b = WebsocketClientPolicy("127.0.0.1", port)  # at the same time: its own, fresh
        out_b = b.infer(steps[-1])
        assert np.array_equal(out_b["action"], out_b["actions"][0])
        a._ws.close()  # leaves mid-episode
        c = WebsocketClientPolicy("127.0.0.1", port)
        out_c = c.infer(steps[-1])
        assert np.array_equal(out_c["action"], out_c["actions"][0])


def test_messages_over_the_bound_are_refused_and_the_server_goes_on(trained, policy):
    from websockets.exceptions import ConnectionClosed

    obs = request(policy, observations(1)[0])
    size = len(pack(obs))
    with ServerThread(PolicyServer(policy, str(trained)), limits=Limits(max_message_mb=size / 2 / 2**20)) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        with pytest.raises(ConnectionClosed) as e:
            client.infer(obs)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009  # "message too big"
        small = {**obs, **{s: obs[s][:2, :2] for s in policy.streams}}  # small enough; wrong shape: an answer
        with pytest.raises(RuntimeError, match="expected a uint8 image"):
            WebsocketClientPolicy("127.0.0.1", port).infer(small)


def test_the_default_bound_is_the_policys_largest_observation_and_refuses_from_the_header(trained, policy):
    """Without --max-message-mb the bound comes from the policy: every stream as a raw uint8
    array, twice, plus 1 MiB (hand-computed from policy.json's frame sizes). A valid raw
    observation is answered; a message over the bound closes its connection (1009)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    server = PolicyServer(policy, str(trained))
    mapping = json.loads((trained / "policy.json").read_text())["features"]["mapping"]
    raw = sum(m["orig_h"] * m["orig_w"] * 3 for m in mapping.values()) + 8 * server.qpos_dim
    assert server.max_message_mb == round(2 * raw / 2**20 + 1, 1)
    obs = request(policy, observations(1)[0])
    with ServerThread(server) as port:
        assert "actions" in WebsocketClientPolicy("127.0.0.1", port).infer(obs)
        with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
            ws.recv()
            ws.send(b"\0" * int((server.max_message_mb + 0.5) * 2**20))
            with pytest.raises(ConnectionClosed) as e:
                ws.recv(timeout=30)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009


def test_the_hsa_serve_command_binds_the_loopback_and_serves(trained, policy):
    """The real entry point: `hsa serve` in its own process, default host, a free port."""
    import re

    proc = subprocess.Popen([sys.executable, "-m", "hsa_pipeline.cli", "serve", "--policy", str(trained), "--port", "0",
                             "--control-hz", "10", *AS_THIS_PROCESS], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        while "ws://" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "hsa serve exited before listening"
        host, port = re.search(r"ws://([\d.]+):(\d+)", line).groups()
        assert host == "127.0.0.1" and f"sha256 {policy_hash(trained)[:12]}" in line
        obs = request(policy, observations(1)[0])
        got = WebsocketClientPolicy(host, int(port)).infer({**obs, "ensemble": False})["actions"]
        assert np.array_equal(got, policy.predict_chunk(obs, obs["qpos"]))
    finally:
        proc.terminate()
        proc.wait(30)


# --------------------------------------------------------------------------- an open network
def png_bytes(width: int, height: int) -> bytes:
    """A PNG of one flat colour: a few KB on the wire whatever size its header claims."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_image_of_another_size_is_refused_from_its_header_before_any_decode(trained, policy):
    from PIL import Image

    obs = request(policy, observations(1)[0])
    h, w = obs["top"].shape[:2]
    bomb = png_bytes(4000, 4000)  # 48 MB of pixels in a few KB
    assert len(bomb) < 200_000
    wider, right = png_bytes(w + 8, h), {**obs, "top": png_bytes(w, h)}
    decoded = []
    original, limit = Image.Image.load, Image.MAX_IMAGE_PIXELS
    Image.Image.load = lambda self, *a: decoded.append(self.size) or original(self, *a)  # who decodes pixels
    try:
        with ServerThread(PolicyServer(policy, str(trained))) as port:
            client = WebsocketClientPolicy("127.0.0.1", port)
            with pytest.raises(RuntimeError, match=f"expected an image of {w}x{h} pixels .* claim far more "
                                                   ".*16000000 pixels.*nothing was decoded"):
                client.infer({**obs, "top": bomb})  # PIL's limit, set from the recorded sizes, refuses the header
            with pytest.raises(RuntimeError, match=f"expected an image of {w}x{h} pixels .* the bytes hold "
                                                   f"{w + 8}x{h}; nothing was decoded"):
                client.infer({**obs, "top": wider})  # under PIL's limit: our header check
            assert decoded == []
            assert Image.MAX_IMAGE_PIXELS == max(a.shape[0] * a.shape[1] for a in obs.values() if a.ndim == 3)
            # the recorded size as PNG: decoded and answered
            assert client.infer(right)["actions"].shape == (policy.chunk_size, len(obs["qpos"]))
            assert (w, h) in decoded
        assert Image.MAX_IMAGE_PIXELS == limit  # PIL's limit is process-wide: a stopped server puts it back
    finally:
        Image.Image.load = original


def test_an_internal_error_answers_one_line_with_an_id_and_logs_the_traceback(trained, policy):
    class Broken(PolicyServer):
        def infer(self, session, obs):
            raise KeyError("a bug")

    logged: list[str] = []
    obs = request(policy, observations(1)[0])
    with ServerThread(Broken(policy, str(trained)), log=logged.append) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        with pytest.raises(RuntimeError) as e:
            client.infer(obs)
        answer = str(e.value).replace("Error in inference server:\n", "")
        assert "\n" not in answer.strip() and "Traceback" not in answer and "KeyError" not in answer, answer
        error_id = answer.split("internal error ")[1].split()[0]
        assert len(logged) == 1 and error_id in logged[0] and "Traceback" in logged[0] and "KeyError" in logged[0]
        with pytest.raises(RuntimeError, match="internal error"):  # the connection goes on
            client.infer(obs)


def test_a_client_that_leaves_before_its_answer_is_one_log_line(trained, policy):
    import time

    from websockets.sync.client import connect

    logged: list[str] = []
    obs = request(policy, observations(1)[0])
    with ServerThread(PolicyServer(policy, str(trained)), log=logged.append) as port:
        ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
        ws.recv()  # metadata
        ws.send(pack(obs))
        ws.socket.close()  # gone without a closing handshake, its answer on the way
        time.sleep(1.0)
        assert "actions" in WebsocketClientPolicy("127.0.0.1", port).infer(obs)  # the server serves on
    assert all("Traceback" not in line and "\n" not in line for line in logged), logged


def test_connections_over_the_cap_are_refused_at_the_handshake(trained, policy):
    from websockets.exceptions import InvalidStatus

    obs = request(policy, observations(1)[0])
    with ServerThread(PolicyServer(policy, str(trained)), limits=Limits(max_connections=2)) as port:
        a, b = WebsocketClientPolicy("127.0.0.1", port), WebsocketClientPolicy("127.0.0.1", port)
        with pytest.raises(InvalidStatus, match="503"):
            WebsocketClientPolicy("127.0.0.1", port)
        a._ws.close()
        for _ in range(50):  # the server sees the close shortly after
            try:
                c = WebsocketClientPolicy("127.0.0.1", port)
                break
            except InvalidStatus:
                import time
                time.sleep(0.05)
        assert "actions" in c.infer(obs) and "actions" in b.infer(obs)


def test_binding_beyond_the_loopback_needs_a_key_or_insecure():
    from hsa_pipeline.errors import UserError
    from hsa_pipeline.serving.access import check_bind, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("robot-pc")
    with pytest.raises(UserError, match="0.0.0.0 without an API key .* --insecure"):
        check_bind("0.0.0.0", None, insecure=False)
    check_bind("0.0.0.0", "key", insecure=False)
    check_bind("0.0.0.0", None, insecure=True)
    check_bind("127.0.0.1", None, insecure=False)
    # the command itself: one line, before the policy is even loaded
    run = subprocess.run([sys.executable, "-m", "hsa_pipeline.cli", "serve", "--policy", "/nonexistent", "--host",
                          "0.0.0.0"], cwd=REPO, capture_output=True, text=True, env={**os.environ, "HSA_API_KEY": ""})
    assert run.returncode != 0 and "without an API key" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def self_signed(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, made here (no network, no openssl binary)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_serves_wss_and_a_plain_client_gets_nothing(trained, policy, tmp_path):
    import ssl

    from websockets.exceptions import InvalidHandshake
    from websockets.sync.client import connect

    from hsa_pipeline.errors import UserError
    from hsa_pipeline.serving.access import tls_context

    cert, key = self_signed(tmp_path)
    obs = request(policy, observations(1)[0])
    with ServerThread(PolicyServer(policy, str(trained)), api_key="k", tls=tls_context(cert, key)) as port:
        trust = ssl.create_default_context(cafile=cert)
        with connect(f"wss://127.0.0.1:{port}", ssl=trust, additional_headers={"Authorization": "Api-Key k"},
                     compression=None, max_size=None) as ws:
            unpack(ws.recv())  # metadata
            ws.send(pack(obs))
            assert np.array_equal(unpack(ws.recv())["actions"],
                                  policy.predict_chunk(obs, obs["qpos"]))
        with pytest.raises((InvalidHandshake, OSError, EOFError)):  # plain ws:// to a TLS port: no handshake
            connect(f"ws://127.0.0.1:{port}", open_timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust this certificate
            connect(f"wss://127.0.0.1:{port}", ssl=ssl.create_default_context(), open_timeout=5)
    with pytest.raises(UserError, match="needs both"):
        tls_context(cert, None)
    with pytest.raises(UserError, match="not a PEM certificate"):
        tls_context(key, key)


def test_a_crowd_and_an_abusive_client_do_not_knock_the_server_over(trained, policy):
    """benchmarks/bench_serve_load.py at a size CI affords, against the real `hsa serve`
    process: 8 clients at 10 Hz, then the same beside a client sending 60 MB messages,
    messages over the limit and garbage. Every steady request is answered right; the abuse
    is answered or its connection closed; the server lives, its memory stays bounded and the
    steady clients' p99 at most doubles (plus a scheduling allowance for a loaded CI core)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_serve_load import run_load

    obs = request(policy, observations(1)[0])
    r = run_load(trained, obs, clients=8, hz=10, seconds=3, message_mb=60, stream=policy.streams[0])
    assert r["server_alive"] and r["errors"] == [], r["errors"][:3]
    assert r["crowd"]["n"] >= 8 * 10 and r["crowd_and_abuse"]["n"] >= 8 * 10  # nobody starved
    assert r["abuse"]["answered"] >= 3 and r["abuse"]["unexpected"] == 0, r["abuse"]
    assert any(k.startswith("closed") for k in r["abuse"]), r["abuse"]  # over the limit: closed
    assert r["rss_peak_mb"] - r["rss_before_mb"] < 512, r
    assert r["crowd_and_abuse"]["p99_ms"] < 2 * r["crowd"]["p99_ms"] + 100, r


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_answer_that_many_clients_at_once_each_exactly_as_alone(trained, policy, workers):
    """`--workers N`: N inferences at once (more cores for several robots), never more; each
    answer is computed on its own observation, so it is the in-process answer bit for bit."""
    import copy
    import threading
    import time

    running, most = [0], [0]
    lock = threading.Lock()
    slow = copy.copy(policy)

    def features(images):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)  # long enough that three clients asking together overlap
        with lock:
            running[0] -= 1
        return policy.features(images)

    slow.features = features
    obs = [request(policy, o) for o in observations(3)]
    answers: list = [None] * 3
    with ServerThread(PolicyServer(slow, str(trained), ensemble_k=None, workers=workers)) as port:
        clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in obs]
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, clients[i].infer(obs[i])))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert most[0] == workers
    for o, a in zip(obs, answers, strict=True):
        assert np.array_equal(a["actions"], policy.predict_chunk(o, o["qpos"]))
    with pytest.raises(Exception, match="at least 1"):
        PolicyServer(policy, str(trained), workers=0)


def test_warm_up_runs_once_alone_then_once_on_each_inference_thread_and_answers_stay_there(trained, policy):
    """`hsa serve` warms up before it listens: a first inference alone (a compile happens
    there), then one on each of the `workers` inference threads; every answer after runs on
    those same threads (a compiled policy's CUDA graphs are per thread)."""
    import copy
    import threading

    seen: list[str] = []
    spy = copy.copy(policy)

    def features(images):
        seen.append(threading.current_thread().name)
        return policy.features(images)

    spy.features = features
    server = PolicyServer(spy, str(trained), ensemble_k=None, workers=3)
    server.warm_up()
    assert len(seen) == 4 and len(set(seen[1:])) == 3 and set(seen) == set(seen[1:])
    assert all(name.startswith("inference") for name in seen)
    warmed, seen[:] = set(seen), []
    with ServerThread(server) as port:
        clients = [WebsocketClientPolicy("127.0.0.1", port) for _ in range(3)]
        for obs in observations(2):
            for c in clients:
                timing = c.infer(request(policy, obs))["server_timing"]
                assert set(timing) == {"wait_ms", "encode_ms", "act_ms"} and min(timing.values()) >= 0
    assert len(seen) == 6 and set(seen) <= warmed


# --------------------------------------------------------------------------- compiled inference (issue #30)
@pytest.mark.slow
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=needs_cpp_compiler), pytest.param("cuda", marks=(
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (scripts/gpu_check.sh runs it on GPU hosts)")))])
def test_a_compiled_policy_answers_as_the_eager_one(trained, device, capsys):
    """`Policy.compile`: the encoder's vision tower and the ACT forward compiled (inductor's
    C++ on a CPU, ~15-60 s; CUDA graphs on a GPU) give the eager actions within float sums
    (measured on this CPU: 6e-7 apart on actions up to 2), and both really ran compiled."""
    mode = "reduce-overhead" if device == "cuda" else "default"
    eager = Policy.load(trained, device=device)
    fast = Policy.load(trained, device=device).compile(mode)
    for obs in observations(3):
        want = eager.predict_chunk(request(eager, obs), obs["qpos"])
        for _ in range(2):  # a CUDA graph's replay overwrites its outputs: every answer must be its own
            got = fast.predict_chunk(request(fast, obs), obs["qpos"])
            np.testing.assert_allclose(got, want, atol=1e-4 if device == "cpu" else 3e-2, rtol=0)
    assert fast.encoder._tower.compiled_once and fast._act.compiled_once
    assert "failed at its first call" not in capsys.readouterr().err
    # issue #45: from several threads at once (hsa serve --workers), each answer is its own
    import threading

    many = observations(6, seed=11)
    want = [eager.predict_chunk(request(eager, o), o["qpos"]) for o in many]
    got: list = [None] * len(many)
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, fast.predict_chunk(request(fast, many[i]),
                                                                                         many[i]["qpos"])))
               for i in range(len(many))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4 if device == "cpu" else 3e-2, rtol=0)


def test_the_compiled_control_step_hands_back_the_chunk_alone(trained, policy, monkeypatch):
    """Issue #44: the compiled ACT forward handed back (chunk, latent, every stream's
    adapter output), and the clone that guards CUDA graphs' buffers copied all of it every
    control step. Now it hands back the chunk alone: what the compiled calls return is
    recorded (the compiler replaced by a plain wrapper), and the answers stay the eager ones."""
    from hsa_pipeline.pipeline import runtime

    handed_back: list = []
    real = runtime._cloned
    monkeypatch.setattr(runtime, "_cloned", lambda out: handed_back.append(out) or real(out))
    monkeypatch.setattr(runtime.torch, "compile", lambda fn, mode=None: (lambda *args: fn(*args)))
    fast = Policy.load(trained, device="cpu").compile("reduce-overhead")
    obs = observations(1)[0]
    got = fast.predict_chunk(request(fast, obs), obs["qpos"])
    np.testing.assert_array_equal(got, policy.predict_chunk(request(policy, obs), obs["qpos"]))
    assert not any(isinstance(o, dict) for o in handed_back)  # no adapter outputs (a dict of streams)
    assert any(isinstance(o, torch.Tensor) and tuple(o.shape) == (1, policy.chunk_size, len(obs["qpos"]))
               for o in handed_back)


def test_compiled_calls_from_many_threads_each_get_their_own_answer(monkeypatch):
    """Issue #45: a compiled function that, like a CUDA graph's replay, writes every answer
    into one static buffer, called from 8 threads at once with different inputs: each
    caller still gets the answer to its own input (the calls and their clones run one at
    a time). Without the serialisation, answers mix."""
    import threading
    import time

    from hsa_pipeline.pipeline import runtime

    static = torch.zeros(4)

    def replay(x):
        static.copy_(x * 2)
        time.sleep(0.02)  # where another thread's replay would overwrite it
        return static

    monkeypatch.setattr(runtime.torch, "compile", lambda fn, mode=None: replay)
    f = runtime.CompiledOrEager(lambda x: x * 2, "reduce-overhead", "test")
    answers: dict = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, f(torch.full((4,), float(i)))))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(torch.equal(answers[i], torch.full((4,), 2.0 * i)) for i in range(8))


@pytest.mark.slow
@needs_cpp_compiler
def test_hsa_serve_compile_compiles_before_listening_and_answers_as_eager(trained, policy):
    """The entry point: `hsa serve --compile default` compiles (and warms up) before it
    listens and answers what the eager policy does within float sums."""
    import re

    proc = subprocess.Popen([sys.executable, "-m", "hsa_pipeline.cli", "serve", "--policy", str(trained), "--port", "0",
                             "--compile", "default", "--no-ensemble", *AS_THIS_PROCESS], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or "ws://" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1] or proc.poll() is None, "hsa serve exited before listening: " + "".join(lines)
        assert any("compiling the encoder and ACT (torch.compile mode default)" in line for line in lines), lines
        port = int(re.search(r"ws://[\d.]+:(\d+)", lines[-1]).group(1))
        client = WebsocketClientPolicy("127.0.0.1", port)
        for obs in observations(2):
            got = client.infer(request(policy, obs))["actions"]
            np.testing.assert_allclose(got, policy.predict_chunk(request(policy, obs), obs["qpos"]), atol=1e-4, rtol=0)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "failed at its first call" not in "".join(lines) + out


def test_a_policy_compile_that_fails_says_why_and_answers_as_eager(trained, policy, monkeypatch, capsys):
    import hsa_pipeline.pipeline.runtime as runtime

    def failing_compile(fn, mode=None):
        def first_call(*args):
            raise RuntimeError("Cannot find a working triton installation.\nmore lines")
        return first_call

    monkeypatch.setattr(runtime.torch, "compile", failing_compile)
    fallback = Policy.load(trained, device="cpu").compile("reduce-overhead")
    capsys.readouterr()
    for obs in observations(2):  # eager after the failed attempt: the very same arithmetic
        assert np.array_equal(fallback.predict_chunk(request(policy, obs), obs["qpos"]),
                              policy.predict_chunk(request(policy, obs), obs["qpos"]))
    err = capsys.readouterr().err.splitlines()
    assert err == [f"{what}: torch.compile (mode reduce-overhead) failed at its first call, running eager instead "
                   f"(RuntimeError: Cannot find a working triton installation.)" for what in ("encoder", "policy (ACT)")]

    def fails_later(fn, mode=None):  # compiled and ran once: a later error is no compile failure, so it is raised
        calls = []

        def call(*args):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("a real error")
            return fn(*args)
        return call

    monkeypatch.setattr(runtime.torch, "compile", fails_later)
    twice = runtime.CompiledOrEager(lambda x: (x * 2, None), "default", "test")
    x = torch.ones(3)
    out, none = twice(x)
    assert torch.equal(out, 2 * x) and none is None
    with pytest.raises(RuntimeError, match="a real error"):
        twice(x)


def test_serve_refuses_an_unknown_compile_mode_in_one_line():
    run = subprocess.run([sys.executable, "-m", "hsa_pipeline.cli", "serve", "--policy", "/nonexistent",
                          "--compile", "fastest"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert ("--compile must be one of off, auto, default, reduce-overhead, max-autotune, got 'fastest'"
            in run.stderr + run.stdout)
