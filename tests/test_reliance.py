"""Does the policy act on touch? The offline touch-reliance measure against hand-computed
cases and a model whose dependence on touch is known by construction, and the touch
world's decision check against the scripted expert (which never reads touch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import FEATURES, GEOMETRY, PREPARE, make_params, tiny_pipeline_params
from hsa_pipeline.data.caches import Caches
from hsa_pipeline.data.codec import ActionCodec
from hsa_pipeline.evaluation.reliance import PHASES, donor_rows, frame_phases, reading, touch_reliance


class _FakeManifest:
    def __init__(self, lengths):
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.n_frames = int(self.offsets[-1])


class _FakeCaches:
    """Just what frame_phases and donor_rows read: episode bounds and contact flags."""

    def __init__(self, lengths, contact):
        self.manifest = _FakeManifest(lengths)
        self.contact = {"tactile": np.asarray(contact, bool)}

    def episode_of(self, row):
        return int(np.searchsorted(self.manifest.offsets, row, side="right") - 1)


def test_phases_follow_the_contact_flags_per_episode():
    # episode 0: 0 0 1 1 0 0; episode 1: 1 0 0 (a new episode starts "before contact")
    c = _FakeCaches([6, 3], [0, 0, 1, 1, 0, 0, 1, 0, 0])
    got = frame_phases(c, np.arange(9))
    np.testing.assert_array_equal(got, [0, 0, 1, 1, 2, 2, 1, 2, 2])
    assert PHASES[got[4]] == "after contact"


def test_donors_are_the_same_fraction_of_the_next_episode():
    c = _FakeCaches([5, 9, 5], np.zeros(19))
    rows = np.array([0, 2, 4, 5, 9, 13, 14, 18])
    # ep0 (len 5) -> ep1 (len 9): fraction t/4 -> round(t/4 * 8); ep1 -> ep2: round(t/8 * 4); ep2 -> ep0
    np.testing.assert_array_equal(donor_rows(c, rows), [5 + 0, 5 + 4, 5 + 8, 14 + 0, 14 + 2, 14 + 4, 0, 4])


def test_reading_thresholds():
    assert reading(0.05) == "this policy's actions do not depend on touch"
    assert reading(0.3).endswith("depend a little on touch") and reading(2.0) == "this policy's actions depend on touch"
    assert reading(float("nan")) == "no frames"


class _LinearInStreams(torch.nn.Module):
    """A 'policy' whose chunk is a fixed linear map of each stream's mean token: its
    change under any swap is known in closed form (numpy below)."""

    def __init__(self, streams, width, k, d, gain):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = {s: torch.randn(width, k * d, generator=g) * gain[s] for s in streams}
        self.k, self.d = k, d

    def forward(self, qpos, tokens):
        out = sum(tokens[s].mean((1, 2)) @ w for s, w in self.w.items())
        return out.reshape(-1, self.k, self.d), None, None


def test_touch_reliance_equals_the_closed_form_of_a_known_model(work_dir):
    caches = Caches(PREPARE, GEOMETRY, FEATURES, 1.0)
    rows = caches.rows("val")
    k, d = 3, caches.action_raw.shape[1]
    codec = ActionCodec.from_stats(caches.stats, False)
    valid = np.ones((len(rows), k), bool)
    blind = _LinearInStreams(list(caches.streams), caches.width, k, d, {"top": 1.0, "wrist": 1.0, "tactile": 0.0})
    r = touch_reliance(blind, caches, rows, codec, valid, lambda x: x, "cpu")
    assert r["all"]["tactile_swap"] == 0.0 and r["all"]["tactile_blank"] == 0.0
    assert r["all"]["reading"] == "this policy's actions do not depend on touch"

    model = _LinearInStreams(list(caches.streams), caches.width, k, d, {"top": 1.0, "wrist": 0.5, "tactile": 2.0})
    r = touch_reliance(model, caches, rows, codec, valid, lambda x: x, "cpu")
    donors = donor_rows(caches, rows)

    def mean_tok(s, rr):
        return caches.tokens[s][rr].astype(np.float32).mean((1, 2))

    for stream, key in (("tactile", "tactile_swap"), ("top", "top_swap"), ("wrist", "wrist_swap")):
        w = model.w[stream].numpy()
        change = np.abs((mean_tok(stream, donors) - mean_tok(stream, rows)) @ w) * np.tile(codec.std, k)
        assert r["all"][key] == pytest.approx(change.mean(), rel=1e-4), key
    blank = np.abs(mean_tok("tactile", rows) @ model.w["tactile"].numpy()) * np.tile(codec.std, k)
    assert r["all"]["tactile_blank"] == pytest.approx(blank.mean(), rel=1e-4)
    assert r["all"]["reliance"] == pytest.approx(r["all"]["tactile_swap"] / max(r["all"]["top_swap"],
                                                                                 r["all"]["wrist_swap"]))
    assert sum(r[p]["frames"] for p in PHASES) == len(rows)


class _ExpertAsPolicy:
    """The scripted expert's plan served as action chunks: right by construction, and
    blind to touch (it plans from the world's truth), so it must score decision accuracy
    1 and follows-touch 0."""

    def __init__(self, env, k):
        from hsa_pipeline.world.expert import plan

        self.env, self.k, self.plan, self.i = env, k, plan(env), 0

    def predict_chunk(self, images, qpos, tokens=None):
        t = min(self.env.t + 1, len(self.plan) - 1)
        return self.plan[np.minimum(np.arange(t, t + self.k), len(self.plan) - 1)]


@pytest.mark.parametrize("order", ["random", "by_class"])
def test_decision_check_scores_the_expert_right_and_blind_to_touch(order):
    from hsa_pipeline.evaluation.rollout import decision_check
    from hsa_pipeline.world import TouchWorld

    p = make_params([f"world.candidate_order={order}"])
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=200)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        policy = _ExpertAsPolicy(env, k=20)
        checked = None
        while checked is None and env.t < 60:
            chunk = policy.predict_chunk(None, obs["qpos"])
            checked = decision_check(env, policy, obs, chunk, seed, 0) if env.tasks[0].carrying else None
            obs, *_ = env.step(chunk[0])
        assert checked is not None, "the expert picks the probe up"
        assert checked["correct"] and checked["chosen"] == checked["true"]
        assert checked["follows_touch"] == 0.0


class _ExpertSendingOneArmAstray:
    """The expert's plan, except that arm `astray` carries its probe to a candidate that
    is NOT its match (planned after each reset, the world's truth restored at once)."""

    chunk_size, streams = 20, []

    def __init__(self, env, astray: int):
        self.env, self.astray, self.plan = env, astray, None

    def features(self, images):
        return None

    def predict_chunk(self, images, qpos, tokens=None):
        from hsa_pipeline.world.expert import plan

        if self.env.t == 0:
            task = self.env.tasks[self.astray]
            true = task.targets[0]
            task.targets = [next(i for i, t in enumerate(task.tiles) if t.kind == "candidate" and i != true)]
            self.plan, task.targets = plan(self.env), [true]
        t = min(self.env.t + 1, len(self.plan) - 1)
        return self.plan[np.minimum(np.arange(t, t + self.chunk_size), len(self.plan) - 1)]


def test_each_arms_own_outcome_and_decision_are_reported():
    """Bimanual: the left arm does everything right, the right arm puts its probe on a
    wrong candidate. The rollout fails, and per arm: left decision right, on the right
    tile; right picked up, on a tile, decision wrong, not on the right tile."""
    from conftest import bimanual_params
    from hsa_pipeline.evaluation.rollout import run_rollout, summarise
    from hsa_pipeline.world import TouchWorld

    p = bimanual_params()
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=200)
    results = [run_rollout(env, _ExpertSendingOneArmAstray(env, astray=1), seed, 0.01) for seed in range(2)]
    assert not any(r.success for r in results) and {r.failure for r in results} == {"wrong tile"}
    arms = summarise(results, ["picked up", "put down", "success"], 200)["per_arm"]
    assert arms == {"left": {"picked_up": 1.0, "on_a_tile": 1.0, "right_tile": 1.0, "decision_right": 1.0},
                    "right": {"picked_up": 1.0, "on_a_tile": 1.0, "right_tile": 0.0, "decision_right": 0.0}}


class _ExpertWithOneArmIdle(_ExpertSendingOneArmAstray):
    """The expert's plan, except that arm `idle` stays where it starts: it never carries."""

    def predict_chunk(self, images, qpos, tokens=None):
        from hsa_pipeline.world.expert import plan

        if self.env.t == 0:
            self.plan = plan(self.env)
            arm = self.env.rig.arms[self.env.tasks[self.astray].arm]
            cols = slice(arm.cfg.qpos_start, arm.cfg.qpos_start + arm.n_joints + 1)  # its joints and gripper
            self.plan[:, cols] = self.env.home()[cols]
        t = min(self.env.t + 1, len(self.plan) - 1)
        return self.plan[np.minimum(np.arange(t, t + self.chunk_size), len(self.plan) - 1)]


def test_each_arm_is_judged_at_its_own_pick_up_whatever_the_other_does():
    """Issue #41: the decision was checked only once BOTH arms carried, so a rollout in which
    one arm never picked up recorded no decision for the other either. Now the working arm
    is judged at its own pick-up, and the idle one is counted as never carrying."""
    from conftest import bimanual_params
    from hsa_pipeline.evaluation.rollout import run_rollout, summarise
    from hsa_pipeline.world import TouchWorld

    p = bimanual_params()
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras, max_steps=120)
    results = [run_rollout(env, _ExpertWithOneArmIdle(env, 0), seed, 0.01) for seed in range(2)]
    assert not any(r.success for r in results)
    assert all(r.decisions[0] is None and r.decisions[1]["correct"] for r in results)
    summary = summarise(results, ["picked up", "put down", "success"], 120)
    assert summary["decision"]["checked"] == 2 and summary["decision"]["accuracy"] == 1.0
    assert summary["decision"]["never_carried"] == 2
    assert summary["per_arm"]["left"]["decision_right"] is None
    assert summary["per_arm"]["right"]["decision_right"] == 1.0


