"""The environments of gym-aloha's two tasks, built with dm_control as its gymnasium
wrapper builds them, with two differences that change no physics:

- Rendering: the tasks render three 480x640 cameras every step (top, angle, front_close)
  although a policy reads only `top`: 189 ms a step here against 46 ms for one camera. The
  joint-space environment here renders `top` alone, at the size asked for (the benchmark's
  480x640 by default), or nothing (the expert's checks, whose images nobody reads).
- Seeding: the object's pose is drawn from the scene seed with gym-aloha's own samplers
  (`utils.sample_box_pose(seed)`, `sample_insertion_pose(seed)`), the same draw the
  gymnasium environment makes for `reset(seed=...)`, and given to both environments.

MuJoCo renders headless through EGL here: `MUJOCO_GL=egl` is set before mujoco loads
(a user's own MUJOCO_GL is kept), and a failure to make a GL context is one line that says
what to install.
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np

from ..errors import ConfigError

# MuJoCo and dm_control choose their GL backend when they load: headless EGL unless the user
# chose another. Every module of this package imports this one before either library.
os.environ.setdefault("MUJOCO_GL", "egl")
if os.environ["MUJOCO_GL"] == "egl":
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

TASKS = ("transfer_cube", "insertion")
EPISODE_STEPS = 400  # the ACT paper's episodes (gym-aloha registers 300; LeRobot evaluates 400)
CONTROL_HZ = 50.0  # gym_aloha.constants.DT = 0.02 s
SUCCESS_REWARD = 4  # the tasks' own top reward: cube held by the left gripper in the air / peg on the pin
STAGES = {  # reward -> what it means, per task (gym_aloha.tasks.sim get_reward)
    "transfer_cube": ["touched (right gripper)", "lifted", "touched by the left gripper", "transferred"],
    "insertion": ["both grippers touch", "both lifted", "peg touches socket", "inserted"],
}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError(f"aloha task: expected one of {', '.join(TASKS)}, got {task!r}")


def load_triton_first() -> None:
    """Mesa's software GL (llvmpipe, what EGL renders with on a machine without a GPU) and
    triton (which torch loads for compiled code and torchvision for its ops) each carry an
    LLVM; triton loaded AFTER Mesa crashes the process (a segfault in its library's
    initialisation, measured here: Mesa then triton crashes, triton then Mesa works). So
    triton, when installed, is loaded before dm_control or a GL context (once: a cached
    import)."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


@functools.cache
def headless_gl() -> None:
    """Check once that MuJoCo can render without a display, or say in one line what is missing."""
    load_triton_first()
    try:
        import mujoco

        mujoco.GLContext(16, 16).free()
    except Exception as e:  # noqa: BLE001 - any GL failure: the library's own words are kept
        raise ConfigError(
            f"MuJoCo could not make a headless {os.environ['MUJOCO_GL'].upper()} context ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no reason given'}); install EGL and Mesa's drivers "
            f"(Debian/Ubuntu: apt-get install libegl1 libgl1-mesa-dri) or set MUJOCO_GL=osmesa with "
            f"libosmesa6 installed") from None


def object_pose(task: str, seed: int) -> np.ndarray:
    """The object's pose at reset for scene `seed` (gym-aloha's own sampler): transfer cube
    (7,) xyz + quaternion of the red box; insertion (14,) the peg's, then the socket's."""
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    check_task(task)
    return sample_box_pose(seed) if task == "transfer_cube" else np.concatenate(sample_insertion_pose(seed))


def joint_env(task: str, size: tuple[int, int] | None = (480, 640), shadows: bool = True):
    """gym-aloha's joint-space environment of `task` (actions: 14 joint targets, grippers
    normalised 0 closed .. 1 open), rendering only the `top` camera at `size` (height,
    width), or nothing (None); without shadows if asked (no light casts one: ~3x cheaper
    here). Reset it with `reset_joint_env(env, task, pose)`."""
    check_task(task)
    load_triton_first()  # before dm_control, which loads the GL libraries when it loads
    if size is not None:
        headless_gl()
    from dm_control import mujoco
    from dm_control.rl import control
    from gym_aloha.constants import ASSETS_DIR, DT
    from gym_aloha.tasks import sim

    base = sim.TransferCubeTask if task == "transfer_cube" else sim.InsertionTask

    class TopCameraOnly(base):
        def get_observation(self, physics):
            obs = collections.OrderedDict(qpos=self.get_qpos(physics), qvel=self.get_qvel(physics),
                                          env_state=self.get_env_state(physics))
            obs["images"] = {"top": physics.render(*size, camera_id="top")} if size else {}
            return obs

    physics = mujoco.Physics.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_{task}.xml"))
    if not shadows:
        physics.model.light_castshadow[:] = 0
    return control.Environment(physics, TopCameraOnly(), float("inf"), control_timestep=DT, n_sub_steps=None,
                               flat_observation=False)


def reset_joint_env(env, task: str, pose: np.ndarray):
    """Reset with the object at `pose` (the tasks read it from gym-aloha's module-level
    BOX_POSE at reset: one environment a process at a time, as in gym-aloha itself)."""
    from gym_aloha.tasks import sim

    sim.BOX_POSE[0] = np.asarray(pose, dtype=float).copy()
    return env.reset()


def top_camera(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The `top` camera's calibration at `size` (height, width), from the model itself:
    -> (K (3, 3), its pose in the world (4, 4), OpenCV axes: x right, y down, z forward).
    MuJoCo's cameras look along their -z with y up and square pixels; fovy is vertical."""
    import mujoco
    from gym_aloha.constants import ASSETS_DIR

    model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / "bimanual_viperx_transfer_cube.xml"))
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)  # the camera aims at the table (mode="targetbody"): computed here
    cam = model.camera("top").id
    height, width = size
    f = 0.5 * height / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    K = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    pose = np.eye(4)
    pose[:3, :3] = data.cam_xmat[cam].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    pose[:3, 3] = data.cam_xpos[cam]
    return K, pose
