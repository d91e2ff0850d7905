"""One touch map per sensor: each tactile stream marks, with its own query and its own
mark, exactly the cameras that can see where IT goes (its arm's wrist camera and every
third-person camera); HSA trains each map with the same query the policy reads; a rig
the maps cannot serve is refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import bimanual_params
from hsa_pipeline.config import ActConfig
from hsa_pipeline.model.act import ACTPolicy, ActShapes

STREAMS = ["top", "left_wrist", "right_wrist", "tactile_left", "tactile_right"]
CAMERAS = {"tactile_left": ["left_wrist", "top"], "tactile_right": ["right_wrist", "top"]}


def bimanual_model(query: str = "per_sensor", map_tokens: bool = False) -> ACTPolicy:
    cfg = ActConfig(hidden_dim=16, dim_feedforward=32, heads=2, enc_layers=1, dec_layers=1, vae_enc_layers=1,
                    latent_dim=4, chunk_size=5, touch_map=True, touch_query=query, dropout=0.0,
                    touch_map_tokens=map_tokens)
    torch.manual_seed(0)
    shapes = ActShapes(14, 14, STREAMS, grid=4, token_dim=8, tactile=["tactile_left", "tactile_right"],
                       touch_cameras=CAMERAS)
    return ACTPolicy(cfg, shapes).eval()


def marks(model: ACTPolicy, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each camera's adapter outputs with the touch maps' marks added (what the transformer sees)."""
    adapted = model.stream_tokens(tokens)
    touch = model.touch_embeddings(adapted)
    return {s: model.marked(s, adapted[s], touch) for s in ("top", "left_wrist", "right_wrist")}


@torch.no_grad()
def test_each_pad_marks_only_the_cameras_that_see_where_it_goes():
    model = bimanual_model()
    tokens = {s: torch.randn(2, 4, 4, 8) for s in STREAMS}
    before = marks(model, tokens)
    after = marks(model, {**tokens, "tactile_left": torch.randn(2, 4, 4, 8)})  # only the left pad's touch changes
    assert not torch.allclose(after["left_wrist"], before["left_wrist"])
    assert not torch.allclose(after["top"], before["top"])
    torch.testing.assert_close(after["right_wrist"], before["right_wrist"], rtol=0, atol=0)  # not the other arm's


@torch.no_grad()
def test_the_mean_map_lets_one_pad_mark_the_other_arms_camera():
    """The map before per-sensor maps (act.touch_query: mean), kept for the comparison:
    the left pad's touch moves the marks in the RIGHT wrist camera."""
    model = bimanual_model("mean")
    tokens = {s: torch.randn(2, 4, 4, 8) for s in STREAMS}
    before = marks(model, tokens)
    after = marks(model, {**tokens, "tactile_left": torch.randn(2, 4, 4, 8)})
    assert not torch.allclose(after["right_wrist"], before["right_wrist"])


@torch.no_grad()
def test_a_cameras_marks_are_the_sum_of_its_sensors_maps_computed_by_hand():
    """Second implementation (numpy): the top camera gets, for each pad s,
    softmax_n(scale * q_s . k_n) * N * mark_s with q_s from s's own mean tactile token."""
    model = bimanual_model()
    tokens = {s: torch.randn(2, 4, 4, 8) for s in STREAMS}
    adapted = model.stream_tokens(tokens)
    got = marks(model, tokens)["top"] - adapted["top"]
    k = model.touch_key(adapted["top"]).numpy()  # (B, N, P)
    expected = np.zeros(got.shape)
    for i, sensor in enumerate(["tactile_left", "tactile_right"]):
        q = model.touch_query(adapted[sensor].mean(1)).numpy()  # (B, P)
        score = np.einsum("bp,bnp->bn", q, k) * np.exp(model.touch_scale.item())
        w = np.exp(score - score.max(1, keepdims=True))
        w = w / w.sum(1, keepdims=True) * k.shape[1]
        expected += w[..., None] * model.touch_emb[i].numpy()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_map_tokens_read_each_map_at_every_patch_token_computed_by_hand():
    """act.touch_map_tokens: one token per (map, camera it marks): a linear read of the
    map's softmax weights (times the token count) over every patch token (numpy)."""
    model = bimanual_model(map_tokens=True)
    assert model.map_token_pairs == [(0, "left_wrist"), (0, "top"), (1, "right_wrist"), (1, "top")]
    tokens = {s: torch.randn(2, 4, 4, 8) for s in STREAMS}
    adapted = model.stream_tokens(tokens)
    touch = model.touch_embeddings(adapted)
    got = model.map_tokens(adapted, touch)  # (B, 4, H)
    assert got.shape == (2, 4, 16)
    for j, (i, cam) in enumerate(model.map_token_pairs):
        q = model.touch_query(touch[i]).numpy()
        k = model.touch_key(adapted[cam]).numpy()
        score = np.einsum("bp,bnp->bn", q, k) * np.exp(model.touch_scale.item())
        w = np.exp(score - score.max(1, keepdims=True))
        w = w / w.sum(1, keepdims=True) * 16
        expected = w @ model.map_token_in.weight.numpy().T + model.map_token_in.bias.numpy() + model.map_token_emb[j].numpy()
        np.testing.assert_allclose(got[:, j].numpy(), expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_map_tokens_tell_apart_neighbours_that_pooling_merges():
    """Two maps peaked on neighbouring tokens of one 2 x 2 pooling window: the pooled
    marks are identical, the map tokens are not; and the transformer's input grows by
    exactly one token per (map, camera)."""
    model = bimanual_model(map_tokens=True)
    a, b = torch.zeros(1, 16), torch.zeros(1, 16)
    a[0, 0], b[0, 1] = 16.0, 16.0  # tokens (0, 0) and (0, 1): one pooling window
    pool = torch.nn.functional.avg_pool2d
    assert torch.equal(pool(a.view(1, 1, 4, 4), 2), pool(b.view(1, 1, 4, 4), 2))
    assert not torch.allclose(model.map_token_in(a), model.map_token_in(b))
    plain = bimanual_model()
    tokens = {s: torch.randn(1, 4, 4, 8) for s in STREAMS}
    seen = {}
    for name, m in (("plain", plain), ("map_tokens", model)):
        m.encoder.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, args[0].shape[1]))
        m(torch.zeros(1, 14), tokens)
    assert seen["map_tokens"] == seen["plain"] + 4