def test_by_class_puts_each_class_at_one_place():
    from hsa_pipeline.world import TouchWorld

    p = make_params(["world.candidate_order=by_class", "world.object_classes=3"])
    env = TouchWorld(p.world, p.robot, p.sensors, p.cameras)
    place = {}
    for seed in range(8):
        env.reset(seed=seed)
        task = env.tasks[0]
        cands = [t for t in task.tiles if t.kind == "candidate"]
        assert [t.cls for t in cands] == [0, 1, 2]
        match = task.tiles[task.targets[0]]
        place.setdefault(match.cls, set()).add(cands.index(match))
    assert all(len(v) == 1 for v in place.values()) and len(place) > 1


def test_a_touch_blind_trained_policy_has_zero_tactile_reliance(work_dir):
    from hsa_pipeline.evaluation.open_loop import load_trained
    from hsa_pipeline.training.loop import run_train

    p = tiny_pipeline_params(["train.steps=4", "train.val_every=4", "act.blind=[tactile]", "hsa.enabled=false"])
    run_train(p.act, p.hsa, p.train, PREPARE, GEOMETRY, FEATURES, work_dir / "outputs/train")
    policy, _, _ = load_trained(work_dir / "outputs/train", "cpu")
    caches = Caches(PREPARE, GEOMETRY, FEATURES, 1.0)
    rows = caches.rows("val")
    valid = np.ones((len(rows), p.act.chunk_size), bool)
    r = touch_reliance(policy, caches, rows, ActionCodec.from_stats(caches.stats, False), valid, lambda x: x, "cpu")
    assert r["all"]["tactile_swap"] == 0.0 and r["all"]["top_swap"] > 0
    assert r["all"]["reading"] == "this policy's actions do not depend on touch"
    # issue #44: no alignment figures for the stream it never saw (its adapter is untrained)
    from hsa_pipeline.evaluation.alignment import alignment, alignment_rows

    align = alignment(caches, policy, None, rows, "cpu")
    assert align["blind"] == ["tactile"] and alignment_rows(align) == []
