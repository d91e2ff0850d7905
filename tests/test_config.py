import dataclasses

import pytest
import yaml

from conftest import REPO, make_params
from hsa_pipeline.config import (ConfigError, Params, apply_overrides, load_params, params_from_dict,
                                 parse_override, reference_markdown)


def load_with(*overrides: str) -> Params:
    return load_params(REPO / "params.yaml", list(overrides))


def test_repo_params_load_and_match_the_dataclass_defaults_where_documented():
    p = load_with()
    assert p.hsa.temperature == pytest.approx(0.07)
    assert p.data.cameras == {"top": "third_person", "wrist": "wrist"}
    assert set(p.cameras) == {"top", "wrist"}


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
    p = params_from_dict({"hsa": {"temperature": 1}})
    assert isinstance(p.hsa.temperature, float)
    assert p.train == dataclasses.replace(p.train)


def test_missing_params_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_reference_doc_lists_every_key_and_is_in_sync():
    text = reference_markdown()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())

    for section in ("synth", "data", "geometry", "features", "act", "hsa", "train", "eval"):
        for key in raw[section]:
            assert f"`{section}.{key}`" in text, f"{section}.{key} missing from the reference"
    assert "`cameras.<name>.K`" in text and "`sensors.<name>.mount.xyz`" in text
    assert (REPO / "docs" / "params.md").read_text().strip() == text.strip(), \
        "docs/params.md is stale: run `hsa params-doc`"


def test_tiny_params_fixture_is_valid():
    assert make_params().synth.episodes == 4
