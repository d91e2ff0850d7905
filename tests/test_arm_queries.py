"""act.arm_queries: each arm its own chunk_size action queries, each arm's action columns
read from the decoder outputs of its own queries; one arm (or the option off) leaves the
model as it was."""

from __future__ import annotations

import torch

from hsa_pipeline.config import ActConfig
from hsa_pipeline.model.act import ACTPolicy, ActShapes, arm_columns

STREAMS = ["top", "tactile"]
TWO_ARMS = [f"left.j{j}" for j in range(1, 7)] + ["left.gripper"] + [f"right.j{j}" for j in range(1, 7)] + ["right.gripper"]


def model(arm_queries: bool, columns: list[list[int]]) -> ACTPolicy:
    cfg = ActConfig(hidden_dim=16, dim_feedforward=32, heads=2, enc_layers=1, dec_layers=1, vae_enc_layers=1,
                    latent_dim=4, chunk_size=5, touch_map=False, dropout=0.0, arm_queries=arm_queries)
    torch.manual_seed(0)
    return ACTPolicy(cfg, ActShapes(14, 14, STREAMS, grid=4, token_dim=8, arm_columns=columns)).eval()


def test_the_columns_of_each_arm_come_from_the_rigs_column_names():
    assert arm_columns(TWO_ARMS) == [list(range(7)), list(range(7, 14))]
    # a column of no arm ('dim<i>') goes with the first arm; arms in order of their first column
    assert arm_columns(["b.j1", "dim1", "a.j1", "b.gripper"]) == [[0, 1, 3], [2]]
    assert arm_columns(["dim0", "dim1"]) == [[0, 1]]


@torch.no_grad()
def test_each_arms_columns_are_read_from_its_own_queries():
    """A second implementation: the decoder's outputs captured by a hook, each arm's
    columns put through the action head by hand from its own half of the queries."""
    m = model(True, arm_columns(TWO_ARMS))
    assert m.queries.shape == (2 * 5, 16)
    seen = {}
    m.decoder.register_forward_hook(lambda mod, args, out: seen.update(h=out))
    qpos, tokens = torch.randn(3, 14), {s: torch.randn(3, 4, 4, 8) for s in STREAMS}
    actions, _, _ = m(qpos, tokens)  # (3, 5, 14)
    h = seen["h"]  # (3, 10, 16): the left arm's 5 queries, then the right arm's
    left, right = m.action_out(h[:, :5]), m.action_out(h[:, 5:])
    expected = torch.cat([left[..., :7], right[..., 7:]], -1)
    torch.testing.assert_close(actions, expected, rtol=0, atol=0)
    assert not torch.allclose(left[..., 7:], right[..., 7:])  # the two sets of queries do differ


@torch.no_grad()
def test_one_arm_or_the_option_off_keeps_one_set_of_queries():
    qpos, tokens = torch.randn(2, 14), {s: torch.randn(2, 4, 4, 8) for s in STREAMS}
    off = model(False, arm_columns(TWO_ARMS))
    one_arm = model(True, [list(range(14))])
    assert off.queries.shape == one_arm.queries.shape == (5, 16)
    # same seed, same parameters: the same actions (the option changes nothing with one arm)
    torch.testing.assert_close(off(qpos, tokens)[0], one_arm(qpos, tokens)[0], rtol=0, atol=0)
