"""gym-aloha's simulated bimanual tasks (issue #43): the ViperX 300s's kinematics against
MuJoCo's own body poses, the expert's tool frame against the end-effector models' welds,
the scripted expert on seeded scenes of both tasks, the top camera's calibration against
what MuJoCo renders, the evaluation's environment, and the real stages on two scripted
demonstrations, each checked for what it did."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import EVAL, FEATURES, PREPARE, REPO, TINY_TRAIN, TRAIN, make_params, run_stage
from hsa_pipeline.aloha.expert import ScriptedAlohaExpert
from hsa_pipeline.aloha.ik import ARM_JOINTS, ARMS, ArmKinematics
from hsa_pipeline.aloha.record import demonstrate, scene_seed
from hsa_pipeline.aloha.sim import STAGES, SUCCESS_REWARD, TASKS, object_pose, top_camera
from hsa_pipeline.config import preset_overrides

mujoco = pytest.importorskip("mujoco")
PRESET = {task: REPO / "presets" / "aloha-sim" / f"{task.replace('_', '-')}.yaml" for task in TASKS}


def mujoco_model(kind: str = ""):
    from gym_aloha.constants import ASSETS_DIR

    model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_{kind}transfer_cube.xml"))
    return model, mujoco.MjData(model)


def arm_joint_addresses(model, side: str) -> list[int]:
    return [int(model.jnt_qposadr[model.joint(f"vx300s_{side}/{j}").id]) for j in ARM_JOINTS]


def random_joints(kin: ArmKinematics, side: str, n: int, seed: int = 0) -> np.ndarray:
    low, high = kin.limits[side]
    return np.random.default_rng(seed).uniform(0.6 * low, 0.6 * high, size=(n, 6))


def test_the_vx300s_model_and_the_presets_bases_give_mujocos_gripper_poses():
    """geometry's forward kinematics of both arms (the presets' `vx300s` and base poses)
    against MuJoCo's own gripper_link poses in gym-aloha's model, at random joints."""
    from hsa_pipeline.geometry.kinematics import Arm

    model, data = mujoco_model()
    p = make_params(preset_overrides(PRESET["transfer_cube"]), base=[])
    kin = ArmKinematics("transfer_cube")
    for side in ARMS:
        arm = Arm(side, p.robot.arms[side])
        q = random_joints(kin, side, 8)
        poses = arm.flange_poses(q)  # (8, 4, 4)
        body = model.body(f"vx300s_{side}/gripper_link").id
        for i in range(len(q)):
            data.qpos[arm_joint_addresses(model, side)] = q[i]
            mujoco.mj_kinematics(model, data)
            np.testing.assert_allclose(poses[i, :3, 3], data.xpos[body], atol=1e-9)
            np.testing.assert_allclose(poses[i, :3, :3], data.xmat[body].reshape(3, 3), atol=1e-9)


def test_the_experts_tool_frame_is_where_the_end_effector_models_weld_holds_the_gripper():
    """Put each mocap body at the tool pose ArmKinematics computes: MuJoCo's own weld
    constraints are then satisfied (their residual ~0), at several arm poses."""
    model, data = mujoco_model("end_effector_")
    kin = ArmKinematics("transfer_cube")
    for side in ARMS:
        for q in random_joints(kin, side, 4, seed=1):
            data.qpos[arm_joint_addresses(model, side)] = q
            tool = kin.tool_pose(side, q)
            mocap = model.body(f"mocap_{side}").mocapid[0]
            data.mocap_pos[mocap], data.mocap_quat[mocap] = tool[:3], tool[3:]
            mujoco.mj_forward(model, data)
            weld = model.body(f"mocap_{side}").id
            rows = [i for i in range(data.nefc) if data.efc_type[i] == mujoco.mjtConstraint.mjCNSTR_EQUALITY
                    and model.eq_obj1id[data.efc_id[i]] == weld]
            assert len(rows) == 6
            assert np.abs(data.efc_pos[rows]).max() < 1e-6


def test_inverse_kinematics_reaches_poses_the_arm_can_take():
    """Targets the arm can take (the tool pose at random joints), solved from a start up to
    0.15 rad off in every joint (the expert warm-starts each step from the last)."""
    model, data = mujoco_model()
    kin = ArmKinematics("transfer_cube")
    rng = np.random.default_rng(4)
    for side in ARMS:
        for q in random_joints(kin, side, 5, seed=3):
            target = kin.tool_pose(side, q)
            solved, miss = kin.solve(side, target, q + rng.uniform(-0.15, 0.15, 6))
            assert miss < 1e-4
            # where MuJoCo puts the gripper at the solution, and the tool frame from it
            data.qpos[arm_joint_addresses(model, side)] = solved
            mujoco.mj_kinematics(model, data)
            body = model.body(f"vx300s_{side}/gripper_link").id
            tool = data.xpos[body] + data.xmat[body].reshape(3, 3) @ kin.tool_offset[side]
            np.testing.assert_allclose(tool, target[:3], atol=1e-4)


@pytest.mark.parametrize("task", TASKS)
def test_the_scripted_expert_solves_seeded_scenes_of_both_tasks(task):
    expert = ScriptedAlohaExpert(task)
    rewards = [demonstrate(expert, scene_seed("train", 0, i), size=None).max_reward for i in range(10)]
    assert rewards == [SUCCESS_REWARD] * 10


def test_demonstration_and_evaluation_scenes_never_meet():
    train = {scene_seed("train", s, i) for s in range(3) for i in range(200)}
    evaluation = {scene_seed("eval", s, i) for s in range(3) for i in range(200)}
    assert len(train) == len(evaluation) == 600 and not train & evaluation


def test_the_presets_top_camera_is_the_models_and_projects_the_cube_onto_its_pixels():
    """The presets' calibration equals the one read from the model, and a cube projected
    with it lands on the red pixels MuJoCo renders (within 1.5 px of their centroid)."""
    from hsa_pipeline.aloha.env import AlohaEnv
    from hsa_pipeline.geometry.kinematics import pose_matrix

    for task in TASKS:
        p = make_params(preset_overrides(PRESET[task]), base=[])
        cam = p.cameras["top"]
        K, pose = top_camera((cam.height, cam.width))
        np.testing.assert_allclose(cam.K, K, atol=1e-6)
        np.testing.assert_allclose(pose_matrix(cam.pose), pose, atol=1e-6)
    env = AlohaEnv(make_params(preset_overrides(PRESET["transfer_cube"]), base=[]).aloha, max_steps=5)
    for seed in (1, 3, 5):
        obs, _ = env.reset(seed=seed)
        cube = object_pose("transfer_cube", seed)[:3]
        in_camera = np.linalg.inv(pose) @ np.r_[cube, 1.0]
        uv = (K @ in_camera[:3])[:2] / in_camera[2]
        img = obs["top"].astype(int)
        ys, xs = np.nonzero((img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80))
        assert len(xs) > 20
        np.testing.assert_allclose(uv, [xs.mean() + 0.5, ys.mean() + 0.5], atol=1.5)


def test_the_evaluations_environment_says_success_at_the_tasks_top_reward_and_timeout_otherwise():
    from hsa_pipeline.aloha.env import AlohaEnv

    p = make_params(preset_overrides(PRESET["insertion"]) + ["aloha.image_height=24", "aloha.image_width=32",
                                                              "aloha.shadows=false"], base=[])
    seed = scene_seed("eval", 0, 0)
    actions = ScriptedAlohaExpert("insertion").joint_targets(object_pose("insertion", seed))
    env = AlohaEnv(p.aloha, max_steps=400)
    obs, info = env.reset(seed=seed)
    assert obs["qpos"].shape == (14,) and obs["top"].shape == (24, 32, 3) and not info["success"]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        if terminated or truncated:
            break
    assert terminated and info["success"] and info["phases_reached"] == 4 and info["failure"] is None
    assert 300 < info["step"] < 400  # the peg goes in after the meeting (waypoint at step 340)
    env = AlohaEnv(p.aloha, max_steps=20)
    obs, _ = env.reset(seed=seed)
    for _ in range(20):
        obs, _, terminated, truncated, info = env.step(obs["qpos"].astype(float))  # hold still
    assert truncated and not terminated and info["failure"] == "timeout" and info["phases_reached"] == 0
    with pytest.raises(ValueError, match="an action has 14 values"):
        env.step(np.zeros(7))


def small_aloha(task: str) -> list[str]:
    """The preset at 60x80 pixels without shadows, two demonstrations, a few steps of everything."""
    K, _ = top_camera((60, 80))
    return preset_overrides(PRESET[task]) + TINY_TRAIN + [
        "synth.episodes=2", "aloha.image_height=60", "aloha.image_width=80", "aloha.shadows=false",
        "cameras.top.width=80", "cameras.top.height=60", f"cameras.top.K={json.dumps(K.tolist())}",
        "data.train_ratio=0.5", "act.chunk_size=10", "train.steps=4", "train.val_every=2", "train.log_every=2",
        "train.ckpt_every=2", "eval.rollouts=2", "eval.max_steps=6"]


def test_two_scripted_demonstrations_through_every_stage(tmp_path, monkeypatch):
    """synth -> prepare -> geometry -> features -> train -> evaluate on gym-aloha's transfer
    cube, as `dvc repro` runs them, each checked for what it did."""
    import zarr

    from hsa_pipeline.data.episodes import Episode

    monkeypatch.chdir(tmp_path)
    p = make_params(small_aloha("transfer_cube"), base=[])
    run_stage("synth", p)
    episodes = sorted((tmp_path / "data/aloha/transfer_cube/episodes").glob("episode_*.hdf5"))
    demos = json.loads((tmp_path / "data/aloha/transfer_cube/episodes/demos.json").read_text())
    assert len(episodes) == 2 and demos["expert_success_rate"] == 1.0 and demos["kept_seeds"] == [0, 2]
    with Episode(episodes[0]) as ep:  # the pipeline's own reader, the ACT layout
        assert ep.qpos.shape == ep.action.shape == (400, 14)
        assert ep.stream_names() == ["top"] and ep.frame("top", 399).shape == (60, 80, 3)
        # the grippers' columns are openings 0..1, opened to grasp and closed on the cube
        assert ep.action[:, 13].max() == pytest.approx(1.0) and ep.action[170:200, 13].max() < 0.05

    run_stage("prepare", p)
    manifest = json.loads((tmp_path / PREPARE / "episodes.json").read_text())
    assert len(manifest["episodes"]) == 2
    run_stage("geometry", p)
    run_stage("features", p)
    top = zarr.open_group(str(tmp_path / FEATURES), mode="r")["top"]
    assert top.shape[0] == 800 and np.isfinite(np.asarray(top[:4])).all()
    run_stage("train", p)
    assert json.loads((tmp_path / TRAIN / "metrics.json").read_text())["step"] == 4
    run_stage("evaluate", p)
    closed = json.loads((tmp_path / EVAL / "metrics.json").read_text())["closed_loop"]
    assert closed["task"] == "aloha transfer_cube" and closed["rollouts"] == 2
    assert list(closed["phase_success"]) == STAGES["transfer_cube"]
    assert closed["failures"] == {"timeout": 2}  # 6 steps: nothing is reached so soon
    assert closed["guess_rate"] is None and closed["decision"]["checked"] == 0
    assert (tmp_path / EVAL / "rollouts" / "failure.gif").stat().st_size > 0


def test_hsa_rollout_drives_gym_aloha_with_the_scripted_expert(tmp_path):
    """`hsa rollout --expert` with world.kind aloha: the expert solves an evaluation scene
    in the evaluation's own environment, and the animation is written."""
    from PIL import Image

    from hsa_pipeline.evaluation.rollout import rollout_animation

    p = make_params(small_aloha("insertion") + ["eval.max_steps=400"], base=[])
    r = rollout_animation(p, None, scene=0, out=tmp_path / "rollout.gif", expert=True)
    assert r.success and r.phases_reached == SUCCESS_REWARD and r.seed == scene_seed("eval", 0, 0)
    assert len(r.frames) == r.steps + 1 and Image.open(tmp_path / "rollout.gif").n_frames > r.steps // 2  # still frames merge


def test_no_gl_context_is_one_line_that_says_what_to_install(monkeypatch):
    from hsa_pipeline.aloha.sim import headless_gl
    from hsa_pipeline.errors import ConfigError

    def no_display(*_):
        raise RuntimeError("cannot initialize EGL display\nmore detail")

    monkeypatch.setattr(mujoco, "GLContext", no_display)
    with pytest.raises(ConfigError) as e:
        headless_gl.__wrapped__()
    message = str(e.value)
    assert "\n" not in message and "cannot initialize EGL display" in message
    assert "apt-get install libegl1 libgl1-mesa-dri" in message and "MUJOCO_GL=osmesa" in message
