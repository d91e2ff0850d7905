import dataclasses

import pytest
import yaml

from conftest import REPO, make_params
from hsa_pipeline.config import (
    ActConfig,
    ArmConfig,
    ConfigError,
    Params,
    TrainConfig,
    apply_overrides,
    load_params,
    params_from_dict,
    parse_override,
    reference_markdown,
)


def load_with(*overrides: str) -> Params:
    return load_params(REPO / "params.yaml", list(overrides))


FIXED_SECTIONS = ["world", "synth", "data", "geometry", "features", "act", "hsa", "train", "eval"]


def test_the_repository_params_yaml_equals_the_typed_defaults():
    """One source of truth: every default in config.py is the value params.yaml holds (so
    docs/params.md shows what a user runs), and params.yaml lists every key."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    defaults = Params(sensors={}, cameras={})
    for section in FIXED_SECTIONS:
        typed = dataclasses.asdict(getattr(defaults, section))
        assert raw[section] == typed, f"params.yaml `{section}` differs from config.py defaults"
    assert load_with().robot.arms == {"arm": ArmConfig()}  # the demo's arm is the default arm


def test_the_rig_has_no_defaults_and_a_missing_key_is_named():
    with pytest.raises(ConfigError, match=r"^sensors: required"):
        params_from_dict({"cameras": {}})
    with pytest.raises(ConfigError, match=r"cameras.top.K: required \(3x3 intrinsics"):
        params_from_dict({"sensors": {}, "cameras": {"top": {"mount": "world", "width": 4, "height": 4,
                                                             "pose": {}}}})


def test_synth_and_the_episodes_it_writes_must_agree():
    with pytest.raises(ConfigError, match="data.episodes_dir: is '/data/real' but synth.enabled is true and writes "
                                          "'data/demo/episodes'"):
        load_with("data.episodes_dir=/data/real")
    assert load_with("data.episodes_dir=/data/real", "synth.enabled=false").data.episodes_dir == "/data/real"
    assert load_with("synth.out_dir=elsewhere", "data.episodes_dir=elsewhere/episodes").synth.out_dir == "elsewhere"


@pytest.mark.parametrize("episodes_dir", ["data/demo/episodes", "data/demo/episodes/real", "data/demo", "./data/demo/x"])
def test_user_episodes_inside_synths_output_are_refused_whatever_synth_enabled_is(episodes_dir):
    """DVC empties synth's output before rerunning it: user episodes there would be deleted."""
    with pytest.raises(ConfigError, match="is inside synth.out_dir .* which DVC empties"):
        load_with(f"data.episodes_dir={episodes_dir}", "synth.enabled=false")
    assert load_with("data.episodes_dir=data/demo_real", "synth.enabled=false").data.episodes_dir == "data/demo_real"


