"""`hsa serve` against the real openpi client (`openpi-client` from PyPI), on a server
started in the test on a free loopback port: the wire format both ways, served actions equal
to the in-process policy's bit for bit, the touch world closed loop through the server,
malformed and unauthenticated clients, per-connection state, bounded messages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from conftest import REPO, TRAIN, tiny_pipeline_params
from hsa_pipeline.model.policy import Policy, TemporalEnsembler
from hsa_pipeline.serving.client import RemotePolicy
from hsa_pipeline.serving.server import PolicyServer, ServerThread, pack, policy_hash, unpack
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

        served, _, served_results = closed_loop(EvalConfig(**cfg), P.world, P.robot, P.sensors, P.cameras,
                                                trained.parent)
        local, _, local_results = closed_loop(EvalConfig(**{**cfg, "server": None}), P.world, P.robot, P.sensors,
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
            closed_loop(cfg, P.world, P.robot, P.sensors, P.cameras, other.parent)


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
    with ServerThread(PolicyServer(policy, str(trained)), max_message_mb=size / 2 / 2**20) as port:
        client = WebsocketClientPolicy("127.0.0.1", port)
        with pytest.raises(ConnectionClosed) as e:
            client.infer(obs)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009  # "message too big"
        small = {**obs, **{s: obs[s][:2, :2] for s in policy.streams}}  # small enough; wrong shape: an answer
        with pytest.raises(RuntimeError, match="expected a uint8 image"):
            WebsocketClientPolicy("127.0.0.1", port).infer(small)


def test_the_hsa_serve_command_binds_the_loopback_and_serves(trained, policy):
    """The real entry point: `hsa serve` in its own process, default host, a free port."""
    import re

    proc = subprocess.Popen([sys.executable, "-m", "hsa_pipeline.cli", "serve", "--policy", str(trained), "--port", "0",
                             "--control-hz", "10"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
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