def test_map_tokens_without_a_touch_map_are_refused():
    from pathlib import Path

    from hsa_pipeline.config import load_params
    from hsa_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="act.touch_map_tokens: .*act.touch_map: true"):
        load_params(Path(__file__).parents[1] / "params.yaml", ["act.touch_map_tokens=true", "act.touch_map=false"])


def test_hsa_trains_each_map_with_the_query_the_policy_reads(tmp_path, monkeypatch):
    """On the bimanual rig with HSA on: each sensor's HSA query is the head of ITS mean
    tactile token, the same vector its touch map uses, and the HSA loss alone moves the
    heads the touch maps read (its gradient reaches both)."""
    from conftest import TINY_TRAIN, build_caches
    from hsa_pipeline.data.caches import Caches
    from hsa_pipeline.model import hsa as hsa_module
    from hsa_pipeline.training.loop import build

    root = build_caches(tmp_path, ["synth.episodes=2", "data.train_ratio=1.0"] + bimanual_overrides())
    monkeypatch.chdir(root)
    p = bimanual_params(TINY_TRAIN)
    caches = Caches("outputs/prepare", "outputs/geometry.zarr", "outputs/features.zarr", 1.0, "next_contact")
    module = build(p.act, p.hsa, 4, caches, torch.device("cpu"))
    assert module.policy.shapes.touch_cameras == CAMERAS
    seen = []
    real = hsa_module.HSALoss.forward

    def spy(self, x, step=0, diagnostics=True):
        seen.append(self.head_tactile(x.tactile.mean(1)).detach())
        return real(self, x, step, diagnostics)

    monkeypatch.setattr(hsa_module.HSALoss, "forward", spy)
    from hsa_pipeline.training.loop import TrainingData, init_distributed

    data = TrainingData(caches, p.act, p.train, init_distributed(p.train.device, "train.device"))
    batch = data.next_batch()
    module.eval()
    with torch.no_grad():
        module(batch, 0, use_latent=False, diagnostics=False)
        adapted = module.policy.stream_tokens(batch.tokens)
        touch = module.policy.touch_embeddings(adapted)
    assert len(seen) == 2  # one HSA term per sensor
    for i in range(2):
        torch.testing.assert_close(seen[i], module.policy.touch_query(touch[i]))
    module.train()
    module.zero_grad()
    adapted = module.policy.stream_tokens(batch.tokens)
    hsa_alone = sum(real(module.hsa, module.hsa_inputs(batch, adapted, g), 0, False)[0] for g in module.sensor_cameras)
    hsa_alone.backward()
    for head in (module.policy.touch_query, module.policy.touch_key):  # what touch_weights reads
        grads = [w.grad for w in head.parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def bimanual_overrides() -> list[str]:
    from conftest import BIMANUAL

    return BIMANUAL


def test_a_sensor_no_camera_can_see_is_refused(tmp_path, monkeypatch):
    from conftest import TINY_TRAIN, build_caches
    from hsa_pipeline.data.caches import Caches
    from hsa_pipeline.errors import ConfigError
    from hsa_pipeline.training.loop import build

    # no third-person camera, and the right arm's wrist camera moved to the left arm
    rig = bimanual_overrides() + ["data.cameras={left_wrist: wrist, right_wrist: wrist}",
                                  "cameras.right_wrist.mount=left", "synth.episodes=2", "data.train_ratio=1.0"]
    root = build_caches(tmp_path, rig)
    monkeypatch.chdir(root)
    p = bimanual_params(TINY_TRAIN + rig[len(bimanual_overrides()):] + ["hsa.enabled=false"])
    caches = Caches("outputs/prepare", "outputs/geometry.zarr", "outputs/features.zarr", 1.0)
    with pytest.raises(ConfigError, match="act.touch_map: no camera can see where tactile sensor 'tactile_right' goes"):
        build(p.act, p.hsa, 4, caches, torch.device("cpu"))