@pytest.mark.parametrize("override, fragment", [
    ("hsa.wieght=2", "hsa.wieght: unknown key (did you mean 'weight'?)"),
    ("hsa.temperature=-0.1", "hsa.temperature: must be > 0.0, got -0.1"),
    ("data.train_ratio=0", "data.train_ratio: must be > 0.0"),
    ("data.train_ratio=1.5", "data.train_ratio: must be <= 1.0"),
    ("act.chunk_size=0", "act.chunk_size: must be >= 1"),
    ("act.chunk_size=2.5", "act.chunk_size: expected an integer, got 2.5"),
    ("hsa.enabled=yes please", "hsa.enabled: expected true or false"),
    ("features.resize=crop", "features.resize: expected one of 'stretch', 'letterbox', got 'crop'"),
    ("data.cameras.top=overhead", "data.cameras.top: expected one of 'third_person', 'wrist'"),
    ("sensors.tactile.arm=left", "sensors.tactile.arm: 'left' is not an arm"),
    ("cameras.top.K=[[300,0,999],[0,300,96],[0,0,1]]", "principal point (999.0, 96.0) lies outside the 256x192 image"),
    ("cameras.top.K=[[-3,0,10],[0,300,96],[0,0,1]]", "focal lengths must be positive"),
    ("cameras.wrist.mount=elbow", "cameras.wrist.mount: expected 'world' or an arm"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_with(override)
    msg = str(err.value)
    assert fragment in msg
    assert "\n" not in msg
    assert msg.startswith(str(REPO / "params.yaml"))


def test_a_reflection_is_not_a_rotation():
    # The published third-person extrinsic had det(R) = -1; it must be refused.
    bad = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]]
    with pytest.raises(ConfigError, match=r"cameras.top.pose.matrix: rotation must be orthonormal with det \+1, got det -1"):
        load_with(f"cameras.top.pose.matrix={bad}")
    good = [[1, 0, 0, 0.1], [0, -1, 0, 0], [0, 0, -1, 0.5], [0, 0, 0, 1]]
    assert load_with(f"cameras.top.pose.matrix={good}").cameras["top"].pose.matrix == good


def test_overrides_use_yaml_values_like_dvc_exp_run_set():
    assert parse_override("hsa.weight=1.5") == ("hsa.weight", 1.5)
    assert parse_override("data.tactile=[a, b]") == ("data.tactile", ["a", "b"])
    assert parse_override("features.pretrained=null") == ("features.pretrained", None)
    raw = {"hsa": {"weight": 1.0}}
    assert apply_overrides(raw, ["hsa.weight=2"]) == {"hsa": {"weight": 2}}
    assert raw == {"hsa": {"weight": 1.0}}  # the input is not modified
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("hsa.weight")


def test_int_is_accepted_where_a_float_is_expected_and_missing_sections_take_defaults():
    p = params_from_dict({"hsa": {"temperature": 1}, "sensors": {}, "cameras": {}})
    assert isinstance(p.hsa.temperature, float) and p.hsa.temperature == 1.0
    assert p.train == TrainConfig() and p.act.chunk_size == ActConfig().chunk_size == 20


def test_missing_params_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_reference_doc_lists_every_key_and_is_in_sync():
    text = reference_markdown()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    for section in FIXED_SECTIONS:
        for key in raw[section]:
            assert f"`{section}.{key}`" in text, f"{section}.{key} missing from the reference"
    assert "`cameras.<name>.K` | a list | required |" in text and "`sensors.<name>.mount.xyz`" in text
    # a pose says which frame it is in
    assert "| `sensors.<name>.mount` | pose | required | pose of the sensor frame in the FLANGE frame" in text
    assert "pose of the camera frame in its MOUNT frame" in text and "in the WORLD frame" in text
    assert (REPO / "docs" / "params.md").read_text().strip() == text.strip(), \
        "docs/params.md is stale: run `hsa params-doc`"


def test_the_tests_run_the_shipped_configuration_made_small_and_nothing_else():
    """The tiny params differ from params.yaml only in the keys TINY names: the tests run
    the shipped rig, task and learner, not a configuration of their own."""
    from conftest import TINY
    from hsa_pipeline.config import to_dict

    def flat(d, prefix=""):
        return {k2: v2 for k, v in d.items() for k2, v2 in
                (flat(v, f"{prefix}{k}.").items() if isinstance(v, dict) else [(f"{prefix}{k}", v)])}

    shipped, tiny = flat(to_dict(load_params(REPO / "params.yaml"))), flat(to_dict(make_params()))
    changed = {k for k in shipped if shipped[k] != tiny[k]}
    assert changed and changed <= {o.split("=")[0] for o in TINY}


def test_a_pad_on_a_claw_finger_needs_the_arms_gripper_column():
    """Issue #44: a sensor with finger_offset on an arm without gripper_index ended in a
    traceback from the geometry stage (the pad's place follows the claw's opening, read
    from that column); now params say so in one line when they load."""
    from hsa_pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_params(["sensors.tactile.finger_offset=right", "robot.arms.arm.gripper_index=null"])
    assert str(e.value) == ("sensors.tactile.finger_offset: 'right' puts the pad on a claw finger, which moves with "
                            "the claw's opening, but robot.arms.arm.gripper_index is null; set it to the qpos column "
                            "of that arm's gripper, or finger_offset: none")
    make_params(["sensors.tactile.finger_offset=right"])  # with the column (6 in params.yaml) it loads
